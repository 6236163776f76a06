"""Feast's Redis online-store layout, read without importing feast (what the direct reader uses).

Feast 0.67 (``feast.infra.online_stores.redis``, ``entity_key_serialization_version`` 3):

* key   = ``serialize_entity_key(EntityKey(join_keys=[k], entity_values=[v]))`` + project,
  where v3 serialises one join key as ``<u32 n_keys> <u32 STRING=2> <u32 len> key``
  then ``<u32 INT64=4> <u32 8> <i64 value>``, all little-endian;
* hash field per feature = murmur3_32(``"<view>:<feature>"``) as 4 little-endian bytes,
  value = a serialised ``feast.types.Value`` protobuf (empty bytes: null);
* hash field ``_ts:<view>`` = a serialised ``google.protobuf.Timestamp``.

``tests/unit/test_features_redis_layout.py`` checks each piece against feast's own functions.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import UTC, datetime

import mmh3

_STRING, _INT64 = 2, 4


def entity_key_prefix(join_key: str) -> bytes:
    """The bytes before the entity value: one key, its name (v3 serialisation)."""
    name = join_key.encode("utf8")
    return struct.pack("<III", 1, _STRING, len(name)) + name + struct.pack("<II", _INT64, 8)


def redis_key(prefix: bytes, entity_id: int, project: bytes) -> bytes:
    return prefix + struct.pack("<q", entity_id) + project


def feature_field(view: str, feature: str) -> bytes:
    return mmh3.hash(f"{view}:{feature}", signed=False).to_bytes(4, "little")


def timestamp_field(view: str) -> bytes:
    return f"_ts:{view}".encode()


def hash_fields(view: str, features: Sequence[str]) -> list[bytes]:
    """HMGET fields: one per feature, in order, then the view's timestamp."""
    return [feature_field(view, f) for f in features] + [timestamp_field(view)]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_value(raw: bytes | None) -> float | int | None:
    """A serialised scalar ``feast.types.Value`` -> Python value (None: null or absent).

    Scalar fields: int32_val=3, int64_val=4 (varint), double_val=5 (fixed64),
    float_val=6 (fixed32), bool_val=7, unix_timestamp_val=8 (varint), null_val=19.
    """
    if not raw:
        return None
    tag, pos = _varint(raw, 0)
    field, wire = tag >> 3, tag & 7
    if field == 6 and wire == 5:
        return float(struct.unpack_from("<f", raw, pos)[0])
    if field == 5 and wire == 1:
        return float(struct.unpack_from("<d", raw, pos)[0])
    if field in (3, 4, 8) and wire == 0:
        value, _ = _varint(raw, pos)
        value = _signed64(value)
        return value - (1 << 32) if field == 3 and value >= 1 << 31 else value
    if field == 7 and wire == 0:
        return int(_varint(raw, pos)[0] != 0)
    if field == 19:
        return None
    raise ValueError(f"unsupported feast Value field {field} (wire type {wire}): not a scalar")


def decode_timestamp(raw: bytes | None) -> datetime | None:
    """A serialised ``google.protobuf.Timestamp`` (seconds=1, nanos=2) -> aware UTC datetime."""
    if not raw:
        return None
    seconds = nanos = 0
    pos = 0
    while pos < len(raw):
        tag, pos = _varint(raw, pos)
        value, pos = _varint(raw, pos)
        if tag == 0x08:
            seconds = _signed64(value)
        elif tag == 0x10:
            nanos = value
    if seconds == 0 and nanos == 0:
        return None
    return datetime.fromtimestamp(seconds + nanos / 1e9, tz=UTC)
