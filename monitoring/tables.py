"""Capture records as Arrow tables: one row per item (a scored driver, an embedded text).

Columns: ``stream_id``, ``request_id``, ``item``, ``time`` (UTC, ms), ``tenant``, ``route``,
``latency_ms``, ``cache``, ``entity_id`` (null unless the request named entities), then one
column per tensor, ``in.<name>`` / ``out.<name>``: the item's value when it is one number or
string, else the item's values flattened into a list. Feedback rows: ``stream_id``,
``request_id``, ``item``, ``time``, ``tenant``, ``outcome``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from gateway.capture import CaptureRecord, FeedbackRecord

TIME = pa.timestamp("ms", tz="UTC")
BASE = ("stream_id", "request_id", "item", "time", "tenant", "route", "latency_ms", "cache")


def column_name(role: str, name: str) -> str:
    return f"{'in' if role == 'input' else 'out'}.{name}"


def date_of(time_unix: float) -> str:
    return datetime.fromtimestamp(time_unix, UTC).strftime("%Y-%m-%d")


def inference_table(entries: Sequence[tuple[str, CaptureRecord]]) -> pa.Table:
    """Rows of ``(stream id, record)`` pairs (one model and version, usually)."""
    base: dict[str, list[object]] = {name: [] for name in (*BASE, "entity_id")}
    tensors: dict[str, list[np.ndarray | list[str] | None]] = {}
    rows = 0
    for stream_id, record in entries:
        n = record.items
        stamp = int(record.time_unix * 1000)
        for key, value in (
            ("stream_id", stream_id), ("request_id", record.request_id), ("time", stamp),
            ("tenant", record.tenant), ("route", record.route),
            ("latency_ms", record.latency_ms), ("cache", record.cache),
        ):  # fmt: skip
            base[key].extend([value] * n)
        base["item"].extend(range(n))
        entities = record.entity_ids
        base["entity_id"].extend(entities if len(entities) == n else [None] * n)
        for tensor in record.tensors:
            column = tensors.setdefault(column_name(tensor.role, tensor.name), [None] * rows)
            if isinstance(tensor.array, np.ndarray):
                column.extend(tensor.array.reshape(n, -1) if n else [])
            else:
                column.extend([[s] for s in tensor.array])
        rows += n
        for column in tensors.values():
            column.extend([None] * (rows - len(column)))
    arrays: dict[str, pa.Array] = {
        "stream_id": pa.array(base["stream_id"], pa.string()),
        "request_id": pa.array(base["request_id"], pa.string()),
        "item": pa.array(base["item"], pa.int32()),
        "time": pa.array(base["time"], TIME),
        "tenant": pa.array(base["tenant"], pa.string()),
        "route": pa.array(base["route"], pa.string()),
        "latency_ms": pa.array(base["latency_ms"], pa.float32()),
        "cache": pa.array(base["cache"], pa.string()),
        "entity_id": pa.array(base["entity_id"], pa.int64()),
    }
    for name, values in sorted(tensors.items()):
        arrays[name] = _tensor_column(values)
    return pa.table(arrays)


def _tensor_column(values: list[np.ndarray | list[str] | None]) -> pa.Array:
    """Per-item values: one each -> a plain column, more -> a list column (nulls kept)."""
    present = [v for v in values if v is not None]
    if not present:
        return pa.nulls(len(values))
    strings = isinstance(present[0], list)
    if all(len(v) == 1 for v in present):
        flat = [None if v is None else v[0] for v in values]
        if strings:
            return pa.array(flat, pa.string())
        dtype = pa.from_numpy_dtype(np.asarray(present[0]).dtype)
        return pa.array([None if x is None else x.item() for x in flat], dtype)  # type: ignore[union-attr]
    lengths = np.array([0 if v is None else len(v) for v in values], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    mask = pa.array([v is None for v in values])
    if strings:
        flat_values = pa.array([s for v in present for s in v], pa.string())
    else:
        flat_values = pa.array(np.concatenate([np.asarray(v).ravel() for v in present]))
    return pa.ListArray.from_arrays(offsets, flat_values, mask=mask)


def feedback_table(entries: Sequence[tuple[str, FeedbackRecord]]) -> pa.Table:
    return pa.table(
        {
            "stream_id": pa.array([s for s, _ in entries], pa.string()),
            "request_id": pa.array([r.request_id for _, r in entries], pa.string()),
            "item": pa.array([r.item for _, r in entries], pa.int32()),
            "time": pa.array([int(r.time_unix * 1000) for _, r in entries], TIME),
            "tenant": pa.array([r.tenant for _, r in entries], pa.string()),
            "outcome": pa.array([r.outcome for _, r in entries], pa.float32()),
        }
    )
