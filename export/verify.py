"""Step: check an ONNX artefact against the PyTorch fp32 reference on fresh inputs.

The budget is enforced, not only reported: an artefact outside it is FAILED, the reason says
by how much it missed, and the pipeline never writes it into the model repository.

Budgets are expressed in the metric that fits the model's output (:class:`Metric`):

- ``rel_l2``: worst per-sample ``||onnx - torch|| / ||torch||`` (fp32 and graph-optimized
  artefacts of every model, reduced precision of regressors); lower is better.
- ``cosine``: worst per-sample cosine similarity (reduced precision of embedding models).
- ``top1``: share of rows whose arg-max class agrees with PyTorch's (classifiers).

Inputs are random, drawn from the spec's sampler with a recorded seed, plus the user's own
sample data when given. The PyTorch outputs are computed once (:func:`reference`) and shared
by every artefact checked against them.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.spec import ModelSpec
from export.status import Status, StepResult

FP32_BUDGET = 1e-4


class Metric(enum.StrEnum):
    REL_L2 = "rel_l2"
    COSINE = "cosine"
    TOP1 = "top1"

    @property
    def describe(self) -> str:
        return {
            Metric.REL_L2: "max relative L2 error per sample",
            Metric.COSINE: "min cosine similarity per sample",
            Metric.TOP1: "top-1 agreement with PyTorch",
        }[self]

    @property
    def higher_is_better(self) -> bool:
        return self is not Metric.REL_L2


@dataclass(frozen=True)
class Budget:
    """A threshold in one metric: ``rel_l2`` must stay at or below it, the others at or above."""

    metric: Metric
    threshold: float

    def passes(self, value: float) -> bool:
        if not np.isfinite(value):
            return False
        return value >= self.threshold if self.metric.higher_is_better else value <= self.threshold

    def miss(self, value: float) -> str:
        """How far ``value`` is from the budget, in words."""
        if self.metric is Metric.REL_L2:
            ratio = f"{value / self.threshold:.1f}x" if self.threshold else "inf"
            return (
                f"max relative L2 error {value:.3e} exceeds the budget {self.threshold:.1e} "
                f"({ratio})"
            )
        label = "min cosine" if self.metric is Metric.COSINE else "top-1 agreement"
        return (
            f"{label} {value:.5f} is below the budget {self.threshold:.5f} "
            f"(missed by {self.threshold - value:.5f})"
        )


FP32 = Budget(Metric.REL_L2, FP32_BUDGET)


@dataclass(frozen=True)
class ParityCase:
    batch: int
    length: int


@dataclass
class ReferenceCase:
    """Inputs and the PyTorch fp32 outputs for them."""

    label: str
    inputs: dict[str, np.ndarray]
    outputs: list[np.ndarray]


def default_cases(max_length: int) -> list[ParityCase]:
    """Batch and length mixes that exercise the dynamic axes, up to the model's max length."""
    lengths = [5, 17, 64, min(max_length, 256)]
    return [
        ParityCase(1, lengths[0]),
        ParityCase(3, lengths[1]),
        ParityCase(8, lengths[2]),
        ParityCase(2, lengths[3]),
        ParityCase(16, lengths[1]),
    ]


def fresh_seed() -> int:
    return int(np.random.SeedSequence().entropy % 2**32)  # type: ignore[operator]


