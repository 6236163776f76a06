"""Precision and graph variants of an exported ONNX model, each checked against its budget.

- ``optimized``: ONNX Runtime's transformer optimizer (attention fusion on BERT-like models);
  judged like fp32 (max relative L2 error, default 1e-4).
- ``fp16``: weights and activations in half precision, fp32 at the edges (``keep_io_types``);
  judged by the worst per-sample cosine similarity (default ≥ 0.999).
- ``int8``: dynamic quantization, **per channel** (per tensor lost too much on MiniLM: min
  cosine 0.82, see PLATFORM.md); judged by cosine (default ≥ 0.97).

A variant outside its budget is FAILED with how much it missed by, and never offered for
serving. :func:`measure` times each passing variant in-process and :func:`fastest` picks
what to serve. Variants other than fp32 are judged against the PyTorch fp32 reference on
fresh inputs, not against the fp32 ONNX file.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from export.spec import ModelSpec
from export.status import Status, StepResult
from export.verify import FP32_BUDGET, ParityCase, verify_parity


class Variant(enum.StrEnum):
    FP32 = "fp32"
    OPTIMIZED = "optimized"
    FP16 = "fp16"
    INT8 = "int8"


@dataclass(frozen=True)
class Budgets:
    rel_l2: float = FP32_BUDGET  # fp32 and optimized
    fp16_min_cosine: float = 0.999
    int8_min_cosine: float = 0.97


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


def make_variant(
    variant: Variant,
    fp32_path: Path,
    out_dir: Path,
    spec: ModelSpec,
    attention: tuple[int, int] = (0, 0),
) -> StepResult:
    """Write ``out_dir/model.<variant>.onnx`` from the fp32 export.

    ``attention`` = (heads, hidden size) lets the optimizer fuse attention; (0, 0) asks it to
    read them from the graph, which fails on some exports (then nothing is fused).
    """
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"model.{variant.value}.onnx"
    step = f"make_{variant.value}"
    try:
        if variant is Variant.FP32:
            return StepResult(step, Status.OK, artefact=fp32_path)
        if variant is Variant.INT8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(fp32_path, target, per_channel=True, weight_type=QuantType.QInt8)
        else:
            from onnxruntime.transformers.optimizer import optimize_model

            heads, hidden = attention
            optimized = optimize_model(
                str(fp32_path), model_type="bert", num_heads=heads, hidden_size=hidden
            )
            if variant is Variant.FP16:
                optimized.convert_float_to_float16(keep_io_types=True)
            optimized.save_model_to_file(str(target))
        onnx.checker.check_model(str(target))
    except Exception as exc:  # each converter raises its own kinds
        return StepResult(step, Status.FAILED, f"{type(exc).__name__}: {exc}")
    return StepResult(step, Status.OK, artefact=target, duration_s=time.perf_counter() - started)


def check_variant(
    variant: Variant,
    path: Path,
    spec: ModelSpec,
    budgets: Budgets,
    *,
    seed: int | None = None,
    cases: list[ParityCase] | None = None,
) -> StepResult:
    """The variant against PyTorch fp32 under its own budget (FAILED says by how much)."""
    if variant in (Variant.FP32, Variant.OPTIMIZED):
        return verify_parity(spec, path, budget=budgets.rel_l2, seed=seed, cases=cases)
    threshold = budgets.fp16_min_cosine if variant is Variant.FP16 else budgets.int8_min_cosine
    return verify_parity(spec, path, seed=seed, cases=cases, min_cosine=threshold)


def measure(
    path: Path, spec: ModelSpec, batches: tuple[int, ...] = (1, 8, 32), *, length: int = 32,
    seconds: float = 1.0, threads: int = 0,
) -> dict[int, float]:  # fmt: skip
    """In-process items/s per batch size (ONNX Runtime CPU, no server)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    names = [t.name for t in spec.outputs]
    results = {}
    for batch in batches:
        inputs = spec.sample_inputs(rng, batch, length)
        session.run(names, inputs)  # warm-up
        done, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds or done == 0:
            session.run(names, inputs)
            done += batch
        results[batch] = round(done / elapsed, 1)
    return results


def build_variants(
    spec: ModelSpec,
    fp32_path: Path,
    out_dir: Path,
    variants: tuple[Variant, ...] = tuple(Variant),
    budgets: Budgets | None = None,
    *,
    seed: int | None = None,
    measure_s: float = 1.0,
    batches: tuple[int, ...] = (1, 8, 32),
    attention: tuple[int, int] = (0, 0),
) -> list[VariantResult]:
    """Make, check and (when within budget) time each variant."""
    budgets = budgets or Budgets()
    results = []
    for variant in variants:
        made = make_variant(variant, fp32_path, out_dir, spec, attention)
        result = VariantResult(variant, made.artefact, made)
        if made.ok and made.artefact is not None:
            result.verify = check_variant(variant, made.artefact, spec, budgets, seed=seed)
            if result.verify.ok and measure_s > 0:
                result.items_per_s = measure(made.artefact, spec, batches, seconds=measure_s)
        results.append(result)
    return results


def fastest(results: list[VariantResult], batch: int = 8) -> VariantResult | None:
    """The passing variant with the best throughput at ``batch`` (None when none passed)."""
    passing = [r for r in results if r.ok and batch in r.items_per_s]
    return max(passing, key=lambda r: r.items_per_s[batch], default=None)
