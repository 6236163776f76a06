"""In-process steps of the GPU check: the carried MiniLM in PyTorch on one device, no server.

- :func:`parity`: fp32 on the device against the CPU fp32 reference of the same (fp16-rounded)
  weights under the fp32 budget; fp16 against the CPU fp32 reference of the real weights
  under the export's fp16 budget (cosine 0.999 for embeddings).
- :func:`ceiling`: items/s and latency at batch 1/8/32, ``SEQ`` tokens, fresh ids per call,
  host in -> device -> host out (what any server must do at least), eager PyTorch.
- :func:`ort_cuda`: the same with ONNX Runtime's CUDA provider, where it exists.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.gpu.minilm import INPUTS, ordinary, random_ids, uncarried
from export.spec import Task
from export.status import Status, StepResult
from export.variants import Budgets, Variant
from export.verify import FP32_BUDGET, Budget, Metric, ReferenceCase, Runner, check_outputs

SEQ = 32  # tokens per item, as the CPU benchmarks (benchmarks/compare.py)
BATCHES = (1, 8, 32)
POOL_BATCHES = 16  # distinct input batches cycled per point (fresh ids, no data-size effect)


def fp16_budget() -> Budget:
    """The export's budget of the fp16 variant of an embedding model (cosine 0.999)."""
    return Budgets().of(Variant.FP16, Task.EMBEDDING)


def torch_runner(model: torch.nn.Module, device: torch.device) -> Runner:
    def run(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = [torch.from_numpy(inputs[n]).to(device) for n in INPUTS]
        with torch.inference_mode():
            return [model(*args).to(torch.float32).cpu().numpy()]

    return run


def parity(
    run: Runner,
    dtype: str,
    true: list[ReferenceCase],
    rounded: list[ReferenceCase],
    word_ids: np.ndarray,
    step: str,
) -> StepResult:
    """``run`` (fp32 or fp16 answers) against the reference it owes, under its budget."""
    bad = sorted({i for c in true for i in uncarried(c.inputs, word_ids)})
    if bad:
        return StepResult(step, Status.FAILED, reason=f"inputs use uncarried token ids {bad[:5]}")
    if dtype == "fp32":
        result = check_outputs(run, rounded, ["sentence_embedding"],
                               budget=Budget(Metric.REL_L2, FP32_BUDGET), step=step)  # fmt: skip
        result.metrics["against"] = "CPU PyTorch fp32 with the same fp16-rounded weights"
    else:
        result = check_outputs(run, true, ["sentence_embedding"], budget=fp16_budget(), step=step)
        result.metrics["against"] = "CPU PyTorch fp32 with the real fp32 weights"
    result.metrics.pop("cases", None)  # per-case rows: too long for the report
    return result


def _point(latencies: list[float], batch: int, seconds: float) -> dict[str, Any]:
    ms = np.asarray(latencies) * 1000.0
    return {
        "batch": batch,
        "iterations": len(latencies),
        "items_per_s": round(len(latencies) * batch / seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


def time_batches(
    call: Any, pool: np.ndarray, batches: Sequence[int], seconds: float, seed: int = 0
) -> list[dict[str, Any]]:
    """Closed-loop timing of ``call(ids)`` (synchronous: returns host data) per batch size."""
    rng = np.random.default_rng(seed)
    points = []
    for batch in batches:
        inputs = [random_ids(rng, pool, batch, SEQ) for _ in range(POOL_BATCHES)]
        for ids in inputs[:3] * 3:  # warm-up: allocator, cuBLAS handles, kernel selection
            call(ids)
        latencies: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            ids = inputs[len(latencies) % POOL_BATCHES]
            t0 = time.perf_counter()
            call(ids)
            latencies.append(time.perf_counter() - t0)
        points.append(_point(latencies, batch, time.perf_counter() - start))
    return points


def ceiling(
    models: dict[str, torch.nn.Module],
    device: torch.device,
    word_ids: np.ndarray,
    seconds: float,
    batches: Sequence[int] = BATCHES,
) -> StepResult:
    """PyTorch items/s per dtype and batch size, in-process on ``device``."""
    start = time.perf_counter()
    pool = ordinary(word_ids)
    points = []
    for dtype, model in models.items():

        def call(ids: np.ndarray, model: torch.nn.Module = model) -> np.ndarray:
            x = torch.from_numpy(ids).to(device)
            with torch.inference_mode():
                out = model(x, torch.ones_like(x), torch.zeros_like(x))
            return out.to(torch.float32).cpu().numpy()  # .cpu() waits for the device

        points += [{"engine": "torch", "dtype": dtype, **p}
                   for p in time_batches(call, pool, batches, seconds)]  # fmt: skip
    return StepResult(
        "ceiling_torch",
        Status.OK,
        metrics={
            "points": points,
            "seq": SEQ,
            "seconds_per_point": seconds,
            "measures": "host ids -> device -> embeddings on the host, eager PyTorch, "
            "one call at a time, fresh ids each call",
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
        duration_s=time.perf_counter() - start,
    )


def ort_cuda(
    model_fp32_cpu: torch.nn.Module,
    model_dir: Path,
    word_ids: np.ndarray,
    seconds: float,
    providers: list[str],
    batches: Sequence[int] = BATCHES,
) -> StepResult:
    """ONNX Runtime with its CUDA provider on a fresh fp32 export (SKIPPED without it)."""
    start = time.perf_counter()
    if "CUDAExecutionProvider" not in providers:
        reason = f"onnxruntime has no CUDAExecutionProvider (has {providers})"
        return StepResult("ceiling_ort_cuda", Status.SKIPPED, reason=reason)
    import onnxruntime as ort  # heavy, and only where the provider exists

    from export.models import minilm
    from export.torch2onnx import torch_to_onnx

    with tempfile.TemporaryDirectory() as tmp:
        step = torch_to_onnx(minilm.load(module=model_fp32_cpu, path=model_dir),
                             Path(tmp) / "model.onnx")  # fmt: skip
        if not step.ok or step.artefact is None:
            return StepResult("ceiling_ort_cuda", Status.FAILED, reason=f"export: {step.reason}")
        session = ort.InferenceSession(str(step.artefact), providers=["CUDAExecutionProvider"])

        def call(ids: np.ndarray) -> np.ndarray:
            feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                     "token_type_ids": np.zeros_like(ids)}  # fmt: skip
            return np.asarray(session.run(None, feeds)[0])

        points = [{"engine": "onnxruntime-cuda", "dtype": "fp32", **p}
                  for p in time_batches(call, ordinary(word_ids), batches, seconds)]  # fmt: skip
    return StepResult(
        "ceiling_ort_cuda",
        Status.OK,
        metrics={
            "points": points,
            "providers": session.get_providers(),
            "onnxruntime": ort.__version__,
        },
        duration_s=time.perf_counter() - start,
    )
