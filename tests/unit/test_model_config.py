"""Model configs come from the protobuf, carry the serving policy, and bad ones are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tritonclient.grpc import model_config_pb2 as mc

from export.errors import ModelConfigError
from export.model_config import (
    ServingOptions,
    Target,
    build_config,
    load_config,
    to_text,
    validate_config,
    with_tuned,
    write_config,
)
from export.models import minilm

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spec():
    return minilm.load(module=torch.nn.Identity())  # signature only, no weights


def test_cpu_config_is_python_backend_with_batching_queue_and_warmup(spec) -> None:
    config = build_config(spec, ServingOptions(max_batch_size=16, preferred_batch_sizes=[4, 8, 64]))
    assert config.backend == "python" and not config.platform
    assert config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]  # 64 > max dropped
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    policy = config.dynamic_batching.default_queue_policy
    assert policy.max_queue_size == 256 and policy.default_timeout_microseconds == 0
    assert policy.timeout_action == mc.ModelQueuePolicy.REJECT
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert all(i.allow_ragged_batch for i in config.input)
    assert [list(i.dims) for i in config.input] == [[-1]] * 3
    assert list(config.output[0].dims) == [384]
    assert config.version_policy.latest.num_versions == 1
    (warmup,) = config.model_warmup
    assert set(warmup.inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert list(warmup.inputs["input_ids"].dims) == [16]
    assert config.parameters["onnx_model_filename"].string_value == "model.onnx"
    assert config.parameters["max_sequence_length"].string_value == "256"


def test_gpu_config_is_native_onnxruntime_with_gpu_instances(spec) -> None:
    config = build_config(spec, ServingOptions(target=Target.GPU, instance_count=2))
    assert config.platform == "onnxruntime_onnx" and not config.backend
    assert config.default_model_filename == "model.onnx"
    (group,) = config.instance_group
    assert group.kind == mc.ModelInstanceGroup.KIND_GPU and group.count == 2
    assert not any(i.allow_ragged_batch for i in config.input)  # native backend: no ragged
    assert "onnx_model_filename" not in config.parameters


def test_text_round_trip(tmp_path: Path, spec) -> None:
    config = build_config(spec, ServingOptions())
    path = write_config(config, tmp_path / "m" / "config.pbtxt")
    assert load_config(path) == config


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_committed_configs_match_the_generator(spec, target: str) -> None:
    """The tracked configs are what `tritonstack export` writes (no hand edits drift): the
    defaults plus the values `tritonstack bench search` recorded beside the cpu config."""
    path = {
        "cpu": ROOT / "model_repository" / "minilm" / "config.pbtxt",
        "gpu": ROOT / "deploy" / "triton" / "model_repository_gpu" / "minilm" / "config.pbtxt",
    }[target]
    options = with_tuned(ServingOptions(target=Target(target)), path.parent)
    assert load_config(path) == build_config(spec, options)


def test_malformed_text_is_rejected_with_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "m"\nbackend: "python"\nmax_batch_size: eight\n')
    with pytest.raises(ModelConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "malformed model config" in message and "3:" in message


def test_unknown_field_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "m"\nbackend: "python"\nmax_batch_sise: 8\n')
    with pytest.raises(ModelConfigError, match="max_batch_sise"):
        load_config(path)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c.dynamic_batching.preferred_batch_size.append(64), "preferred_batch_size 64"),
        (lambda c: setattr(c, "max_batch_size", 0), "dynamic_batching needs max_batch_size > 0"),
        (lambda c: c.input[0].dims.__setitem__(0, 0), "dims must be > 0 or -1"),
        (lambda c: c.instance_group[0].__setattr__("count", 0), "count must be >= 1"),
        (lambda c: c.ClearField("backend"), "set 'backend'"),
        (
            lambda c: c.input.add(name="input_ids", data_type=mc.TYPE_INT64, dims=[1]),
            "declared twice",
        ),
    ],
)
def test_inconsistent_configs_name_what_to_fix(spec, mutate, expected: str) -> None:
    config = build_config(spec, ServingOptions())
    mutate(config)
    with pytest.raises(ModelConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        validate_config(config)


def test_generated_text_is_not_a_template(spec) -> None:
    text = to_text(build_config(spec, ServingOptions()))
    parsed = mc.ModelConfig()
    from google.protobuf import text_format

    text_format.Parse(text, parsed)
    assert parsed.name == "minilm" and "{{" not in text


def test_queue_policy_can_be_left_out(spec) -> None:
    config = build_config(spec, ServingOptions(max_queue_size=0))
    assert config.HasField("dynamic_batching")
    assert not config.dynamic_batching.HasField("default_queue_policy")
