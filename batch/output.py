"""A finished shard's files: its Parquet part (row keys + model outputs) and its dead letters.

The part holds one row per answered input row, sorted by ``row_index`` (the row's position in
the whole dataset, stable across resumes): ``row_index``, the key columns, the model outputs
(``[n, 1]`` as a scalar column, ``[n, d]`` as ``fixed_size_list<d>``, more dims flattened with
the shape in the field's metadata) and any extra columns of the row source (the features a
feature-backed run used).

A dead letter is one JSON line: ``row_index``, ``file``, ``code``, ``reason``, the row's keys
and the input values it had (bytes that are not UTF-8 as ``{"base64": ...}``), enough to see
what was wrong and to feed the row again once fixed.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batch.inputs import Rejected, TensorSpec
from batch.manifest import Shard

ROW_INDEX = "row_index"


def output_array(values: np.ndarray, spec: TensorSpec) -> tuple[pa.Array, dict[bytes, bytes]]:
    """One output tensor ``[n, *dims]`` as an Arrow column (and field metadata)."""
    rows = values.shape[0]
    if values.dtype == np.object_:
        flat = [bytes(v) for v in values.reshape(rows, -1)[:, 0]]
        return pa.array(flat, type=pa.binary()), {}
    per_row = int(np.prod(values.shape[1:])) if values.ndim > 1 else 1
    if per_row == 1:
        return pa.array(values.reshape(rows)), {}
    flat_values = pa.array(np.ascontiguousarray(values).reshape(-1))
    column = pa.FixedSizeListArray.from_arrays(flat_values, per_row)
    metadata = {}
    if values.ndim > 2:
        metadata = {b"shape": json.dumps(list(values.shape[1:])).encode()}
    return column, metadata


def part_table(
    shard: Shard,
    keys: pa.Table,
    positions: np.ndarray,
    outputs: Mapping[str, np.ndarray],
    specs: Sequence[TensorSpec],
    extra: Mapping[str, pa.Array],
) -> pa.Table:
    """The part of ``shard``: answered ``positions`` (any order) with their outputs, sorted."""
    order = np.argsort(positions, kind="stable")
    taken = positions[order]
    index = pa.array(taken)
    fields = [pa.field(ROW_INDEX, pa.int64())]
    columns: list[pa.Array | pa.ChunkedArray] = [pa.array(shard.first_row + taken, pa.int64())]
    for name in keys.column_names:
        fields.append(keys.schema.field(name))
        columns.append(keys.column(name).take(index))
    for spec in specs:
        array, metadata = output_array(outputs[spec.name][order], spec)
        fields.append(pa.field(spec.name, array.type, metadata=metadata or None))
        columns.append(array)
    for name, array in extra.items():
        fields.append(pa.field(name, array.type))
        columns.append(array.take(index))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def dead_letter_lines(
    shard: Shard,
    rows: pa.Table,
    keys: Sequence[str],
    inputs: Sequence[str],
    rejected: Sequence[Rejected],
) -> bytes:
    """JSON lines of the refused rows, by row order (``rows``: the shard's columns as read;
    ``inputs``: the columns that fed the model)."""
    lines = []
    for item in sorted(rejected, key=lambda r: r.position):
        row = rows.slice(item.position, 1).to_pylist()[0]
        record = {
            ROW_INDEX: shard.first_row + item.position,
            "file": shard.file,
            "code": item.code,
            "reason": item.reason,
            "keys": {k: _jsonable(row[k]) for k in keys},
            "input": {k: _jsonable(row[k]) for k in inputs},
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode() if lines else b""
