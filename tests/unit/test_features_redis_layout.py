"""features.redis_layout reproduces Feast 0.67's own Redis keys, fields and value encoding."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Null, Value
from google.protobuf.timestamp_pb2 import Timestamp

from features import redis_layout
from features.schema import ENTITY_KEY, FEATURE_VIEW, MODEL_FEATURES


@pytest.mark.parametrize("entity_id", [0, 1001, -7, 2**62])
def test_key_is_feasts(entity_id: int) -> None:
    key = EntityKey(join_keys=[ENTITY_KEY], entity_values=[Value(int64_val=entity_id)])
    want = _redis_key("tritonstack", key, entity_key_serialization_version=3)
    prefix = redis_layout.entity_key_prefix(ENTITY_KEY)
    assert redis_layout.redis_key(prefix, entity_id, b"tritonstack") == want


def test_fields_are_feasts() -> None:
    fields = redis_layout.hash_fields(FEATURE_VIEW, MODEL_FEATURES)
    assert fields[:-1] == [_mmh3(f"{FEATURE_VIEW}:{f}") for f in MODEL_FEATURES]
    assert fields[-1] == f"_ts:{FEATURE_VIEW}".encode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Value(float_val=0.1), float(Value(float_val=0.1).float_val)),
        (Value(double_val=-2.5e-8), -2.5e-8),
        (Value(int64_val=12), 12),
        (Value(int64_val=-(2**40)), -(2**40)),
        (Value(int32_val=-3), -3),
        (Value(bool_val=True), 1),
        (Value(unix_timestamp_val=1_795_600_800), 1_795_600_800),
        (Value(), None),
        (Value(null_val=Null.NULL), None),
    ],
)
def test_values_decode_like_protobuf(value: Value, expected: float | int | None) -> None:
    assert redis_layout.decode_value(value.SerializeToString()) == expected


def test_decode_refuses_lists() -> None:
    raw = Value(float_list_val={"val": [1.0]}).SerializeToString()
    with pytest.raises(ValueError, match="not a scalar"):
        redis_layout.decode_value(raw)


def test_timestamp_decodes_like_feast() -> None:
    ts = Timestamp()
    ts.FromDatetime(datetime(2026, 11, 25, 10, 0, 0, 250_000, tzinfo=UTC))
    got = redis_layout.decode_timestamp(ts.SerializeToString())
    assert got == datetime(2026, 11, 25, 10, 0, 0, 250_000, tzinfo=UTC)
    assert redis_layout.decode_timestamp(Timestamp().SerializeToString()) is None
    assert redis_layout.decode_timestamp(None) is None
    assert math.isfinite(got.timestamp())
