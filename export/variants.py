"""Variants of an exported ONNX model, each judged against PyTorch fp32 under its own budget.

- ``fp32``: the torch->ONNX export itself.
- ``optimized``: ONNX Runtime graph optimization (transformer fusion where the spec says so).
- ``fp16``: half precision with fp32 at the edges.
- ``int8``: dynamic quantization, per channel.

fp32 and optimized are held to the fp32 budget (max relative L2 error, default 1e-4). fp16 and
int8 are held to a budget in the metric that fits the model's task: cosine similarity for
embeddings, top-1 agreement for classifiers, relative L2 error for regressors; the user sets
the thresholds. A variant outside its budget is FAILED with how much it missed by, is never
timed and never served.

:func:`measure` times the passing variants in-process (ONNX Runtime, no server) and
:func:`choose` picks what to serve: the fastest, except that a less faithful variant must be
at least ``min_gain`` faster than the most faithful passing one to displace it (so a 2% timing
noise never trades fp32 for fp16, and a re-export does not flip-flop between versions).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export import optimize
from export.spec import ModelSpec, Task
from export.status import Status, StepResult
from export.verify import (
    FP32_BUDGET,
    Budget,
    Metric,
    ParityCase,
    ReferenceCase,
    session,
    verify_parity,
)


class Variant(enum.StrEnum):
    # in order of fidelity to the PyTorch fp32 reference
    FP32 = "fp32"
    OPTIMIZED = "optimized"
    FP16 = "fp16"
    INT8 = "int8"


ALL = tuple(Variant)
# What an export tries unless told otherwise. On CPU fp16 only costs (ONNX Runtime CPU has
# few fp16 kernels: benchmarks/results/*-vm-variants.md); int8 has no fast GPU kernels in
# ONNX Runtime's CUDA provider, and fp16 is what GPUs are built for.
DEFAULTS = {
    "cpu": (Variant.FP32, Variant.OPTIMIZED, Variant.INT8),
    "gpu": (Variant.FP32, Variant.OPTIMIZED, Variant.FP16),
}


def parse_variants(text: str, target: str = "cpu") -> tuple[Variant, ...]:
    """``"auto"``, ``"all"`` or a comma list such as ``"fp32,int8"`` (fp32 is always made)."""
    text = text.strip().lower()
    if text == "auto":
        return DEFAULTS[target]
    if text == "all":
        return ALL
    try:
        chosen = {Variant(part.strip()) for part in text.split(",") if part.strip()}
    except ValueError:
        raise ValueError(
            f"unknown variant in {text!r}: use auto, all, or a comma list of "
            f"{', '.join(v.value for v in Variant)}"
        ) from None
    return tuple(v for v in Variant if v in chosen | {Variant.FP32})


# default reduced-precision thresholds per task, in that task's metric
TASK_METRIC = {
    Task.EMBEDDING: Metric.COSINE,
    Task.CLASSIFIER: Metric.TOP1,
    Task.REGRESSOR: Metric.REL_L2,
}
DEFAULT_THRESHOLDS = {
    Metric.COSINE: {Variant.FP16: 0.999, Variant.INT8: 0.97},
    Metric.TOP1: {Variant.FP16: 0.99, Variant.INT8: 0.95},
    Metric.REL_L2: {Variant.FP16: 1e-2, Variant.INT8: 5e-2},
}


@dataclass(frozen=True)
class Budgets:
    """The accuracy budget of every variant. ``fp16``/``int8`` are thresholds in the task's
    metric (None: that metric's default)."""

    rel_l2: float = FP32_BUDGET
    fp16: float | None = None
    int8: float | None = None

    def of(self, variant: Variant, task: Task) -> Budget:
        if variant in (Variant.FP32, Variant.OPTIMIZED):
            return Budget(Metric.REL_L2, self.rel_l2)
        metric = TASK_METRIC[task]
        given = self.fp16 if variant is Variant.FP16 else self.int8
        return Budget(metric, DEFAULT_THRESHOLDS[metric][variant] if given is None else given)

    def as_dict(self, task: Task) -> dict[str, dict[str, float | str]]:
        return {
            v.value: {"metric": (b := self.of(v, task)).metric.value, "threshold": b.threshold}
            for v in Variant
        }


@dataclass
class VariantResult:
    variant: Variant
    path: Path | None
    make: StepResult
    verify: StepResult | None = None
    items_per_s: dict[int, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.make.ok and self.verify is not None and self.verify.ok

    def as_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant.value,
            "status": "OK" if self.ok else (self.verify or self.make).status.value,
            "reason": (self.verify.reason if self.verify else self.make.reason),
            "artefact": str(self.path) if self.path else None,
            "accuracy": {
                k: (self.verify.metrics if self.verify else {}).get(k)
                for k in ("metric", "budget", "value", "max_rel_l2", "min_cosine", "top1_agreement")
            },
            "items_per_s": self.items_per_s,
        }


MAKERS = {
    Variant.OPTIMIZED: optimize.optimize_onnx,
    Variant.FP16: optimize.to_fp16,
    Variant.INT8: optimize.to_int8,
}


def make_variant(variant: Variant, fp32_path: Path, out_dir: Path, spec: ModelSpec) -> StepResult:
    """Write ``out_dir/model.<variant>.onnx`` from the fp32 export (fp32: the export itself)."""
    if variant is Variant.FP32:
        return StepResult("fp32", Status.OK, artefact=fp32_path)
    return MAKERS[variant](fp32_path, out_dir / f"model.{variant.value}.onnx", spec)


def check_variant(
    variant: Variant,
    path: Path,
    spec: ModelSpec,
    budgets: Budgets,
    *,
    seed: int | None = None,
    cases: list[ParityCase] | None = None,
    against: list[ReferenceCase] | None = None,
) -> StepResult:
    """The variant against PyTorch fp32 under its own budget (FAILED says by how much)."""
    result = verify_parity(
        spec, path, budget=budgets.of(variant, spec.task), seed=seed, cases=cases,
        against=against, step="verify" if variant is Variant.FP32 else f"verify_{variant.value}",
    )  # fmt: skip
    result.write_report(path.with_name(path.name + ".verify.json"))
    return result


def measure(
    path: Path, spec: ModelSpec, batches: tuple[int, ...] = (1, 8, 32), *, length: int = 32,
    seconds: float = 1.0, threads: int = 0,
) -> dict[int, float]:  # fmt: skip
    """In-process items/s per batch size (ONNX Runtime CPU, no server)."""
    runner = session(path, threads)
    rng = np.random.default_rng(0)
    names = [t.name for t in spec.outputs]
    results = {}
    for batch in batches:
        inputs = spec.sample_inputs(rng, batch, length)
        runner.run(names, inputs)  # warm-up
        done, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds or done == 0:
            runner.run(names, inputs)
            done += batch
        results[batch] = round(done / elapsed, 1)
    return results


def build_variants(
    spec: ModelSpec,
    fp32_path: Path,
    out_dir: Path,
    variants: tuple[Variant, ...] = ALL,
    budgets: Budgets | None = None,
    *,
    seed: int | None = None,
    against: list[ReferenceCase] | None = None,
    measure_s: float = 1.0,
    batches: tuple[int, ...] = (1, 8, 32),
) -> list[VariantResult]:
    """Make, check and (when within budget and ``measure_s`` > 0) time each variant."""
    budgets = budgets or Budgets()
    results = []
    for variant in variants:
        made = make_variant(variant, fp32_path, out_dir, spec)
        result = VariantResult(variant, made.artefact, made)
        if made.ok and made.artefact is not None:
            result.verify = check_variant(
                variant, made.artefact, spec, budgets, seed=seed, against=against
            )
            if result.verify.ok and measure_s > 0:
                result.items_per_s = measure(made.artefact, spec, batches, seconds=measure_s)
        results.append(result)
    return results


def fastest(results: list[VariantResult], batch: int = 8) -> VariantResult | None:
    """The passing variant with the best throughput at ``batch`` (None when none passed)."""
    passing = [r for r in results if r.ok and batch in r.items_per_s]
    return max(passing, key=lambda r: r.items_per_s[batch], default=None)


def choose(
    results: list[VariantResult], batch: int = 8, min_gain: float = 1.10
) -> tuple[VariantResult | None, str]:
    """What to serve, and why, in words.

    Start from the most faithful passing variant; a less faithful one replaces it only when it
    is at least ``min_gain`` times faster at ``batch``. Without timings (none measured) the
    most faithful passing variant is served.
    """
    passing = [r for r in results if r.ok]
    if not passing:
        return None, "no variant passed its accuracy budget"
    best = passing[0]
    if batch not in best.items_per_s:
        return best, f"{best.variant.value}: the most faithful passing variant (not timed)"
    why = f"{best.variant.value}: the most faithful passing variant"
    for r in passing[1:]:
        speed, base = r.items_per_s.get(batch, 0.0), best.items_per_s[batch]
        if base and speed >= min_gain * base:
            why = (
                f"{r.variant.value}: {speed:.0f} items/s at batch {batch}, "
                f"{speed / base:.2f}x {best.variant.value} (>= {min_gain:.2f}x needed)"
            )
            best = r
    return best, why
