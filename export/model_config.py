"""Triton ``config.pbtxt`` built from the ``model_config_pb2`` protobuf, and checked.

Two serving targets share one generator:

* ``cpu`` (the embedded default): a python-backend model whose ``model.py`` runs the ONNX file
  with ONNX Runtime, ``KIND_CPU`` instances, ragged batching of the sequence axis (the model
  pads each batch to its longest request).
* ``gpu``: NVIDIA's Triton image with the native ``onnxruntime_onnx`` platform, ``KIND_GPU``
  instances (``count`` per GPU); clients send equal-length batches.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.errors import ModelConfigError

if TYPE_CHECKING:  # annotations only: reading a config must not import torch (export.spec)
    from export.spec import ModelSpec, TensorSpec

ENSEMBLE = "ensemble"  # the platform of a Triton ensemble (a pipeline of served models)


class Target(enum.StrEnum):
    CPU = "cpu"
    GPU = "gpu"


@dataclass
class ServingOptions:
    """How a model is served: batching, queueing, instances, warm-up, versions."""

    target: Target = Target.CPU
    max_batch_size: int = 32
    preferred_batch_sizes: list[int] = field(default_factory=lambda: [8, 16, 32])
    max_queue_delay_us: int = 2000
    max_queue_size: int = 256
    # 0 for max_queue_size: no default_queue_policy at all. On tritonserver 2.51 (CPU) any queue
    # policy now and then stalls gRPC requests in the queue (HTTP unaffected): the measurements
    # are in benchmarks/README.md, "Finding: gRPC queue stalls with a queue policy".
    queue_timeout_us: int = 0  # 0: a queued request waits as long as it must
    instance_count: int = 1  # per GPU for the gpu target
    intra_op_threads: int = 0  # ONNX Runtime threads per instance (0: runtime default)
    warmup_length: int = 16
    num_versions: int = 1  # version policy: serve the latest N versions
    response_cache: bool = True  # Triton's per-request cache; the server needs --cache-config


# What `tritonstack bench search` may tune, recorded beside the config it wrote
# (model_repository/<model>/tuned_options.json) so that `tritonstack export` keeps writing it.
TUNED_FILE = "tuned_options.json"
TUNABLE = (
    "instance_count",
    "intra_op_threads",
    "max_queue_delay_us",
    "preferred_batch_sizes",
    "max_queue_size",
)


def read_tuned(model_dir: Path) -> dict[str, Any]:
    """The tuned option values recorded in ``model_dir`` ({} when there is no record)."""
    path = model_dir / TUNED_FILE
    if not path.is_file():
        return {}
    try:
        values = dict(json.loads(path.read_text())["options"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelConfigError(f"{path}: not a tuned-options record: {exc}") from exc
    unknown = sorted(set(values) - set(TUNABLE))
    if unknown:
        raise ModelConfigError(f"{path}: unknown options {unknown}; tunable: {list(TUNABLE)}")
    return values


def with_tuned(options: ServingOptions, model_dir: Path) -> ServingOptions:
    """``options`` with the values tuned on this machine kind (cpu target only: the search
    measures the python backend on CPU)."""
    if options.target is not Target.CPU:
        return options
    return dataclasses.replace(options, **read_tuned(model_dir))


def write_tuned(model_dir: Path, options: ServingOptions, evidence: str) -> Path:
    """Record the tunable values of ``options`` and the measurements that chose them."""
    path = model_dir / TUNED_FILE
    values = {k: getattr(options, k) for k in TUNABLE}
    path.write_text(json.dumps({"options": values, "chosen_by": evidence}, indent=2) + "\n")
    return path


def _tensor(spec: TensorSpec, *, ragged: bool) -> tuple[str, int, list[int], bool]:
    dtype = mc.DataType.Value(spec.triton_type)
    return spec.name, dtype, list(spec.shape), ragged and -1 in spec.shape


def build_config(spec: ModelSpec, options: ServingOptions) -> mc.ModelConfig:
    """The model configuration for ``spec`` served as ``options`` says."""
    cpu = options.target is Target.CPU
    config = mc.ModelConfig(name=spec.name, max_batch_size=options.max_batch_size)
    if cpu:
        config.backend = "python"
    else:
        config.platform = "onnxruntime_onnx"
        config.default_model_filename = "model.onnx"
    for t in spec.inputs:
        name, dtype, dims, ragged = _tensor(t, ragged=cpu and spec.ragged)
        config.input.add(name=name, data_type=dtype, dims=dims, allow_ragged_batch=ragged)
    for t in spec.outputs:
        config.output.add(
            name=t.name, data_type=mc.DataType.Value(t.triton_type), dims=list(t.shape)
        )

    batching = config.dynamic_batching
    batching.preferred_batch_size.extend(
        b for b in options.preferred_batch_sizes if b <= options.max_batch_size
    )
    batching.max_queue_delay_microseconds = options.max_queue_delay_us
    if options.max_queue_size > 0:
        policy = batching.default_queue_policy
        policy.max_queue_size = options.max_queue_size
        policy.timeout_action = mc.ModelQueuePolicy.REJECT
        policy.default_timeout_microseconds = options.queue_timeout_us

    group = config.instance_group.add(
        name=f"{spec.name}_{'cpu' if cpu else 'gpu'}",
        count=options.instance_count,
        kind=mc.ModelInstanceGroup.KIND_CPU if cpu else mc.ModelInstanceGroup.KIND_GPU,
    )
    del group  # configured in place
    config.version_policy.latest.num_versions = options.num_versions

    warmup = config.model_warmup.add(name=f"warmup_b1_len{options.warmup_length}", batch_size=1)
    for t in spec.inputs:
        dims = [options.warmup_length if d == -1 else d for d in t.shape]
        warmup.inputs[t.name].CopyFrom(
            mc.ModelWarmup.Input(
                data_type=mc.DataType.Value(t.triton_type), dims=dims, zero_data=True
            )
        )
    if options.response_cache:
        config.response_cache.enable = True

    params = dict(spec.parameters)
    if cpu:
        params["onnx_model_filename"] = "model.onnx"
        params["intra_op_num_threads"] = str(options.intra_op_threads)
    for key, value in sorted(params.items()):
        config.parameters[key].string_value = value
    validate_config(config)
    return config


def validate_config(config: mc.ModelConfig, source: str = "<config>") -> None:
    """Raise :class:`ModelConfigError` naming what to fix where Triton would refuse the config."""
    problems: list[str] = []
    if not config.name:
        problems.append("'name' is empty")
    if not (config.backend or config.platform):
        problems.append("set 'backend' (e.g. \"python\") or 'platform' (e.g. \"onnxruntime_onnx\")")
    if config.platform == ENSEMBLE:
        problems += _ensemble_problems(config)
    elif config.HasField("ensemble_scheduling"):
        problems.append(f'ensemble_scheduling needs platform "{ENSEMBLE}"')
    if config.max_batch_size < 0:
        problems.append(f"max_batch_size must be >= 0, got {config.max_batch_size}")
    if not config.input:
        problems.append("no 'input' declared")
    if not config.output:
        problems.append("no 'output' declared")
    seen: set[str] = set()
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for t in tensors:
            if not t.name:
                problems.append(f"an {kind} has no name")
            if t.name in seen:
                problems.append(f"{kind} name {t.name!r} is declared twice")
            seen.add(t.name)
            if t.data_type == mc.TYPE_INVALID:
                problems.append(f"{kind} {t.name!r}: data_type is missing")
            if not t.dims and config.max_batch_size == 0:
                problems.append(f"{kind} {t.name!r}: dims are empty")
            bad = [d for d in t.dims if d == 0 or d < -1]
            if bad:
                problems.append(f"{kind} {t.name!r}: dims must be > 0 or -1, got {list(t.dims)}")
    if config.HasField("dynamic_batching"):
        if config.max_batch_size == 0:
            problems.append("dynamic_batching needs max_batch_size > 0")
        for size in config.dynamic_batching.preferred_batch_size:
            if size <= 0 or size > config.max_batch_size:
                problems.append(
                    f"preferred_batch_size {size} is outside 1..max_batch_size "
                    f"({config.max_batch_size})"
                )
    for group in config.instance_group:
        if group.count < 1:
            problems.append(f"instance_group {group.name!r}: count must be >= 1")
    inputs = {t.name: t for t in config.input}
    for warmup in config.model_warmup:
        for name, value in warmup.inputs.items():
            if name not in inputs:
                problems.append(f"model_warmup {warmup.name!r}: unknown input {name!r}")
            elif value.data_type != inputs[name].data_type:
                problems.append(f"model_warmup {warmup.name!r}: input {name!r} has the wrong type")
    if problems:
        raise ModelConfigError(f"{source}: invalid model config: " + "; ".join(problems))


def _ensemble_problems(config: mc.ModelConfig) -> list[str]:
    """What Triton would refuse in an ensemble's own config (the composing models' configs
    are checked against it by ``export.ensemble.check_ensemble``)."""
    problems: list[str] = []
    if config.backend:
        problems.append(f"an ensemble has no backend (remove backend {config.backend!r})")
    if config.HasField("dynamic_batching") or config.HasField("sequence_batching"):
        problems.append("an ensemble is not batched itself: remove dynamic/sequence_batching")
    if config.instance_group:
        problems.append("an ensemble has no instances: remove instance_group")
    steps = config.ensemble_scheduling.step
    if not steps:
        problems.append("ensemble_scheduling needs at least one step")
        return problems
    inputs = {t.name for t in config.input}
    outputs = {t.name for t in config.output}
    produced: dict[str, str] = {}  # ensemble tensor -> the step model that writes it
    consumed: set[str] = set()
    for number, step in enumerate(steps):
        where = f"ensemble step {number} ({step.model_name or 'no model_name'})"
        if not step.model_name:
            problems.append(f"{where}: model_name is empty")
        if step.model_version < -1:
            problems.append(f"{where}: model_version must be -1 (latest) or >= 0")
        if not step.input_map or not step.output_map:
            problems.append(f"{where}: needs an input_map and an output_map")
        consumed.update(step.input_map.values())
        for tensor in step.output_map.values():
            if tensor in inputs:
                problems.append(f"{where}: writes the ensemble input {tensor!r}")
            elif tensor in produced:
                problems.append(
                    f"{where}: tensor {tensor!r} is already written by {produced[tensor]!r}"
                )
            produced[tensor] = step.model_name
    for number, step in enumerate(steps):
        for tensor in step.input_map.values():
            if tensor not in inputs and tensor not in produced:
                problems.append(
                    f"ensemble step {number} ({step.model_name}): reads {tensor!r}, which is "
                    "neither an ensemble input nor any step's output"
                )
    problems += [f"ensemble input {n!r} is read by no step" for n in sorted(inputs - consumed)]
    problems += [
        f"ensemble output {n!r} is written by no step" for n in sorted(outputs - set(produced))
    ]
    return problems


def to_text(config: mc.ModelConfig) -> str:
    return str(text_format.MessageToString(config))


def write_config(config: mc.ModelConfig, path: Path) -> Path:
    validate_config(config, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_text(config))
    return path


def load_config(path: Path) -> mc.ModelConfig:
    """Parse and check a ``config.pbtxt``; errors name the file, line and column."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelConfigError(f"{path}: cannot read model config: {exc}") from exc
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelConfigError(f"{path}: malformed model config: {exc}") from exc
    validate_config(config, str(path))
    return config
