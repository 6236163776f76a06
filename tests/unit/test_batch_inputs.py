"""Batch scoring without servers: columns to tensors by Triton's metadata, refusals, retries."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from tritonclient.utils import InferenceServerException

from batch.errors import InputError, ModelError, TritonUnavailable
from batch.inputs import (
    Batch,
    Signature,
    TensorSpec,
    batches,
    bind_columns,
    ensemble_steps,
    prepare,
    signature_from,
)
from batch.manifest import Shard
from batch.output import dead_letter_lines, part_table
from batch.sender import Sender, classify, refused_row
from batch.settings import BatchSettings
from batch.shm import unlink_stale

TEXT = Signature("m_text", 32, (TensorSpec("text", "BYTES", (1,)),), ())
FEATURES = Signature("ranker", 32, (TensorSpec("features", "FP32", (3,)),),
                     (TensorSpec("score", "FP32", (1,)),))  # fmt: skip
TOKENS = Signature(
    "enc", 8,
    (TensorSpec("ids", "INT32", (-1,)), TensorSpec("flag", "BOOL", (1,))),
    (TensorSpec("vec", "FP32", (2,)),),
)  # fmt: skip


def test_signature_from_triton_metadata_and_config() -> None:
    metadata = {
        "name": "minilm_text",
        "versions": ["1", "10", "2"],
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}],
        "outputs": [{"name": "sentence_embedding", "datatype": "FP32", "shape": [-1, 384]}],
    }
    config = {"max_batch_size": 32, "ensemble_scheduling": {"step": [
        {"model_name": "minilm_tokenizer"}, {"model_name": "minilm"}]}}  # fmt: skip
    sig = signature_from(metadata, config)
    assert sig.inputs == (TensorSpec("text", "BYTES", (1,)),)
    assert sig.outputs[0].dims == (384,) and sig.versions == {"minilm_text": "10"}
    assert ensemble_steps(config) == ["minilm_tokenizer", "minilm"]
    with pytest.raises(ModelError, match="max_batch_size 0"):
        signature_from(metadata, {"max_batch_size": 0})


def test_columns_bind_by_name_by_single_input_or_explicitly() -> None:
    schema = pa.schema([("features", pa.list_(pa.float64())), ("sentence", pa.string())])
    assert bind_columns(FEATURES, schema, None) == {"features": "features"}
    assert bind_columns(TEXT, schema, ["sentence"]) == {"text": "sentence"}
    assert bind_columns(TEXT, schema, ["sentence=text"]) == {"text": "sentence"}
    with pytest.raises(InputError, match="no input 'nope'"):
        bind_columns(TEXT, schema, ["sentence=nope"])
    with pytest.raises(InputError, match=r"no column for input\(s\) \['text'\]"):
        bind_columns(TEXT, schema, None)
    with pytest.raises(InputError, match="takes a string column"):
        bind_columns(TEXT, schema, ["features"])
    with pytest.raises(InputError, match="takes a list column of numbers"):
        bind_columns(FEATURES, schema, ["sentence"])
    with pytest.raises(InputError, match="is not in the input"):
        bind_columns(TEXT, schema, ["missing"])


def test_text_rows_refused_before_sending_name_their_reason() -> None:
    table = pa.table({"t": pa.array([b"ok", None, b"", b"\xff\xfe", "é".encode()], pa.binary())})
    prepared = prepare(table, {"text": "t"}, TEXT)
    codes = {p: r.code for p, r in prepared.rejected.items()}
    assert codes == {1: "null", 2: "empty", 3: "not_utf8"}
    assert prepared.valid.tolist() == [0, 4]
    assert prepared.fixed["text"][4, 0] == "é".encode()
    assert "invalid start byte at byte 0" in prepared.rejected[3].reason


def test_numeric_lists_are_checked_and_cast_to_the_input_dtype() -> None:
    column = pa.array(
        [[0.5, 0.25, 12], [1, 2], None, [1, None, 3], [np.nan, 0, 0], [1e39, 0, 0], [1, 2, 3]],
        pa.list_(pa.float64()),
    )  # fmt: skip
    prepared = prepare(pa.table({"features": column}), {"features": "features"}, FEATURES)
    codes = {p: r.code for p, r in prepared.rejected.items()}
    assert codes == {1: "wrong_length", 2: "null", 3: "null", 4: "not_finite", 5: "not_finite"}
    assert "has 2 values; input 'features' takes 3" in prepared.rejected[1].reason
    x = prepared.fixed["features"]
    assert x.dtype == np.float32 and x.shape == (7, 3)
    np.testing.assert_array_equal(x[[0, 6]], [[0.5, 0.25, 12], [1, 2, 3]])


def test_integer_ranges_and_variable_lists_group_by_shape() -> None:
    ids = pa.array([[1, 2], [3], [2**40], [4, 5], [], [6, 7]], pa.list_(pa.int64()))
    flags = pa.array([True, False, True, True, False, None])
    prepared = prepare(pa.table({"ids": ids, "flag": flags}), {"ids": "ids", "flag": "flag"},
                       TOKENS)  # fmt: skip
    codes = {p: r.code for p, r in prepared.rejected.items()}
    assert codes == {2: "out_of_range", 4: "empty", 5: "null"}
    found = batches(prepared, batch_size=8)
    shapes = [(b.positions.tolist(), b.tensors["ids"].shape) for b in found]
    assert shapes == [([0, 3], (2, 2)), ([1], (1, 1))]
    assert found[0].tensors["ids"].dtype == np.int32
    assert found[0].tensors["flag"].tolist() == [[True], [True]]


def test_text_rows_go_to_requests_by_length() -> None:
    table = pa.table({"t": ["a" * 5, "a", None, "a" * 3, "a" * 2]})
    prepared = prepare(table, {"text": "t"}, TEXT)
    by_length = [b.positions.tolist() for b in batches(prepared, 2)]
    in_order = [b.positions.tolist() for b in batches(prepared, 2, by_length=False)]
    assert by_length == [[1, 4], [3, 0]] and in_order == [[0, 1], [3, 4]]
    assert batches(prepared, 2)[0].tensors["text"].tolist() == [[b"a"], [b"aa"]]


def test_fixed_shapes_batch_consecutive_rows() -> None:
    column = pa.array([[i, i, i] for i in range(10)], pa.list_(pa.float32(), 3))
    prepared = prepare(pa.table({"features": column}), {"features": "features"}, FEATURES)
    sizes = [len(b.positions) for b in batches(prepared, 4)]
    assert sizes == [4, 4, 2]


def _error(message: str, status: str) -> InferenceServerException:
    return InferenceServerException(message, status=status)


def test_errors_are_classified_by_what_can_fix_them() -> None:
    assert classify(_error("Exceeds maximum queue size", "StatusCode.UNAVAILABLE")) == "transient"
    assert classify(_error("failed to connect to all addresses", "StatusCode.UNAVAILABLE")) == (
        "transient"
    )
    assert classify(_error("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED")) == "transient"
    assert classify(_error("text[3] has 300 tokens", "StatusCode.INVALID_ARGUMENT")) == "refused"
    assert classify(_error("input 'features' holds NaN", "StatusCode.INTERNAL")) == "refused"
    assert classify(_error("Request for unknown model: 'x' is not found",
                           "StatusCode.NOT_FOUND")) == "fatal"  # fmt: skip
    assert refused_row("in ensemble 'm_text', text[3] has 300 tokens", 4) == 3
    assert refused_row("text[9] is empty", 4) is None


class FakeTriton(Sender):
    """A Sender whose 'Triton' refuses negative rows and fails ``transient`` times first."""

    def __init__(self, transient: int = 0, name_rows: bool = False, retries: int = 3) -> None:
        settings = BatchSettings(retries=retries, retry_backoff_s=0.001)
        super().__init__(None, FEATURES, settings)
        self.transient = transient
        self.name_rows = name_rows
        self.calls: list[int] = []

    async def _once(self, batch: Batch, slot: int) -> tuple[dict[str, np.ndarray], str]:
        self.calls.append(len(batch.positions))
        if self.transient:
            self.transient -= 1
            raise _error("Exceeds maximum queue size", "StatusCode.UNAVAILABLE")
        values = batch.tensors["features"][:, 0]
        bad = np.flatnonzero(values < 0)
        if len(bad):
            where = f"text[{bad[0]}] " if self.name_rows else ""
            raise _error(f"{where}holds a negative value", "StatusCode.INTERNAL")
        return {"score": values[:, None] * 2}, "3"


def _batch(values: Sequence[float]) -> Batch:
    x = np.asarray([[v, 0, 0] for v in values], dtype=np.float32)
    return Batch(np.arange(10, 10 + len(values)), {"features": x})


@pytest.mark.parametrize("name_rows", [False, True])
def test_refused_rows_are_isolated_and_the_rest_answered(name_rows: bool) -> None:
    sender = FakeTriton(name_rows=name_rows)
    values = [1, -1, 2, 3, -2, 4, 5, 6]
    outcome = asyncio.run(sender.send(_batch(values)))
    assert sorted(r.position for r in outcome.rejected) == [11, 14]
    order = np.argsort(outcome.positions)
    assert outcome.positions[order].tolist() == [10, 12, 13, 15, 16, 17]
    np.testing.assert_array_equal(outcome.outputs["score"][order, 0], [2, 4, 6, 8, 10, 12])
    assert outcome.version == "3"
    if name_rows:  # the message names the row: one resend per refused row, no bisection
        assert sender.calls == [8, 7, 6]


def test_transient_failures_are_retried_then_stop_the_run() -> None:
    sender = FakeTriton(transient=2)
    outcome = asyncio.run(sender.send(_batch([1, 2])))
    assert len(outcome.positions) == 2 and not outcome.rejected and sender.retried == 2
    with pytest.raises(TritonUnavailable, match="still failing after 2 attempts"):
        asyncio.run(FakeTriton(transient=5, retries=1).send(_batch([1])))


def test_parts_are_sorted_by_row_and_dead_letters_keep_the_input() -> None:
    shard = Shard(3, "in.parquet", (0,), 100, 4)
    rows = pa.table({"id": ["a", "b", "c", "d"], "t": pa.array([b"x", b"\xff", b"y", b"z"])})
    outputs: dict[str, Any] = {"vec": np.asarray([[3, 3], [0, 0], [2, 2]], np.float32)}
    table = part_table(shard, rows.select(["id"]), np.asarray([3, 0, 2]), outputs,
                       TOKENS.outputs, {})  # fmt: skip
    assert table.column("row_index").to_pylist() == [100, 102, 103]
    assert table.column("id").to_pylist() == ["a", "c", "d"]
    assert table.column("vec").to_pylist() == [[0, 0], [2, 2], [3, 3]]
    assert table.schema.field("vec").type == pa.list_(pa.float32(), 2)
    from batch.inputs import Rejected

    text = dead_letter_lines(shard, rows, ["id"], ["t"], [Rejected(1, "not_utf8", "not UTF-8")])
    (letter,) = [json.loads(line) for line in text.decode().splitlines()]
    assert letter == {
        "row_index": 101, "file": "in.parquet", "code": "not_utf8", "reason": "not UTF-8",
        "keys": {"id": "b"}, "input": {"t": {"base64": "/w=="}},
    }  # fmt: skip


def test_shared_memory_files_of_dead_batch_processes_are_removed(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead, alive = int(gone.stdout), os.getpid()
    names = [f"tsbatch-{dead}-abc123-0-in-1", f"tsbatch-{alive}-def456-0-in-1", "other-region"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert unlink_stale(str(tmp_path)) == [names[0]]
    assert sorted(os.listdir(tmp_path)) == sorted(names[1:])


def test_settings_bound_the_worker_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    monkeypatch.setenv("BATCH_WORKERS", "3")
    assert BatchSettings().worker_index == 2
    monkeypatch.setenv("BATCH_WORKERS", "2")
    with pytest.raises(ValueError, match="worker_index 2 is outside"):
        BatchSettings()
