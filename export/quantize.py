"""Step: fp32 ONNX -> int8 ONNX, three ways (ONNX Runtime's quantization tools).

- ``int8`` (**static**, :func:`to_int8_static`): ``quantize_static`` in QDQ format with
  per-channel int8 weights and activation ranges calibrated once on real inputs
  (``ModelSpec.calibration``, else the user's ``--sample-data``, else generated inputs).
  Only weight-bearing ops are quantized (MatMul with a constant B, Gemm, Conv): embeddings
  (Gather), LayerNorm, Softmax and the attention score products stay fp32. The scales are
  constants, so an answer cannot depend on batch companions.
- ``int8_blockwise`` (:func:`to_int8_blockwise`): ``MatMulNBits`` with 8-bit weights in
  blocks of 64 along the reduction axis, and ``accuracy_level`` 4: ONNX Runtime quantizes the
  activations to int8 at run time **per row and block**, so each row's scale comes from that
  row alone (batch invariant) and is fine-grained (accurate).
- ``int8_dynamic`` (:func:`to_int8_dynamic`): ``quantize_dynamic``, per-channel weights. Its
  activation scale is computed over the whole batch tensor at run time, so an answer depends on
  what it is batched with: the batch-invariance check rejects it (kept to show that, and to
  compare speed).

Each function returns a :class:`StepResult` and writes ``<artefact>.report.json``; one that
finds nothing it can quantize reports SKIPPED (an unquantized copy is no int8 variant).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export import rows as R
from export.optimize import convert
from export.spec import EvalSet, ModelSpec
from export.status import Status, StepResult

CALIBRATION_ROWS = 128
CALIBRATION_BATCH = 16  # rows per calibration run when nothing is ragged
STATIC_OPS = ["MatMul", "Gemm", "Conv"]
BLOCK_SIZE = 64


@contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantizers log advice on the root logger for every model, and one of them
    (matmul_nbits_quantizer) calls ``logging.basicConfig(level=INFO)`` when imported: the root
    logger's level and handlers are put back as they were."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)


def _count(path: Path, op_type: str, *, on_weights: bool = False) -> int:
    """How many ``op_type`` nodes the model has (``on_weights``: reading an initializer)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return sum(
        n.op_type == op_type and (not on_weights or n.input[0] in weights) for n in graph.node
    )


def _skipped_when_nothing_quantized(result: StepResult, ops: tuple[str, ...]) -> StepResult:
    if result.ok and result.metrics.get("quantized_nodes") == 0:
        result.status = Status.SKIPPED
        result.reason = f"nothing to quantize: no {' / '.join(ops)} node was made"
        result.write_report()
    return result


def to_int8_static(source: Path, target: Path, spec: ModelSpec, calibration: EvalSet) -> StepResult:
    """QDQ int8, per-channel weights, activation ranges (MinMax) from ``calibration``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    rows = calibration.rows[:CALIBRATION_ROWS]
    ragged = spec.ragged_inputs

    class Reader(CalibrationDataReader):  # type: ignore[misc]  # ORT's class is untyped
        """Ragged rows one at a time (no padding in the ranges), others in small batches."""

        def __init__(self) -> None:
            size = 1 if ragged else CALIBRATION_BATCH
            self.feeds = iter([batch for _, batch in R.batches(rows, ragged, size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    def build() -> dict[str, Any]:
        prepared = target.with_name(target.stem + ".pre.onnx")
        try:
            with _quiet():
                # shape inference + basic graph optimisation, as ONNX Runtime advises; the
                # symbolic pass fails on the exported transformer, the ONNX one suffices
                quant_pre_process(source, prepared, skip_symbolic_shape=True)
                quantize_static(
                    prepared, target, Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    op_types_to_quantize=STATIC_OPS, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"MatMulConstBOnly": True},
                )  # fmt: skip
        finally:
            prepared.unlink(missing_ok=True)
        return {
            "precision": "int8",
            "quantization": "static QDQ: per-channel int8 weights, uint8 activations with "
            "calibrated (MinMax) ranges; MatMul with constant weights, Gemm, Conv",
            "calibration": calibration.description,
            "calibration_rows": len(rows),
            "calibration_fingerprint": calibration.fingerprint,
            "quantized_nodes": _count(target, "DequantizeLinear", on_weights=True),
        }

    return _skipped_when_nothing_quantized(convert("int8", target, build), tuple(STATIC_OPS))


def to_int8_blockwise(source: Path, target: Path, spec: ModelSpec) -> StepResult:
    """MatMulNBits: 8-bit weights in blocks of 64, int8 activations per row and block."""
    del spec  # one recipe for every model

    def build() -> dict[str, Any]:
        with _quiet():  # its import configures the root logger
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            quantizer = MatMulNBitsQuantizer(
                onnx.load(str(source)), bits=8, block_size=BLOCK_SIZE, is_symmetric=True,
                accuracy_level=4,
            )  # fmt: skip
            quantizer.process()
            quantizer.model.save_model_to_file(str(target), False)
        return {
            "precision": "int8",
            "quantization": f"MatMulNBits: symmetric 8-bit weights in blocks of {BLOCK_SIZE}, "
            "accuracy_level 4 (activations quantized to int8 per row and block at run time)",
            "quantized_nodes": _count(target, "MatMulNBits"),
        }

    return _skipped_when_nothing_quantized(convert("int8_blockwise", target, build), ("MatMul",))


def to_int8_dynamic(source: Path, target: Path, spec: ModelSpec) -> StepResult:
    """Dynamic int8, per-channel weight scales (activation scales from each batch)."""
    del spec

    def build() -> dict[str, Any]:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with _quiet():
            quantize_dynamic(source, target, per_channel=True, weight_type=QuantType.QInt8)
        return {
            "precision": "int8",
            "quantization": "dynamic: per-channel int8 weights, activation scale per batch",
            "quantized_nodes": _count(target, "MatMulInteger") + _count(target, "ConvInteger"),
        }

    return _skipped_when_nothing_quantized(convert("int8_dynamic", target, build), ("MatMul",))
