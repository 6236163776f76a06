"""``POST /v1/score`` through the gateway: online features (Redis and SQLite) → driver_ranker."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from deploy.local.gateway import GatewayProcess
from deploy.local.redis import RedisServer
from deploy.local.triton import TritonServer
from features.schema import MODEL_FEATURES
from tests.fixtures_features import FeatureEnv, online_model_input, triton_scores
from tests.fixtures_gateway import AUTH, BETA_KEY, StartGateway

pytestmark = pytest.mark.integration


def _feature_env_vars(env: FeatureEnv) -> dict[str, str]:
    variables = {"FEATURES_STATE_DIR": str(env.settings.state_dir)}
    if env.settings.redis_url:
        variables["FEATURES_REDIS_URL"] = env.settings.redis_url
    return {**variables, "GATEWAY_SCORING_ENABLED": "true"}


@pytest.fixture(scope="module")
def scoring_gateway(
    start_gateway: StartGateway,
    ranker_triton: TritonServer,
    redis_server: RedisServer,
    redis_features: FeatureEnv,
) -> GatewayProcess:
    return start_gateway(
        ranker_triton.grpc_url,
        redis_server.url,
        extra_env=_feature_env_vars(redis_features),
        ready_requires_features="true",
    )


def _direct_scores(triton: TritonServer, env: FeatureEnv, ids: list[int]) -> np.ndarray:
    return triton_scores(triton, online_model_input(env, ids))[:, 0]


def test_scores_equal_the_model_on_the_same_online_features(
    scoring_gateway: GatewayProcess, ranker_triton: TritonServer, redis_features: FeatureEnv
) -> None:
    ids = redis_features.dataset.drivers["active"][:6]
    r = httpx.post(
        f"{scoring_gateway.url}/v1/score",
        json={"entity_ids": ids, "include_features": True, "include_timestamps": True},
        headers={"Authorization": f"Bearer {BETA_KEY}"},  # beta may use driver_ranker only
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "driver_ranker" and body["feature_names"] == list(MODEL_FEATURES)
    assert [s["entity_id"] for s in body["scores"]] == ids
    got = np.array([s["score"] for s in body["scores"]], dtype=np.float32)
    np.testing.assert_allclose(got, _direct_scores(ranker_triton, redis_features, ids), rtol=1e-6)
    first = body["scores"][0]
    assert set(first["features"]) == set(MODEL_FEATURES) and first["event_timestamp"]
    assert body["defaults_applied"] == []
    ready = httpx.get(f"{scoring_gateway.url}/readyz", timeout=10).json()
    assert ready["checks"]["features"] is True and ready["checks"]["model:driver_ranker"]


@pytest.mark.parametrize(
    ("cohort", "status", "code"),
    [("gone", 404, "unknown_entity"), ("nullacc", 422, "invalid_features"),
     ("idle", 422, "invalid_features")],
)  # fmt: skip
def test_unknown_null_and_stale_entities_are_named(
    scoring_gateway: GatewayProcess,
    redis_features: FeatureEnv,
    cohort: str,
    status: int,
    code: str,
) -> None:
    bad = redis_features.dataset.drivers[cohort][0]
    ids = [redis_features.dataset.drivers["active"][0], bad]
    r = httpx.post(
        f"{scoring_gateway.url}/v1/score", json={"entity_ids": ids}, headers=AUTH, timeout=30
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and str(bad) in error["message"]


def test_unknown_entity_never_reaches_the_model_as_zeros(
    scoring_gateway: GatewayProcess,
) -> None:
    r = httpx.post(
        f"{scoring_gateway.url}/v1/score",
        json={"entity_ids": [987654321]},
        headers=AUTH,
        timeout=30,
    )
    assert r.status_code == 404 and "987654321" in r.text


@pytest.mark.parametrize(
    "body", [{"entity_ids": []}, {"entity_ids": ["x"]}, {"entity_ids": [2**64]}, {}]
)
def test_bad_score_requests_are_4xx(scoring_gateway: GatewayProcess, body: dict) -> None:
    r = httpx.post(f"{scoring_gateway.url}/v1/score", json=body, headers=AUTH, timeout=30)
    assert 400 <= r.status_code < 500, r.text


def test_sqlite_store_serves_the_same_endpoint(
    start_gateway: StartGateway,
    ranker_triton: TritonServer,
    sqlite_features: FeatureEnv,
) -> None:
    gateway = start_gateway(
        ranker_triton.grpc_url, None, extra_env=_feature_env_vars(sqlite_features)
    )
    ids = sqlite_features.dataset.drivers["active"][:3]
    r = httpx.post(f"{gateway.url}/v1/score", json={"entity_ids": ids}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    scores = [s["score"] for s in r.json()["scores"]]
    np.testing.assert_allclose(
        scores, _direct_scores(ranker_triton, sqlite_features, ids), rtol=1e-6
    )
    gone = sqlite_features.dataset.drivers["gone"][0]
    r = httpx.post(f"{gateway.url}/v1/score", json={"entity_ids": [gone]}, headers=AUTH, timeout=60)
    assert r.status_code == 404 and str(gone) in r.json()["error"]["message"]
