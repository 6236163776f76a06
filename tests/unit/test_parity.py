"""The export fails, and writes nothing, when ONNX and PyTorch disagree beyond the budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from export.pipeline import export_model
from export.spec import ModelSpec, TensorSpec
from export.status import Status
from export.torch2onnx import torch_to_onnx
from export.verify import ParityCase, verify_parity


class TinyRegressor(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PerturbedInExport(TinyRegressor):
    """Behaves in eager PyTorch, but the traced graph it exports carries a 1% bias."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if torch.onnx.is_in_onnx_export():
            y = y * 1.01
        return y


def _sample(rng: np.random.Generator, batch: int, length: int) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((batch, 8)).astype(np.float32)}


def tiny_spec(module: torch.nn.Module) -> ModelSpec:
    return ModelSpec(
        name="tiny",
        module=module.eval(),
        inputs=[TensorSpec("x", "float32", (8,))],
        outputs=[TensorSpec("y", "float32", (4,))],
        sample_inputs=_sample,
    )


CASES = [ParityCase(1, 1), ParityCase(5, 1), ParityCase(32, 1)]


def test_faithful_export_passes_with_measured_error(tmp_path: Path) -> None:
    spec = tiny_spec(TinyRegressor())
    step = torch_to_onnx(spec, tmp_path / "model.onnx")
    assert step.ok, step.reason
    result = verify_parity(spec, tmp_path / "model.onnx", cases=CASES, seed=1)
    assert result.status is Status.OK
    assert result.metrics["max_rel_l2"] < 1e-5
    assert result.metrics["seed"] == 1 and len(result.metrics["cases"]) == 3


def test_dynamic_batch_axis_is_exported(tmp_path: Path) -> None:
    step = torch_to_onnx(tiny_spec(TinyRegressor()), tmp_path / "model.onnx")
    inputs = step.metrics["signature"]["inputs"]
    assert inputs == [{"name": "x", "dtype": "float32", "shape": ["batch", 8]}]


def test_model_perturbed_in_export_fails_and_writes_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = export_model(tiny_spec(PerturbedInExport()), repo, build_dir=tmp_path / "build")
    assert not result.ok
    failure = result.failure
    assert failure is not None and failure.step == "verify"
    assert "exceeds the budget 1.0e-04" in failure.reason
    assert failure.metrics["max_rel_l2"] == pytest.approx(0.01, rel=1e-3)
    assert not (repo / "tiny").exists()
    report = json.loads((tmp_path / "build" / "report.json").read_text())
    assert report["status"] == "FAILED" and "left untouched" in report["not_written"]


def test_corrupted_onnx_weights_fail_verification(tmp_path: Path) -> None:
    spec = tiny_spec(TinyRegressor())
    path = tmp_path / "model.onnx"
    assert torch_to_onnx(spec, path).ok
    model = onnx.load(str(path))
    weight = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    array = numpy_helper.to_array(weight).copy()
    array.flat[0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    onnx.save(model, str(path))
    result = verify_parity(spec, path, cases=CASES, seed=2)
    assert result.status is Status.FAILED and result.metrics["passed"] is False


def test_budget_is_a_parameter(tmp_path: Path) -> None:
    """A 1% bias fails at 1e-4 but passes a loose 5e-2 budget: the threshold is enforced."""
    spec = tiny_spec(PerturbedInExport())
    assert torch_to_onnx(spec, tmp_path / "m.onnx").ok
    assert verify_parity(spec, tmp_path / "m.onnx", cases=CASES, budget=5e-2).ok
    assert not verify_parity(spec, tmp_path / "m.onnx", cases=CASES, budget=1e-4).ok


def test_successful_export_installs_version_with_report(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = export_model(tiny_spec(TinyRegressor()), repo, build_dir=tmp_path / "build", version=3)
    assert result.ok and result.version_dir == repo / "tiny" / "3"
    assert {p.name for p in result.version_dir.iterdir()} == {
        "model.onnx",
        "model.py",
        "report.json",
    }
    assert (repo / "tiny" / "config.pbtxt").is_file()
    report = json.loads((result.version_dir / "report.json").read_text())
    assert report["status"] == "OK" and report["version"] == 3
    assert {"torch", "onnx", "onnxruntime"} <= set(report["versions"])
