"""Variants of an exported ONNX model, each checked before it may be served.

- ``fp32``: the torch->ONNX export itself.
- ``optimized``: ONNX Runtime graph optimization (transformer fusion where the spec says so).
- ``fp16``: half precision with fp32 at the edges.
- ``int8_blockwise``: 8-bit weights in blocks, activations quantized per row (``MatMulNBits``).
- ``int8``: static QDQ int8, activation ranges calibrated on real inputs.
- ``int8_dynamic``: ONNX Runtime dynamic int8 (activation scale per batch: never batch
  invariant, so never served; made only when asked for, to compare).

Every variant goes through the same three checks (``export/checks.py``): parity with PyTorch
in its budget (fp32 and optimized: max relative L2 error, default 1e-4; fp16 and int8: the
task's metric: cosine for embeddings, top-1 agreement for classifiers, relative L2 for
regressors), batch invariance at fp32 level, and the task's own metrics against fp32 on real
inputs. A variant that fails any of them is FAILED with the figure, and never served.

:func:`measure_side_by_side` times the passing variants in-process (ONNX Runtime, no server),
interleaved so that load on a shared machine hits them all alike, and :func:`choose` picks
what to serve: the fastest, except that a less faithful variant must be at least ``min_gain``
faster than the most faithful passing one to displace it (so a 2% timing noise never trades
fp32 for fp16, and a re-export does not flip-flop between versions).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export import checks, optimize, quantize
from export.invariance import TOLERANCE
from export.spec import ModelSpec, Task
from export.status import Status, StepResult
from export.task_metrics import TaskBudgets
from export.verify import FP32_BUDGET, Budget, Metric, session


class Variant(enum.StrEnum):
    # in order of fidelity to the PyTorch fp32 reference
    FP32 = "fp32"
    OPTIMIZED = "optimized"
    FP16 = "fp16"
    INT8_BLOCKWISE = "int8_blockwise"
    INT8 = "int8"
    INT8_DYNAMIC = "int8_dynamic"

    @property
    def reduced(self) -> bool:
        """Held to a budget in the task's metric (not fp32's relative L2 error)."""
        return self not in (Variant.FP32, Variant.OPTIMIZED)


ALL = tuple(Variant)
INT8_FAMILY = (Variant.INT8_BLOCKWISE, Variant.INT8, Variant.INT8_DYNAMIC)
# What an export tries unless told otherwise. On CPU fp16 only costs (measured: 0.84x fp32
# at batch 8, ONNX Runtime CPU has few fp16 kernels); int8 has no fast GPU kernels in
# ONNX Runtime's CUDA provider, and fp16 is what GPUs are built for. int8_dynamic is never
# a default: it cannot pass the batch-invariance check.
DEFAULTS = {
    "cpu": (Variant.FP32, Variant.OPTIMIZED, Variant.INT8_BLOCKWISE, Variant.INT8),
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
DEFAULT_THRESHOLDS = {  # (fp16, every int8 variant)
    Metric.COSINE: (0.999, 0.97),
    Metric.TOP1: (0.99, 0.95),
    Metric.REL_L2: (1e-2, 5e-2),
}


@dataclass(frozen=True)
class Budgets:
    """Everything a variant is held to.

    ``rel_l2``: fp32 and optimized against PyTorch; ``fp16``/``int8``: thresholds in the task's
    parity metric (None: that metric's default); ``invariance``: how far an answer may move with
    its batch companions or padding; ``task``: the task's own metrics against fp32.
    """

    rel_l2: float = FP32_BUDGET
    fp16: float | None = None
    int8: float | None = None
    invariance: float = TOLERANCE
    task: TaskBudgets = field(default_factory=TaskBudgets)

    def of(self, variant: Variant, task: Task) -> Budget:
        if not variant.reduced:
            return Budget(Metric.REL_L2, self.rel_l2)
        metric = TASK_METRIC[task]
        fp16, int8 = DEFAULT_THRESHOLDS[metric]
        if variant is Variant.FP16:
            return Budget(metric, fp16 if self.fp16 is None else self.fp16)
        return Budget(metric, int8 if self.int8 is None else self.int8)

    def as_dict(self, task: Task) -> dict[str, Any]:
        return {
            "parity": {
                v.value: {"metric": (b := self.of(v, task)).metric.value, "threshold": b.threshold}
                for v in Variant
            },
            "invariance_max_rel_l2": self.invariance,
            "task": self.task.as_dict(),
        }


@dataclass
class VariantResult:
    variant: Variant
    path: Path | None
    make: StepResult
    verify: StepResult | None = None  # parity with PyTorch
    invariance: StepResult | None = None  # batch invariance
    task: StepResult | None = None  # the task's own metrics against fp32
    items_per_s: dict[int, float] = field(default_factory=dict)

    @property
    def checks(self) -> list[StepResult]:
        return [c for c in (self.verify, self.invariance, self.task) if c is not None]

    @property
    def ok(self) -> bool:
        """Made, within its parity budget, and no other check FAILED."""
        return (
            self.make.ok
            and self.verify is not None
            and all(c.status is not Status.FAILED for c in self.checks)
        )

    @property
    def failed(self) -> StepResult:
        """The first step that kept it from being served (``make`` when it was not made)."""
        return next((c for c in self.checks if c.status is Status.FAILED), self.make)

    def as_dict(self) -> dict[str, Any]:
        verify = self.verify.metrics if self.verify else {}
        invariance = self.invariance.metrics if self.invariance else {}
        task = self.task.metrics if self.task else {}
        return {
            "variant": self.variant.value,
            "status": "OK" if self.ok else self.failed.status.value,
            "reason": ""
            if self.ok
            else "; ".join(
                c.reason for c in [self.make, *self.checks] if c.status is not Status.OK
            ),
            "artefact": str(self.path) if self.path else None,
            "accuracy": {
                k: verify.get(k)
                for k in ("metric", "budget", "value", "max_rel_l2", "min_cosine", "top1_agreement")
            },
            "invariance": {
                k: invariance.get(k) for k in ("max_rel_l2", "max_abs", "tolerance", "passed")
            },
            "task": {
                k: v for k, v in task.items() if k not in ("evaluation", "fingerprint", "against")
            },
            "items_per_s": self.items_per_s,
        }


def make_variant(
    variant: Variant,
    fp32_path: Path,
    out_dir: Path,
    spec: ModelSpec,
    evidence: checks.Evidence | None = None,
) -> StepResult:
    """Write ``out_dir/model.<variant>.onnx`` from the fp32 export (fp32: the export itself).

    Static int8 calibrates on ``evidence.calibration`` (a fresh :class:`checks.Evidence` with
    seed 0 when none is given).
    """
    target = out_dir / f"model.{variant.value}.onnx"
    match variant:
        case Variant.FP32:
            return StepResult("fp32", Status.OK, artefact=fp32_path)
        case Variant.OPTIMIZED:
            return optimize.optimize_onnx(fp32_path, target, spec)
        case Variant.FP16:
            return optimize.to_fp16(fp32_path, target, spec)
        case Variant.INT8_BLOCKWISE:
            return quantize.to_int8_blockwise(fp32_path, target, spec)
        case Variant.INT8:
            calibration = (evidence or checks.Evidence(spec, seed=0)).calibration
            return quantize.to_int8_static(fp32_path, target, spec, calibration)
        case Variant.INT8_DYNAMIC:
            return quantize.to_int8_dynamic(fp32_path, target, spec)


def check_variant(
    result: VariantResult,
    spec: ModelSpec,
    budgets: Budgets,
    evidence: checks.Evidence,
    *,
    task: bool = True,
) -> VariantResult:
    """Parity, batch invariance and (``task``) the task metrics; every check runs, so the
    report shows all of a rejected variant's figures."""
    if not result.make.ok or result.path is None:
        return result
    name, path = result.variant.value, result.path
    result.verify = checks.parity(name, path, spec, budgets.of(result.variant, spec.task), evidence)
    result.invariance = checks.invariance(name, path, spec, budgets.invariance, evidence)
    if task:
        result.task = checks.task(name, path, spec, budgets.task, evidence)
    return result


def make_and_check(
    spec: ModelSpec,
    fp32_path: Path,
    out_dir: Path,
    variants: tuple[Variant, ...],
    budgets: Budgets,
    evidence: checks.Evidence,
) -> list[VariantResult]:
    """Each variant made and checked, fp32 first; when fp32 fails nothing else is tried.

    The task metrics compare with fp32, so they run only when another variant is made.
    """
    wanted = [v for v in Variant if v in set(variants) | {Variant.FP32}]
    task = len(wanted) > 1
    results = []
    for variant in wanted:
        made = make_variant(variant, fp32_path, out_dir, spec, evidence)
        result = check_variant(
            VariantResult(variant, made.artefact, made), spec, budgets, evidence, task=task
        )
        results.append(result)
        if variant is Variant.FP32 and not result.ok:
            break  # the export itself is wrong: no variant of it can be right
    return results


def measure_side_by_side(
    paths: dict[str, Path], spec: ModelSpec, batches: tuple[int, ...] = (1, 8, 32), *,
    length: int = 32, seconds: float = 1.0, threads: int = 0, rounds: int = 3,
) -> dict[str, dict[int, float]]:  # fmt: skip
    """Items/s of several models, interleaved: ``rounds`` turns each, median per batch size.

    On a shared machine load comes and goes; taking turns makes it hit every model alike.
    """
    runners = {name: session(path, threads) for name, path in paths.items()}
    names = [t.name for t in spec.outputs]
    rng = np.random.default_rng(0)
    found: dict[str, dict[int, float]] = {name: {} for name in paths}
    for batch in batches:
        inputs = spec.sample_inputs(rng, batch, length)
        rates: dict[str, list[float]] = {name: [] for name in paths}
        for runner in runners.values():
            runner.run(names, inputs)  # warm-up
        for _ in range(rounds):
            for name, runner in runners.items():
                done, started = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - started) < seconds / rounds or done == 0:
                    runner.run(names, inputs)
                    done += batch
                rates[name].append(done / elapsed)
        for name in paths:
            found[name][batch] = round(float(np.median(rates[name])), 1)
    return found


