"""TensorRT step without TensorRT: the profile, the trtexec equivalent, the config, SKIPPED."""

from __future__ import annotations

from pathlib import Path

import pytest

from export import tensorrt
from export.model_config import ServingOptions, validate_config
from export.spec import ModelSpec
from export.status import Status


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    from export.models import minilm

    return minilm.load()


def test_profile_matches_the_triton_batching(spec: ModelSpec) -> None:
    options = ServingOptions(max_batch_size=32, preferred_batch_sizes=[8, 16])
    profile = tensorrt.optimization_profile(spec, options, opt_length=64)
    assert set(profile) == {t.name for t in spec.inputs}
    for shape in profile.values():  # [batch, sequence] for each text input
        assert shape.min == (1, 1)
        assert shape.opt == (16, 64)  # the largest preferred batch the batcher aims for
        assert shape.max == (32, spec.max_length)
    # the sequence axis is shared: every input gets the same range
    assert len({(s.min[1], s.opt[1], s.max[1]) for s in profile.values()}) == 1


def test_opt_length_never_exceeds_the_model_maximum(spec: ModelSpec) -> None:
    profile = tensorrt.optimization_profile(spec, ServingOptions(), opt_length=10_000)
    assert all(s.opt[1] == spec.max_length for s in profile.values())


def test_trtexec_command_carries_the_profile(spec: ModelSpec, tmp_path: Path) -> None:
    profile = tensorrt.optimization_profile(spec, ServingOptions(max_batch_size=8), opt_length=32)
    command = tensorrt.trtexec_command(
        tmp_path / "model.onnx", tmp_path / "model.plan", profile, timing_cache=tmp_path / "tc"
    )
    assert command[0] == "trtexec" and "--fp16" in command
    assert f"--maxShapes=input_ids:8x{spec.max_length}" in ",".join(command)
    assert any(a.startswith("--timingCacheFile=") for a in command)


def test_tensorrt_config_is_a_valid_gpu_plan_config(spec: ModelSpec) -> None:
    config = tensorrt.tensorrt_config(spec, ServingOptions(instance_count=2))
    validate_config(config, "tensorrt")
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert config.instance_group[0].count == 2
    assert not any(i.allow_ragged_batch for i in config.input)  # an engine takes dense batches


def test_build_is_skipped_with_the_reason_where_tensorrt_is_absent(
    spec: ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tensorrt, "availability", lambda: (False, "TensorRT is not installed"))
    result = tensorrt.build_engine(tmp_path / "model.onnx", spec, ServingOptions(), tmp_path)
    assert result.status is Status.SKIPPED
    assert "TensorRT" in result.reason
    assert "input_ids" in result.metrics["profile"]
    assert not (tmp_path / "model.plan").exists()


def test_availability_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tensorrt.importlib.util, "find_spec", lambda name: None)
    ok, reason = tensorrt.availability()
    assert not ok and "TensorRT is not installed" in reason
    monkeypatch.setattr(tensorrt.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(tensorrt.shutil, "which", lambda name: None)
    ok, reason = tensorrt.availability()
    assert not ok and "no NVIDIA GPU" in reason
