"""The feature store against real stores: SQLite (embedded) and a real redis-server.

Training/serving consistency, unknown / null / stale entities under both policies, the
direct-Redis reader agreeing with Feast's SDK, an unreachable store.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from deploy.local.process import free_port
from features.errors import (
    FeatureStoreUnavailable,
    NullFeatureError,
    StaleFeatureError,
    UnknownEntityError,
)
from features.online import (
    DirectRedisFeatures,
    FeastSdkFeatures,
    OnlineFeatures,
    open_online_features,
)
from features.repo import EVENT_TIMESTAMP
from features.schema import (
    ENTITY_KEY,
    FEATURE_DEFAULTS,
    MODEL_FEATURES,
    FeatureRow,
    build_model_input,
)
from features.store import apply
from features.train import features_matrix
from tests.fixtures_features import FeatureEnv

pytestmark = pytest.mark.integration
NEVER_SEEN = 987_654


async def _read(reader: OnlineFeatures, ids: list[int]) -> list[FeatureRow]:
    async with reader:
        return await reader.read(ids)


def read_rows(env: FeatureEnv, ids: list[int], reader: str = "auto") -> list[FeatureRow]:
    settings = env.settings.model_copy(update={"reader": reader})
    return asyncio.run(_read(open_online_features(settings), ids))


def test_apply_is_idempotent(feature_env: FeatureEnv) -> None:
    report = apply(feature_env.settings, feature_env.store)
    assert report.detail["objects"] == [
        "Entity:driver",
        "FeatureView:driver_hourly_stats",
        "FeatureService:driver_ranking",
    ]
    service = feature_env.store.get_feature_service("driver_ranking")
    names = [f.name for p in service.feature_view_projections for f in p.features]
    assert names == list(MODEL_FEATURES)


def test_serving_vector_equals_training_row(feature_env: FeatureEnv) -> None:
    """What the gateway builds from the online store for a driver at the materialization
    time equals the training row get_historical_features gives for that driver and time."""
    drivers = feature_env.dataset.drivers
    ids = drivers["active"] + drivers["idle"] + drivers["late"]
    entity_df = pd.DataFrame(
        {
            ENTITY_KEY: ids,
            EVENT_TIMESTAMP: [feature_env.materialized_at] * len(ids),
            "request_id": range(len(ids)),
        }
    )
    service = feature_env.store.get_feature_service("driver_ranking")
    offline = (
        feature_env.store.get_historical_features(entity_df=entity_df, features=service)
        .to_df()
        .sort_values("request_id")
    )
    assert offline[ENTITY_KEY].tolist() == ids
    training = features_matrix(offline)

    rows = read_rows(feature_env, ids)
    serving = build_model_input(rows, policy="reject", max_age_s=None)
    assert serving.array.dtype == training.dtype == np.float32
    np.testing.assert_array_equal(serving.array, training)
    assert serving.entity_ids == tuple(ids)
    # and the values really vary (not a constant or a default)
    assert len(np.unique(serving.array[:, 0])) == len(ids)


@pytest.mark.parametrize("reader", ["auto", "sdk"])
def test_unknown_null_and_stale_are_rejected_by_name(feature_env: FeatureEnv, reader: str) -> None:
    drivers = feature_env.dataset.drivers
    active, idle = drivers["active"][0], drivers["idle"][0]
    gone, nullacc = drivers["gone"][0], drivers["nullacc"][0]
    max_age = feature_env.settings.max_age_s
    rows = {r.entity_id: r for r in read_rows(feature_env, [active, idle, gone, nullacc,
                                                            NEVER_SEEN], reader)}  # fmt: skip

    assert build_model_input([rows[active]], max_age_s=max_age).array.shape == (1, 3)
    for unknown in (gone, NEVER_SEEN):
        assert not rows[unknown].found
        with pytest.raises(UnknownEntityError) as info:
            build_model_input([rows[active], rows[unknown]], max_age_s=max_age)
        assert info.value.entity_id == unknown and info.value.status_code == 404
        assert str(unknown) in str(info.value)

    with pytest.raises(NullFeatureError) as null:
        build_model_input([rows[active], rows[nullacc]], max_age_s=max_age)
    assert (null.value.entity_id, null.value.feature) == (nullacc, "acc_rate")
    assert null.value.status_code == 422

    with pytest.raises(StaleFeatureError) as stale:
        build_model_input([rows[idle]], max_age_s=max_age)
    assert stale.value.entity_id == idle and stale.value.age_s > max_age
    assert stale.value.event_timestamp == rows[idle].event_timestamp


def test_default_policy_fills_and_reports(feature_env: FeatureEnv) -> None:
    drivers = feature_env.dataset.drivers
    ids = [drivers["active"][0], drivers["gone"][0], drivers["nullacc"][0], drivers["idle"][0]]
    rows = read_rows(feature_env, ids)
    result = build_model_input(rows, policy="default", max_age_s=feature_env.settings.max_age_s)
    reasons = {(d.entity_id, d.feature): d.reason for d in result.defaults}
    assert not any(entity == ids[0] for entity, _ in reasons)
    assert {reasons[(ids[1], f)] for f in MODEL_FEATURES} == {"unknown"}
    assert reasons == {
        **{(ids[1], f): "unknown" for f in MODEL_FEATURES},
        (ids[2], "acc_rate"): "null",
        **{(ids[3], f): "stale" for f in MODEL_FEATURES},
    }
    defaults = np.array([FEATURE_DEFAULTS[f] for f in MODEL_FEATURES], dtype=np.float32)
    np.testing.assert_array_equal(result.array[1], defaults)
    assert result.array[2, 1] == np.float32(FEATURE_DEFAULTS["acc_rate"])
    assert result.array[2, 0] == np.float32(rows[2].values["conv_rate"])  # type: ignore[arg-type]


def test_direct_redis_and_feast_sdk_read_identical_rows(redis_features: FeatureEnv) -> None:
    drivers = [d for ids in redis_features.dataset.drivers.values() for d in ids]
    ids = [*drivers, NEVER_SEEN, drivers[0], 0, -5]  # unknown, duplicate, odd ids
    settings = redis_features.settings
    direct = asyncio.run(_read(open_online_features(settings), ids))
    sdk = asyncio.run(_read(open_online_features(settings.model_copy(update={"reader": "sdk"})),
                            ids))  # fmt: skip
    assert [r.entity_id for r in direct] == ids
    assert direct == sdk
    assert sum(r.found for r in direct) > len(drivers) // 2


def test_readers_by_settings(redis_features: FeatureEnv, sqlite_features: FeatureEnv) -> None:
    async def kinds() -> list[OnlineFeatures]:
        readers = [
            open_online_features(redis_features.settings),
            open_online_features(redis_features.settings.model_copy(update={"reader": "sdk"})),
            open_online_features(sqlite_features.settings),
        ]
        for reader in readers:
            assert await reader.ping()
            await reader.close()
        return readers

    direct, sdk_async, sdk_thread = asyncio.run(kinds())
    assert isinstance(direct, DirectRedisFeatures)
    assert isinstance(sdk_async, FeastSdkFeatures) and sdk_async.use_async
    assert isinstance(sdk_thread, FeastSdkFeatures) and not sdk_thread.use_async


def test_unreachable_redis_is_unavailable_not_unknown(redis_features: FeatureEnv) -> None:
    settings = redis_features.settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "lookup_timeout_s": 0.5}
    )

    async def attempt() -> bool:
        async with open_online_features(settings) as reader:
            with pytest.raises(FeatureStoreUnavailable, match=r"unreachable|exceeded"):
                await reader.read([1001])
            return await reader.ping()

    assert asyncio.run(attempt()) is False


def test_row_equality_is_by_value() -> None:
    row = FeatureRow(1, {"conv_rate": 0.5}, None)
    assert replace(row) == row
