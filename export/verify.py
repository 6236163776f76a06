"""Step: check an ONNX artefact against the PyTorch reference on fresh random inputs.

The budget is enforced, not only reported: a variant whose worst-case relative L2 error
(``||onnx - torch|| / ||torch||`` per sample and output) exceeds it is FAILED, and the pipeline
does not write it into the model repository.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.spec import ModelSpec
from export.status import Status, StepResult

FP32_BUDGET = 1e-4


@dataclass(frozen=True)
class ParityCase:
    batch: int
    length: int


def default_cases(max_length: int) -> list[ParityCase]:
    """Batch and length mixes that exercise the dynamic axes, up to the model's max length."""
    lengths = [5, 17, 64, min(max_length, 256)]
    return [
        ParityCase(1, lengths[0]),
        ParityCase(3, lengths[1]),
        ParityCase(8, lengths[2]),
        ParityCase(2, lengths[3]),
    ]


def _per_sample_errors(got: np.ndarray, want: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relative L2 error and cosine similarity per sample (row along axis 0)."""
    got2 = got.reshape(got.shape[0], -1).astype(np.float64)
    want2 = want.reshape(want.shape[0], -1).astype(np.float64)
    diff = np.linalg.norm(got2 - want2, axis=1)
    norm_want = np.linalg.norm(want2, axis=1)
    rel = diff / np.maximum(norm_want, 1e-12)
    cos = (got2 * want2).sum(axis=1) / np.maximum(norm_want * np.linalg.norm(got2, axis=1), 1e-12)
    return rel, cos


def verify_parity(
    spec: ModelSpec,
    onnx_path: Path,
    *,
    budget: float = FP32_BUDGET,
    seed: int | None = None,
    cases: list[ParityCase] | None = None,
    min_cosine: float | None = None,
) -> StepResult:
    """Compare ONNX Runtime (CPU) with PyTorch; FAILED when max relative L2 error > budget.

    With ``min_cosine`` (reduced-precision variants of an embedding model) the budget is the
    worst per-sample cosine similarity instead, and ``budget`` is not used.
    """
    start = time.perf_counter()
    seed = int(np.random.SeedSequence().entropy % 2**32) if seed is None else seed  # type: ignore[operator]
    rng = np.random.default_rng(seed)
    cases = cases or default_cases(spec.max_length)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    output_names = [t.name for t in spec.outputs]

    worst_rel, worst_abs, min_cos = 0.0, 0.0, 1.0
    per_case = []
    for case in cases:
        inputs = spec.sample_inputs(rng, case.batch, case.length)
        want = spec.torch_outputs(inputs)
        got = session.run(output_names, inputs)
        for name, g, w in zip(output_names, got, want, strict=True):
            if g.shape != w.shape:
                return StepResult(
                    "verify",
                    Status.FAILED,
                    reason=f"output {name!r}: ONNX shape {g.shape} != PyTorch shape {w.shape}",
                    duration_s=time.perf_counter() - start,
                )
            rel, cos = _per_sample_errors(g, w)
            abs_err = float(np.max(np.abs(g.astype(np.float64) - w))) if g.size else 0.0
            worst_rel = max(worst_rel, float(rel.max(initial=0.0)))
            worst_abs = max(worst_abs, abs_err)
            min_cos = min(min_cos, float(cos.min(initial=1.0)))
            per_case.append(
                {
                    "batch": case.batch,
                    "length": case.length,
                    "output": name,
                    "max_rel_l2": float(rel.max(initial=0.0)),
                    "max_abs": abs_err,
                }
            )

    metrics = {
        "metric": "max relative L2 error per sample",
        "budget": budget,
        "max_rel_l2": worst_rel,
        "max_abs": worst_abs,
        "min_cosine": min_cos,
        "seed": seed,
        "cases": per_case,
        "passed": worst_rel <= budget,
    }
    if min_cosine is not None:
        metrics.update(metric="min cosine similarity per sample", budget=min_cosine)
        metrics["passed"] = bool(min_cos >= min_cosine)
        if not metrics["passed"] or not np.isfinite(min_cos):
            return StepResult(
                "verify",
                Status.FAILED,
                reason=(
                    f"min cosine {min_cos:.5f} is below the budget {min_cosine:.5f} "
                    f"(missed by {min_cosine - min_cos:.5f}; seed {seed})"
                ),
                artefact=onnx_path,
                metrics=metrics,
                duration_s=time.perf_counter() - start,
            )
    elif worst_rel > budget or not np.isfinite(worst_rel):
        return StepResult(
            "verify",
            Status.FAILED,
            reason=(
                f"max relative L2 error {worst_rel:.3e} exceeds the budget {budget:.1e} "
                f"({worst_rel / budget:.1f}x; seed {seed})"
            ),
            artefact=onnx_path,
            metrics=metrics,
            duration_s=time.perf_counter() - start,
        )
    return StepResult(
        "verify",
        Status.OK,
        artefact=onnx_path,
        metrics=metrics,
        duration_s=time.perf_counter() - start,
    )
