"""ONNX → TensorRT engine, where TensorRT and a GPU exist; a SKIPPED record where they do not.

Engines are not portable: one is valid for the TensorRT version and the GPU architecture
(compute capability) it was built on, so both are recorded beside it. The optimization
profile follows the Triton config: batch 1 .. ``max_batch_size`` (optimum: the largest
preferred batch size) and each dynamic axis 1 .. ``spec.max_length``. What can be checked
without TensorRT (the profile, the ``trtexec`` equivalent, the ``tensorrt_plan`` config) is
tested here; the build itself runs only on a GPU host with TensorRT (NVIDIA's images).

An engine is held to the same checks as every ONNX variant before it may be served
(:data:`WILL_CHECK`, with the export's budgets, recorded in the step's report whether it ran or
was SKIPPED). No machine of ours has TensorRT's runtime, so the engine is kept in the build
directory and never installed until those checks run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from export.model_config import ServingOptions, Target, build_config
from export.spec import ModelSpec
from export.status import Status, StepResult

STEP = "onnx2tensorrt"
PLAN_FILE = "model.plan"
WILL_CHECK = (
    "parity: the engine's outputs on this export's PyTorch reference cases, within the fp16 "
    "budget in the task's metric (budgets.parity.fp16)",
    "batch invariance: the invariance probes alone, in batches of 8 with other companions and "
    "padded (mask 0), moving by at most budgets.invariance_max_rel_l2; TensorRT picks kernels "
    "per shape, so at several batch sizes of the optimization profile (1, the optimum, the max)",
    "task metrics: the evaluation set through the engine against the fp32 ONNX outputs "
    "(embeddings: recall@10 and similarity Spearman; rankers: AUC delta; classifiers: top-1) "
    "within budgets.task",
    "install only after all three pass: until then the engine stays in the build directory",
)


@dataclass(frozen=True)
class ShapeRange:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def optimization_profile(
    spec: ModelSpec, options: ServingOptions, opt_length: int | None = None
) -> dict[str, ShapeRange]:
    """min/opt/max shapes per input, batch first, matching the Triton config's batching."""
    batches = [b for b in options.preferred_batch_sizes if b <= options.max_batch_size]
    opt_batch = max(batches, default=options.max_batch_size)
    length = min(opt_length or 128, spec.max_length)
    profile = {}
    for tensor in spec.inputs:

        def dims(
            batch: int, dynamic: int, shape: tuple[int, ...] = tensor.shape
        ) -> tuple[int, ...]:
            return (batch, *(dynamic if d == -1 else d for d in shape))

        profile[tensor.name] = ShapeRange(
            min=dims(1, 1),
            opt=dims(opt_batch, length),
            max=dims(options.max_batch_size, spec.max_length),
        )
    return profile


def trtexec_command(
    onnx_path: Path, plan_path: Path, profile: dict[str, ShapeRange], *, fp16: bool = True,
    timing_cache: Path | None = None,
) -> list[str]:  # fmt: skip
    """The equivalent ``trtexec`` build (for hosts that prefer the CLI to the Python API)."""

    def shapes(pick: str) -> str:
        return ",".join(
            f"{name}:{'x'.join(map(str, getattr(r, pick)))}" for name, r in profile.items()
        )

    command = [
        "trtexec", f"--onnx={onnx_path}", f"--saveEngine={plan_path}",
        f"--minShapes={shapes('min')}", f"--optShapes={shapes('opt')}",
        f"--maxShapes={shapes('max')}",
    ]  # fmt: skip
    if fp16:
        command.append("--fp16")
    if timing_cache is not None:
        command.append(f"--timingCacheFile={timing_cache}")
    return command


def tensorrt_config(spec: ModelSpec, options: ServingOptions) -> mc.ModelConfig:
    """The Triton config serving the engine: ``tensorrt_plan``, KIND_GPU, same batching."""
    config = build_config(spec, dataclasses.replace(options, target=Target.GPU))
    config.platform = "tensorrt_plan"
    config.default_model_filename = PLAN_FILE
    return config


def availability() -> tuple[bool, str]:
    """Whether an engine can be built here, and why not."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, "TensorRT is not installed (pip/NVIDIA index or an NVIDIA TensorRT image)"
    if shutil.which("nvidia-smi") is None:
        return False, "no NVIDIA GPU (nvidia-smi not found): engines are built on the GPU"
    return True, ""


def gpu_identity() -> dict[str, str]:
    """Name and compute capability of GPU 0 (an engine only runs on the architecture it was built
    for)."""
    done = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    name, capability, driver = (part.strip() for part in done.stdout.splitlines()[0].split(","))
    return {"gpu": name, "compute_capability": capability, "driver": driver}


def build_engine(
    onnx_path: Path,
    spec: ModelSpec,
    options: ServingOptions,
    out_dir: Path,
    *,
    fp16: bool = True,
    timing_cache: Path | None = None,
    budgets: dict[str, Any] | None = None,
) -> StepResult:
    """Build ``out_dir/model.plan`` (FP16, one profile, a reusable timing cache) or say why not.

    Either way the report records what the engine will be checked against (``budgets``: the
    export's, as in ``report.json``) before it may be served.
    """
    ok, reason = availability()
    profile = optimization_profile(spec, options)
    shapes = {name: dataclasses.asdict(r) for name, r in profile.items()}
    will_check = {"checks": list(WILL_CHECK), "budgets": budgets or {}, "checked": False}
    if not ok:
        return StepResult(
            STEP, Status.SKIPPED, reason, metrics={"profile": shapes, "will_check": will_check}
        )
    started = time.perf_counter()
    import tensorrt as trt  # only where it exists

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        return StepResult(STEP, Status.FAILED, f"TensorRT could not parse the ONNX: {errors}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    trt_profile = builder.create_optimization_profile()
    for name, shape in profile.items():
        trt_profile.set_shape(name, shape.min, shape.opt, shape.max)
    config.add_optimization_profile(trt_profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        return StepResult(STEP, Status.FAILED, "TensorRT's builder returned no engine (see log)")
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = out_dir / PLAN_FILE
    plan.write_bytes(bytes(engine))
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    metrics = {
        "tensorrt": trt.__version__, **gpu_identity(), "fp16": fp16, "profile": shapes,
        "bytes": plan.stat().st_size, "will_check": will_check,
    }  # fmt: skip
    return StepResult(STEP, Status.OK, artefact=plan, metrics=metrics,
                      duration_s=time.perf_counter() - started)  # fmt: skip
