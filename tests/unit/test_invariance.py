"""The batch-invariance check on tiny ONNX models built here: fp32 passes with its figure,
a dynamically quantized model is rejected with its figure, and a ragged model that ignores its
attention mask is rejected by the padded context (what Triton's ragged batching does to it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export import rows as R
from export.invariance import TOLERANCE, check_invariance
from export.quantize import to_int8_dynamic
from export.spec import ModelSpec, TensorSpec
from export.status import Status

OPSET = [helper.make_opsetid("", 17)]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _linear(path: Path) -> Path:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
        [weight, bias],
    )
    return _save(graph, path)


def _pooling(path: Path, *, masked: bool) -> Path:
    """Token embeddings averaged over the sequence: over real tokens only, or over all."""
    table = np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["emb"])]
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([1]), "ax")]
    if masked:
        nodes += [
            helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["m", "two"], ["m3"]),
            helper.make_node("Mul", ["emb", "m3"], ["kept"]),
            helper.make_node("ReduceSum", ["kept", "ax"], ["total"], keepdims=0),
            helper.make_node("ReduceSum", ["m", "ax"], ["count"], keepdims=1),
            helper.make_node("Div", ["total", "count"], ["y"]),
        ]
        inits.append(numpy_helper.from_array(np.array([2]), "two"))
    else:  # the mask is an input but unused: padding counts as tokens
        nodes += [
            helper.make_node("ReduceMean", ["emb"], ["y"], axes=[1], keepdims=0),
            helper.make_node("Identity", ["attention_mask"], ["unused"]),
        ]
    graph = helper.make_graph(
        nodes,
        "pooling",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["n", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["n", "seq"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        inits,
    )
    return _save(graph, path)


def _spec(inputs: list[TensorSpec], *, ragged: bool, width: int) -> ModelSpec:
    return ModelSpec(
        name="tiny", module=torch.nn.Identity(), inputs=inputs,
        outputs=[TensorSpec("y", "float32", (width,))], sample_inputs=lambda *_: {},
        ragged=ragged, max_length=40,
    )  # fmt: skip


LINEAR = _spec([TensorSpec("x", "float32", (16,))], ragged=False, width=32)
POOLING = _spec(
    [TensorSpec("input_ids", "int64", (-1,)), TensorSpec("attention_mask", "int64", (-1,))],
    ragged=True,
    width=8,
)


@pytest.fixture(scope="module")
def dense_rows() -> tuple[list, list]:
    """Probes of ordinary magnitude; companions 100x larger (another caller's inputs)."""
    rng = np.random.default_rng(2)
    probes = [{"x": rng.standard_normal((1, 16)).astype(np.float32)} for _ in range(4)]
    companions = [{"x": 100 * rng.standard_normal((1, 16)).astype(np.float32)} for _ in range(12)]
    return probes, companions


def _token_rows(count: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(count):
        n = int(rng.integers(3, 12))
        ids = rng.integers(1, 50, size=(1, n), dtype=np.int64)
        found.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    return found


def test_fp32_is_batch_invariant_with_its_figure(tmp_path: Path, dense_rows) -> None:
    probes, companions = dense_rows
    result = check_invariance(LINEAR, _linear(tmp_path / "linear.onnx"), probes, companions)
    assert result.status is Status.OK, result.reason
    assert result.metrics["max_rel_l2"] <= 1e-6 < TOLERANCE
    assert result.metrics["tolerance"] == TOLERANCE
    assert result.metrics["contexts"] == len(probes) * 3  # three companion draws, no padding


def test_dynamic_int8_is_rejected_with_its_figure(tmp_path: Path, dense_rows) -> None:
    """Its activation scale is the batch's: loud companions coarsen a quiet probe's answer."""
    fp32 = _linear(tmp_path / "linear.onnx")
    made = to_int8_dynamic(fp32, tmp_path / "linear.int8_dynamic.onnx", LINEAR)
    assert made.ok and made.metrics["quantized_nodes"] == 1
    probes, companions = dense_rows
    assert made.artefact is not None
    result = check_invariance(LINEAR, made.artefact, probes, companions)
    assert result.status is Status.FAILED
    moved = result.metrics["max_rel_l2"]
    assert moved > 100 * TOLERANCE
    assert f"moves by {moved:.2e}" in result.reason
    assert "in a batch of 8" in result.reason and "tolerance 1e-05" in result.reason
    assert result.metrics["passed"] is False


def test_masked_pooling_is_invariant_to_padding_and_companions(tmp_path: Path) -> None:
    path = _pooling(tmp_path / "masked.onnx", masked=True)
    result = check_invariance(POOLING, path, _token_rows(3, 3), _token_rows(10, 4))
    assert result.status is Status.OK, result.reason
    # per probe three companion draws and a few tokens of padding; two probes also padded to
    # the max length
    assert result.metrics["contexts"] == 3 * 4 + 2


def test_a_model_that_counts_padding_is_rejected_by_the_padded_context(tmp_path: Path) -> None:
    path = _pooling(tmp_path / "unmasked.onnx", masked=False)
    probes = _token_rows(3, 3)
    result = check_invariance(POOLING, path, probes, [])  # no companions: padding alone
    assert result.status is Status.FAILED
    assert "padded from" in result.reason and "(mask 0)" in result.reason
    assert result.metrics["max_rel_l2"] > TOLERANCE


def test_rows_are_padded_as_the_python_backend_pads_them() -> None:
    rows = _token_rows(3, 5)
    batch = R.stack(rows, ("input_ids", "attention_mask"), pad_to=20)
    assert batch["input_ids"].shape == (3, 20)
    for i, row in enumerate(rows):
        n = row["input_ids"].shape[1]
        assert (batch["input_ids"][i, :n] == row["input_ids"][0]).all()
        assert (batch["input_ids"][i, n:] == 0).all() and batch["attention_mask"][i].sum() == n
    again = R.split(batch, ("input_ids", "attention_mask"))
    assert [r["input_ids"].shape[1] for r in again] == [r["input_ids"].shape[1] for r in rows]
