"""features.schema: order, casting, the missing/stale policy; what the gateway may import."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from features.errors import NullFeatureError, StaleFeatureError, UnknownEntityError
from features.schema import (
    FEATURE_DEFAULTS,
    MODEL_FEATURES,
    FeatureRow,
    build_model_input,
    to_model_array,
)
from features.settings import FeatureSettings, to_feast_connection_string

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


def row(entity: int, age_h: float = 1.0, **values: float | int | None) -> FeatureRow:
    base: dict[str, float | int | None] = {"conv_rate": 0.25, "acc_rate": 0.75,
                                           "avg_daily_trips": 12}  # fmt: skip
    return FeatureRow(entity, base | values, NOW - timedelta(hours=age_h))


def unknown(entity: int) -> FeatureRow:
    return FeatureRow(entity, dict.fromkeys(MODEL_FEATURES), None)


def test_columns_follow_model_features_not_dict_order() -> None:
    shuffled = FeatureRow(7, {"avg_daily_trips": 3, "acc_rate": 0.5, "conv_rate": 0.125}, NOW)
    result = build_model_input([shuffled], now=NOW)
    assert MODEL_FEATURES == ("conv_rate", "acc_rate", "avg_daily_trips")
    np.testing.assert_array_equal(result.array, np.array([[0.125, 0.5, 3.0]], np.float32))
    assert result.array.dtype == np.float32 and result.defaults == ()


@pytest.mark.parametrize(
    ("rows", "error", "entity", "feature"),
    [
        ([row(1), unknown(2)], UnknownEntityError, 2, None),
        ([row(1), row(3, acc_rate=None)], NullFeatureError, 3, "acc_rate"),
        ([row(1, conv_rate=float("nan"))], NullFeatureError, 1, "conv_rate"),
        ([row(4, age_h=30)], StaleFeatureError, 4, "conv_rate"),
        # unknown before null before stale, whatever the request order
        ([row(4, age_h=30), row(3, acc_rate=None), unknown(2)], UnknownEntityError, 2, None),
        ([row(4, age_h=30), row(3, acc_rate=None)], NullFeatureError, 3, "acc_rate"),
    ],
)
def test_reject_names_entity_and_feature(
    rows: list[FeatureRow], error: type[Exception], entity: int, feature: str | None
) -> None:
    with pytest.raises(error) as info:
        build_model_input(rows, policy="reject", max_age_s=24 * 3600, now=NOW)
    assert info.value.entity_id == entity  # type: ignore[attr-defined]
    assert info.value.feature == feature  # type: ignore[attr-defined]
    assert f"driver_id {entity}" in str(info.value)


def test_staleness_off_without_max_age() -> None:
    result = build_model_input([row(4, age_h=1000)], max_age_s=None, now=NOW)
    assert result.array[0, 0] == np.float32(0.25)


def test_default_policy_substitutes_documented_values_and_reports_them() -> None:
    rows = [row(1), unknown(2), row(3, acc_rate=None), row(4, age_h=30)]
    result = build_model_input(rows, policy="default", max_age_s=3600, now=NOW)
    defaults = [FEATURE_DEFAULTS[f] for f in MODEL_FEATURES]
    np.testing.assert_array_equal(result.array[0], np.float32([0.25, 0.75, 12]))
    np.testing.assert_array_equal(result.array[1], np.float32(defaults))
    np.testing.assert_array_equal(result.array[2], np.float32([0.25, defaults[1], 12]))
    np.testing.assert_array_equal(result.array[3], np.float32(defaults))
    reported = {(d.entity_id, d.feature, d.reason) for d in result.defaults}
    assert reported == (
        {(2, f, "unknown") for f in MODEL_FEATURES}
        | {(3, "acc_rate", "null")}
        | {(4, f, "stale") for f in MODEL_FEATURES}
    )
    assert 0.0 not in defaults  # a default is never a silent zero


def test_to_model_array_refuses_nan_and_wrong_width() -> None:
    with pytest.raises(ValueError, match="NaN"):
        to_model_array([[0.1, float("nan"), 3]])
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        to_model_array([[0.1, 0.2]])
    assert build_model_input([], now=NOW).array.shape == (0, 3)


def test_gateway_modules_import_neither_torch_nor_feast() -> None:
    code = (
        "import sys, features.schema, features.online, features.settings, features.errors;"
        "bad = [m for m in ('torch', 'feast', 'pandas') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6390/2", "127.0.0.1:6390,db=2"),
        ("redis://:s3cret@redis:6379", "redis:6379,db=0,password=s3cret"),
        ("rediss://cache:6380/0", "cache:6380,db=0,ssl=true"),
        ("redis:6379,db=1", "redis:6379,db=1"),
    ],
)
def test_redis_url_to_feast_connection_string(url: str, expected: str) -> None:
    assert to_feast_connection_string(url) == expected


def test_store_kind_follows_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEATURES_REDIS_URL", raising=False)
    assert FeatureSettings().store_kind == "sqlite"
    monkeypatch.setenv("FEATURES_REDIS_URL", "redis://localhost:6379/0")
    assert FeatureSettings().store_kind == "redis"
    monkeypatch.setenv("FEATURES_ONLINE_STORE", "sqlite")
    assert FeatureSettings().store_kind == "sqlite"