def build_variants(
    spec: ModelSpec,
    fp32_path: Path,
    out_dir: Path,
    variants: tuple[Variant, ...] = ALL,
    budgets: Budgets | None = None,
    *,
    seed: int = 0,
    sample_data: dict[str, np.ndarray] | None = None,
    measure_s: float = 1.0,
    batches: tuple[int, ...] = (1, 8, 32),
    time_rejected: bool = False,
    threads: int = 0,
) -> list[VariantResult]:
    """Make, check and (``measure_s`` > 0) time each variant side by side: those that passed,
    and with ``time_rejected`` the rejected ones too (to show what they would have gained)."""
    budgets = budgets or Budgets()
    evidence = checks.Evidence(spec, seed=seed, sample_data=sample_data)
    results = make_and_check(spec, fp32_path, out_dir, variants, budgets, evidence)
    timed = [r for r in results if r.path is not None and (r.ok or (time_rejected and r.make.ok))]
    if timed and measure_s > 0:
        speeds = measure_side_by_side(
            {r.variant.value: r.path for r in timed if r.path}, spec, batches,
            seconds=measure_s, threads=threads,
        )  # fmt: skip
        for r in timed:
            r.items_per_s = speeds[r.variant.value]
    return results


def fastest(results: list[VariantResult], batch: int = 8) -> VariantResult | None:
    """The passing variant with the best throughput at ``batch`` (None when none passed)."""
    passing = [r for r in results if r.ok and batch in r.items_per_s]
    return max(passing, key=lambda r: r.items_per_s[batch], default=None)


def choose(
    results: list[VariantResult], batch: int = 8, min_gain: float = 1.10
) -> tuple[VariantResult | None, str]:
    """What to serve, and why, in words.

    Only variants that passed every check compete (parity, batch invariance, task metrics).
    Start from the most faithful; a less faithful one replaces it only when it is at least
    ``min_gain`` times faster at ``batch``. Without timings the most faithful is served.
    """
    passing = [r for r in results if r.ok]
    if not passing:
        return None, "no variant passed its checks"
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