def parity_inputs(
    spec: ModelSpec, *, seed: int, cases: list[ParityCase] | None = None
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The random parity inputs of ``seed``: (label, inputs) per case, as :func:`reference`
    draws them (so a test can send exactly what an export was verified on)."""
    rng = np.random.default_rng(seed)
    return [
        (
            f"random b={case.batch} len={case.length}",
            spec.sample_inputs(rng, case.batch, case.length),
        )
        for case in cases or default_cases(spec.max_length)
    ]


def reference(
    spec: ModelSpec,
    *,
    seed: int,
    cases: list[ParityCase] | None = None,
    sample_data: dict[str, np.ndarray] | None = None,
) -> list[ReferenceCase]:
    """PyTorch outputs on fresh random inputs (``seed``) and on the user's sample data."""
    found = [
        ReferenceCase(label, inputs, spec.torch_outputs(inputs))
        for label, inputs in parity_inputs(spec, seed=seed, cases=cases)
    ]
    if sample_data:
        missing = [t.name for t in spec.inputs if t.name not in sample_data]
        if missing:
            raise ValueError(f"sample data lacks the inputs {missing}")
        inputs = {t.name: np.ascontiguousarray(sample_data[t.name]) for t in spec.inputs}
        rows = next(iter(inputs.values())).shape[0]
        found.append(
            ReferenceCase(f"sample data ({rows} rows)", inputs, spec.torch_outputs(inputs))
        )
    return found


def _per_sample(got: np.ndarray, want: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relative L2 error and cosine similarity per sample (row along axis 0)."""
    got2 = got.reshape(got.shape[0], -1).astype(np.float64)
    want2 = want.reshape(want.shape[0], -1).astype(np.float64)
    diff = np.linalg.norm(got2 - want2, axis=1)
    norm_want = np.linalg.norm(want2, axis=1)
    rel = diff / np.maximum(norm_want, 1e-12)
    cos = (got2 * want2).sum(axis=1) / np.maximum(norm_want * np.linalg.norm(got2, axis=1), 1e-12)
    return rel, cos


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


Runner = Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]]


def verify_parity(
    spec: ModelSpec,
    onnx_path: Path,
    *,
    budget: Budget | float = FP32_BUDGET,
    seed: int | None = None,
    cases: list[ParityCase] | None = None,
    sample_data: dict[str, np.ndarray] | None = None,
    against: list[ReferenceCase] | None = None,
    step: str = "verify",
) -> StepResult:
    """ONNX Runtime (CPU) against PyTorch; FAILED when the budget is missed.

    ``budget`` is a :class:`Budget` or a float (max relative L2 error). ``against`` reuses
    reference outputs computed once for several artefacts (then ``seed``/``cases`` are unused).
    """
    start = time.perf_counter()
    if against is None:
        seed = fresh_seed() if seed is None else seed
        against = reference(spec, seed=seed, cases=cases, sample_data=sample_data)
    runner = session(onnx_path)
    output_names = [t.name for t in spec.outputs]
    result = check_outputs(
        lambda inputs: runner.run(output_names, inputs),
        against,
        output_names,
        budget=budget,
        seed=seed,
        step=step,
        artefact=onnx_path,
    )
    result.duration_s = time.perf_counter() - start
    return result


def check_outputs(
    run: Runner,
    against: list[ReferenceCase],
    output_names: Sequence[str],
    *,
    budget: Budget | float = FP32_BUDGET,
    seed: int | None = None,
    step: str = "verify",
    artefact: Path | None = None,
) -> StepResult:
    """Any runner (ONNX Runtime, PyTorch on a GPU, a server) against reference outputs, under
    ``budget``: FAILED with how much it missed by, or a runner output of the wrong shape."""
    start = time.perf_counter()
    budget = budget if isinstance(budget, Budget) else Budget(Metric.REL_L2, budget)
    worst_rel, worst_abs, min_cos = 0.0, 0.0, 1.0
    agree, rows = 0, 0
    per_case = []
    for case in against:
        got = run(case.inputs)
        for name, g, w in zip(output_names, got, case.outputs, strict=True):
            if g.shape != w.shape:
                return StepResult(
                    step,
                    Status.FAILED,
                    reason=f"output {name!r}: got shape {g.shape} != PyTorch shape {w.shape}",
                    artefact=artefact,
                    duration_s=time.perf_counter() - start,
                )
            rel, cos = _per_sample(g, w)
            abs_err = float(np.max(np.abs(g.astype(np.float64) - w))) if g.size else 0.0
            case_rel, case_cos = float(rel.max(initial=0.0)), float(cos.min(initial=1.0))
            entry: dict[str, object] = {
                "case": case.label,
                "output": name,
                "max_rel_l2": case_rel,
                "min_cosine": case_cos,
                "max_abs": abs_err,
            }
            if g.ndim >= 2:  # class scores on the last axis: does the arg-max agree?
                same = np.argmax(g, axis=-1) == np.argmax(w, axis=-1)
                agree += int(same.sum())
                rows += int(same.size)
                entry["top1_agreement"] = float(same.mean()) if same.size else 1.0
            worst_rel = max(worst_rel, case_rel)
            worst_abs = max(worst_abs, abs_err)
            min_cos = min(min_cos, case_cos)
            per_case.append(entry)

    top1 = agree / rows if rows else 1.0
    value = {Metric.REL_L2: worst_rel, Metric.COSINE: min_cos, Metric.TOP1: top1}[budget.metric]
    passed = budget.passes(value)
    metrics = {
        "metric": budget.metric.value,
        "describe": budget.metric.describe,
        "budget": budget.threshold,
        "value": value,
        "max_rel_l2": worst_rel,
        "max_abs": worst_abs,
        "min_cosine": min_cos,
        "top1_agreement": top1,
        "seed": seed,
        "cases": per_case,
        "passed": passed,
    }
    seed_note = f"; seed {seed}" if seed is not None else ""
    return StepResult(
        step,
        Status.OK if passed else Status.FAILED,
        reason="" if passed else budget.miss(value) + seed_note,
        artefact=artefact,
        metrics=metrics,
        duration_s=time.perf_counter() - start,
    )
