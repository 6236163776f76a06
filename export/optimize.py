"""Step: ONNX -> optimized ONNX (ONNX Runtime graph optimization, transformer fusion where it
applies), and half precision (fp16). The int8 conversions are in ``export/quantize.py``.

- Models whose spec names an optimizer family (``spec.optimizer``, e.g. BERT with its head
  count and hidden size) go through ``onnxruntime.transformers.optimizer``: attention,
  layer-norm and GELU fusion. The head count and hidden size are given, because reading them
  from the graph fails on some exports (then nothing is fused).
- Other models get ONNX Runtime's own offline graph optimization (constant folding, node
  fusions; level ``extended``, which stays portable across CPU execution providers).
- fp16: half-precision weights and activations with fp32 at the edges (``keep_io_types``), so
  the served signature does not change.

Each function returns a :class:`StepResult` and writes it as ``<artefact>.report.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from export.spec import ModelSpec
from export.status import Status, StepResult


def convert(step: str, target: Path, build: Callable[[], dict[str, Any]]) -> StepResult:
    """Run ``build`` (it writes ``target``), check the ONNX it wrote, report beside it."""
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        metrics = build()
        onnx.checker.check_model(str(target))
    except Exception as exc:  # each converter raises its own kinds: the step reports them
        result = StepResult(
            step, Status.FAILED, f"{type(exc).__name__}: {exc}",
            duration_s=time.perf_counter() - started,
        )  # fmt: skip
        result.write_report(target.with_name(target.name + ".report.json"))
        return result
    metrics["bytes"] = target.stat().st_size
    result = StepResult(
        step, Status.OK, artefact=target, metrics=metrics, duration_s=time.perf_counter() - started
    )
    result.write_report()
    return result


def _transformer(source: Path, spec: ModelSpec) -> Any:  # ORT's OnnxModel (untyped)
    from onnxruntime.transformers.optimizer import optimize_model

    hints = spec.optimizer
    return optimize_model(
        str(source),
        model_type=str(hints.get("model_type", "bert")),
        num_heads=int(hints.get("num_heads", 0)),
        hidden_size=int(hints.get("hidden_size", 0)),
    )


def _fused(model: Any) -> dict[str, int]:
    return {k: int(v) for k, v in (model.get_fused_operator_statistics() or {}).items() if v}


def optimize_onnx(source: Path, target: Path, spec: ModelSpec) -> StepResult:
    """Write an optimized copy of ``source`` to ``target``."""

    def build() -> dict[str, Any]:
        if spec.optimizer:
            model = _transformer(source, spec)
            model.save_model_to_file(str(target))
            return {"optimizer": "onnxruntime.transformers", "fused": _fused(model)}
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(target)
        options.log_severity_level = 3
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        before = len(onnx.load(str(source)).graph.node)
        after = len(onnx.load(str(target)).graph.node)
        return {"optimizer": "onnxruntime graph optimization (extended)", "nodes": [before, after]}

    return convert("optimize", target, build)


def to_fp16(source: Path, target: Path, spec: ModelSpec) -> StepResult:
    """Half precision inside, fp32 inputs and outputs."""

    def build() -> dict[str, Any]:
        if spec.optimizer:
            model = _transformer(source, spec)
            model.convert_float_to_float16(keep_io_types=True)
            model.save_model_to_file(str(target))
        else:
            from onnxruntime.transformers.float16 import convert_float_to_float16
            from onnxruntime.transformers.onnx_model import OnnxModel

            # the converter appends the input casts at the end of the graph: sort it again
            model = OnnxModel(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True))
            model.topological_sort()
            model.save_model_to_file(str(target))
        return {"precision": "fp16", "keep_io_types": True}

    return convert("fp16", target, build)
