"""Bring-your-own-model specs, the variant choice, budgets per task, and versions on re-export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from export.byo import (
    SpecError,
    load_factory,
    load_sample_data,
    model_spec,
    parse_input,
)
from export.model_config import ServingOptions, Target
from export.pipeline import export_model
from export.spec import Task
from export.status import Status, StepResult
from export.variants import Budgets, Variant, VariantResult, choose, parse_variants
from export.verify import Budget, Metric


class Tagger(torch.nn.Module):
    """Token ids [batch, seq] -> per-token scores [batch, seq, 5] and a pooled vector [batch, 8]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(50, 8)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.embed(ids)
        return self.head(hidden), hidden.mean(dim=1)


class Mlp(torch.nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, width), torch.nn.ReLU(),
                                       torch.nn.Linear(width, 3))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_parse_input_fixed_named_and_ranged_axes() -> None:
    image = parse_input("image:float32:3x32x32")
    assert image.tensor.shape == (3, 32, 32) and image.tensor.axis_names == ()
    ids = parse_input("ids:int64:seq:0..30522")
    assert ids.tensor.shape == (-1,) and ids.tensor.axis_names == ("seq",)
    assert (ids.low, ids.high) == (0, 30522)
    assert ids.tensor.dynamic_axes() == {0: "batch", 1: "seq"}
    assert parse_input("x:float32:-1,4").tensor.shape == (-1, 4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image:float32", "expected name:dtype:shape"),
        ("image:float64:3", "dtype 'float64' is not one of"),
        ("image:float32:3x0", "must be > 0 or -1"),
        ("ids:int64:seq:9..3", "low < high"),
        ("x:float32:4:0..9", "integer inputs only"),
        ("bad name:float32:4", "not a valid tensor name"),
    ],
)
def test_parse_input_errors_say_what_to_fix(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_input(text)


def test_load_factory_errors() -> None:
    with pytest.raises(SpecError, match=r"expected pkg\.module:factory"):
        load_factory("tests.unit.test_byo")
    with pytest.raises(SpecError, match="cannot import"):
        load_factory("no_such_package_xyz:build")
    with pytest.raises(SpecError, match="has no attribute"):
        load_factory("tests.unit.test_byo:Missing")
    assert load_factory("tests.unit.test_byo:Mlp") is Mlp


def test_outputs_are_inferred_with_their_dynamic_axes() -> None:
    spec = model_spec(Tagger(), "tagger", ["ids:int64:seq:0..50"], outputs=["scores", "pooled"])
    assert [(o.name, o.dtype, o.shape) for o in spec.outputs] == [
        ("scores", "float32", (-1, 5)),
        ("pooled", "float32", (8,)),
    ]
    sample = spec.sample_inputs(np.random.default_rng(0), 4, 9)
    assert sample["ids"].shape == (4, 9) and sample["ids"].max() < 50


def test_a_module_that_rejects_the_spec_gets_a_clear_error() -> None:
    with pytest.raises(SpecError, match="check the --input shapes"):
        model_spec(Mlp(), "mlp", ["x:float32:7"])
    with pytest.raises(SpecError, match="--output names 2 outputs"):
        model_spec(Mlp(), "mlp", ["x:float32:6"], outputs=["a", "b"])


def test_sample_data_is_checked_against_the_spec(tmp_path: Path) -> None:
    spec = model_spec(Mlp(), "mlp", ["x:float32:6"])
    np.savez(tmp_path / "ok.npz", x=np.ones((5, 6)))
    assert load_sample_data(tmp_path / "ok.npz", spec)["x"].dtype == np.float32
    np.savez(tmp_path / "bad.npz", x=np.ones((5, 7)))
    with pytest.raises(SpecError, match=r"expected \(batch, 6\)"):
        load_sample_data(tmp_path / "bad.npz", spec)
    np.savez(tmp_path / "other.npz", y=np.ones((5, 6)))
    with pytest.raises(SpecError, match="no array named 'x'"):
        load_sample_data(tmp_path / "other.npz", spec)


def test_budget_metric_follows_the_task() -> None:
    budgets = Budgets(int8=0.9)
    assert budgets.of(Variant.INT8, Task.EMBEDDING).metric is Metric.COSINE
    assert budgets.of(Variant.INT8, Task.CLASSIFIER) == Budget(Metric.TOP1, 0.9)
    assert budgets.of(Variant.FP16, Task.REGRESSOR).metric is Metric.REL_L2
    assert budgets.of(Variant.OPTIMIZED, Task.CLASSIFIER).metric is Metric.REL_L2
    assert parse_variants("int8") == (Variant.FP32, Variant.INT8)  # fp32 is always made
    with pytest.raises(ValueError, match="unknown variant"):
        parse_variants("fp8")


def _made(variant: Variant, speed: float, ok: bool = True) -> VariantResult:
    status = Status.OK if ok else Status.FAILED
    result = VariantResult(variant, Path(f"{variant}.onnx"), StepResult("make", Status.OK))
    result.verify = StepResult("verify", status)
    result.items_per_s = {8: speed} if ok else {}
    return result


def test_choose_needs_a_real_gain_to_trade_fidelity() -> None:
    fp32, opt, int8 = (
        _made(Variant.FP32, 100),
        _made(Variant.OPTIMIZED, 105),
        _made(Variant.INT8, 210),
    )
    chosen, why = choose([fp32, opt, int8])
    assert chosen is int8 and "2.10x fp32" in why
    chosen, why = choose([fp32, opt])  # 5% faster: noise, the faithful one stays
    assert chosen is fp32 and "most faithful" in why
    chosen, _ = choose([fp32, opt, _made(Variant.INT8, 0, ok=False)])
    assert chosen is fp32
    assert choose([_made(Variant.FP32, 0, ok=False)])[0] is None


def test_reexport_writes_a_version_only_when_something_changed(tmp_path: Path) -> None:
    repo, build = tmp_path / "repo", tmp_path / "build"
    spec = model_spec(Mlp(), "mlp", ["x:float32:6"])
    first = export_model(spec, repo, build_dir=build, variants=(Variant.FP32,), seed=0)
    assert first.ok and first.version_dir == repo / "mlp" / "1"
    again = export_model(spec, repo, build_dir=build, variants=(Variant.FP32,), seed=1)
    assert again.ok and again.unchanged and again.version_dir == first.version_dir
    assert not (repo / "mlp" / "2").exists()

    wider = model_spec(Mlp(width=32), "mlp", ["x:float32:6"])
    options = ServingOptions(max_batch_size=16, num_versions=2)
    second = export_model(wider, repo, build_dir=build, variants=(Variant.FP32,), options=options)
    assert second.ok and second.version_dir == repo / "mlp" / "2"
    report = json.loads((repo / "mlp" / "2" / "report.json").read_text())
    changes = report["changes"]
    assert changes["previous_version"] == 1 and len(changes["sha256"]) == 2
    assert "-max_batch_size: 32" in changes["config"] and "+max_batch_size: 16" in changes["config"]
    assert report["version_policy"] == "latest 2"
    assert "num_versions: 2" in (repo / "mlp" / "config.pbtxt").read_text()
    assert (repo / "mlp" / "1" / "model.onnx").is_file()  # older versions stay for rollback


def test_variant_outside_its_budget_is_never_written(tmp_path: Path) -> None:
    """int8 of a regressor under an impossible budget: rejected, reported, fp32 served."""
    spec = model_spec(Mlp(width=64), "mlp", ["x:float32:6"])
    result = export_model(
        spec, tmp_path / "repo", build_dir=tmp_path / "build", seed=0, measure_s=0.05,
        variants=(Variant.FP32, Variant.INT8), budgets=Budgets(int8=1e-9),
    )  # fmt: skip
    assert result.ok and result.served is not None and result.served.variant is Variant.FP32
    rejected = next(s for s in result.steps if s.step == "verify_int8")
    assert rejected.status is Status.FAILED and "exceeds the budget 1.0e-09" in rejected.reason
    report = json.loads((result.version_dir / "report.json").read_text())  # type: ignore[operator]
    assert report["served"]["variant"] == "fp32"
    int8 = next(v for v in report["variants"] if v["variant"] == "int8")
    assert int8["status"] == "FAILED" and int8["items_per_s"] == {}
    # forcing the rejected variant writes nothing at all
    forced = export_model(
        spec, tmp_path / "repo2", build_dir=tmp_path / "build2", seed=0, serve=Variant.INT8,
        variants=(Variant.FP32, Variant.INT8), budgets=Budgets(int8=1e-9),
    )  # fmt: skip
    assert not forced.ok and forced.failure is not None and forced.failure.step == "choose"
    assert not (tmp_path / "repo2" / "mlp").exists()


def test_gpu_target_reports_tensorrt_and_timing_skipped(tmp_path: Path) -> None:
    spec = model_spec(Mlp(), "mlp", ["x:float32:6"])
    result = export_model(
        spec, tmp_path / "repo", build_dir=tmp_path / "build", seed=0,
        options=ServingOptions(target=Target.GPU), variants=(Variant.FP32, Variant.FP16),
    )  # fmt: skip
    assert result.ok
    steps = {s.step: s for s in result.steps}
    assert steps["measure"].status is Status.SKIPPED and "GPU" in steps["measure"].reason
    # fp16 goes through the same checks as every variant (generated evaluation rows here)
    for check in ("verify_fp16", "invariance_fp16", "task_fp16"):
        assert steps[check].status is Status.OK, steps[check].reason
    assert steps["invariance_fp16"].metrics["max_rel_l2"] <= 1e-5
    assert steps["task_fp16"].metrics["spearman"] >= 0.99  # a regressor without labels
    trt = steps["onnx2tensorrt"]
    assert trt.status is Status.SKIPPED and trt.reason  # no TensorRT here: says why
    assert tuple(trt.metrics["profile"]["x"]["max"]) == (32, 6)
    will = trt.metrics["will_check"]  # what the engine must pass before it is ever served
    assert will["checked"] is False and len(will["checks"]) == 4
    assert will["budgets"]["parity"]["fp16"]["threshold"] == 1e-2
    assert will["budgets"]["invariance_max_rel_l2"] == 1e-5
    config = (tmp_path / "repo" / "mlp" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "KIND_GPU" in config
