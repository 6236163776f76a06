"""The gateway's routes under a rollout's route table, against injected fakes (the fake Triton of
tests/fake_triton.py, the fake Redis of tests/fake_redis.py): the split and its stickiness, the
version in every answer and in the cache key, pinned versions, a pinned pipeline behind
/v1/embeddings, shadow copies that never touch the primary, a table from Redis used within a
second and kept while Redis fails, the figures flushed for the controller.

The same against the real Triton, Redis and two gateway processes: tests/integration/
test_rollouts.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.cache import CachedResponse
from gateway.services import Services
from gateway.settings import GatewaySettings
from gateway.tenants import TenantConfig, hash_key
from gateway.traffic import RouteTableError, parse_table, sticky_key
from gateway.traffic_store import REPLICAS_KEY, ROUTES_KEY
from tests.fake_redis import FakeRedis
from tests.fake_triton import FakeTriton

KEY = "ts_rollout-routes-0123456789abcdefghij"
AUTH = {"Authorization": f"Bearer {KEY}"}
NO_CACHE = {**AUTH, "Cache-Control": "no-cache"}
TENANTS = {"rollouts": TenantConfig(key_sha256=[hash_key(KEY)], models=["*"], rate_per_s=1e6,
                                    burst=10**6)}  # fmt: skip
V2 = {
    "inputs": [
        {"name": n, "datatype": "INT64", "shape": [1, 3], "data": d}
        for n, d in (("input_ids", [101, 2000, 102]), ("attention_mask", [1, 1, 1]),
                     ("token_type_ids", [0, 0, 0]))
    ]
}  # fmt: skip


def arm(version: str, weight: float, model: str = "minilm", pinned: str | None = None) -> Any:
    return {"version": version, "weight": weight, "model": model,
            "model_version": version if pinned is None else pinned}  # fmt: skip


def table(revision: int = 5, **routes: Any) -> dict[str, Any]:
    return {"revision": revision, "models": routes}


def route(*arms: Any, shadow: Any = None, stable: str = "1") -> dict[str, Any]:
    return {"rollout": "r1", "step": 2, "stable": stable, "arms": list(arms), "shadow": shadow}


def app(tmp_path: Path, doc: dict[str, Any] | None, fake: FakeTriton, **overrides: Any) -> Any:
    routes = None
    if doc is not None:
        routes = tmp_path / "routes.json"
        routes.write_text(json.dumps(doc))
    settings = GatewaySettings(
        tenants=TENANTS, environment="development", metrics_port=0, probe_interval_s=0,
        scoring_enabled=False, routes_file=routes, health_interval_s=60, **overrides,
    )  # fmt: skip
    return create_app(settings, upstream=fake)


def services(client: TestClient) -> Services:
    svc: Services = client.app.state.services  # type: ignore[attr-defined]
    return svc


def sample(client: TestClient, name: str, **labels: str) -> float:
    return services(client).metrics.registry.get_sample_value(name, labels) or 0.0


def eventually(check: Any, timeout_s: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[tuple[TestClient, FakeTriton]]:
    fake = FakeTriton()
    doc = table(minilm=route(arm("2", 30), arm("1", 70)))
    with TestClient(app(tmp_path, doc, fake)) as client:
        yield client, fake


def test_callers_are_split_by_weight_sticky_and_told_their_version(
    canary: tuple[TestClient, FakeTriton],
) -> None:
    client, fake = canary
    expected = parse_table(table(minilm=route(arm("2", 30), arm("1", 70)))).routes["minilm"]
    seen: dict[str, str] = {}
    answered: list[str] = []
    for k in range(300):
        r = client.post("/v2/models/minilm/infer", json=V2,
                        headers={**NO_CACHE, "X-Routing-Key": f"user{k}"})  # fmt: skip
        assert r.status_code == 200, r.text
        version = seen[f"user{k}"] = r.headers["x-model-version"]
        answered.append(version)
        assert r.json()["model_version"] == version and r.json()["model_name"] == "minilm"
        assert fake.calls[-1].version == version  # Triton was asked for that version
        assert version == expected.choose(sticky_key("rollouts", f"user{k}")).version
    share = 100 * sum(v == "2" for v in seen.values()) / len(seen)
    assert abs(share - 30) <= 8, share
    for k in range(0, 300, 15):  # the same caller, the same version
        again = client.post("/v2/models/minilm/infer", json=V2,
                            headers={**NO_CACHE, "X-Routing-Key": f"user{k}"})  # fmt: skip
        assert again.headers["x-model-version"] == seen[f"user{k}"]
        answered.append(seen[f"user{k}"])
    by_tenant = [  # no routing key: sticky by the tenant
        client.post("/v2/models/minilm/infer", json=V2, headers=NO_CACHE).headers["x-model-version"]
        for _ in range(5)
    ]
    assert len(set(by_tenant)) == 1
    answered += by_tenant
    for version in ("1", "2"):  # per-version metrics
        counted = sample(client, "gateway_version_requests_total", model="minilm",
                         version=version, outcome="ok")  # fmt: skip
        assert counted == answered.count(version), version
    figures = services(client).rollouts.recorder._ints  # this step's counts (no Redis here)
    step = figures["tritonstack:rollout:stats:r1:2"]
    assert (step["v:1:n"], step["v:2:n"]) == (answered.count("1"), answered.count("2"))


def test_the_cache_key_keeps_the_version(canary: tuple[TestClient, FakeTriton]) -> None:
    client, _ = canary
    doc = table(minilm=route(arm("2", 30), arm("1", 70)))
    choose = parse_table(doc).routes["minilm"].choose
    keys = {choose(sticky_key("rollouts", f"k{k}")).version: f"k{k}" for k in range(50)}
    body = {**V2, "id": "cache-test"}
    answers = {}
    for version, key in sorted(keys.items()):
        headers = {**AUTH, "X-Routing-Key": key}
        first = client.post("/v2/models/minilm/infer", json=body, headers=headers)
        second = client.post("/v2/models/minilm/infer", json=body, headers=headers)
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT"), version
        assert first.headers["x-model-version"] == second.headers["x-model-version"] == version
        answers[version] = second.json()["model_version"]
    assert answers == {"1": "1", "2": "2"}  # one entry per version, never the other's


def test_the_version_header_survives_a_redis_cache_entry() -> None:
    answer = CachedResponse(b"{}", "application/json", (("X-Model-Version", "12"),))
    assert CachedResponse.unseal(answer.seal("k", b"s" * 32), "k", b"s" * 32) == answer


def test_a_version_is_pinned_by_the_path(
    canary: tuple[TestClient, FakeTriton], tmp_path: Path
) -> None:
    client, fake = canary
    for key in ("a", "b", "c", "d"):
        r = client.post("/v2/models/minilm/versions/1/infer", json=V2,
                        headers={**NO_CACHE, "X-Routing-Key": key})  # fmt: skip
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
        assert r.json()["model_version"] == "1" and fake.calls[-1].version == "1"
    missing = client.post("/v2/models/minilm/versions/7/infer", json=V2, headers=AUTH)
    assert missing.status_code == 404 and "its versions: 1, 2" in missing.json()["error"]
    bad = client.post("/v2/models/minilm/versions/latest/infer", json=V2, headers=AUTH)
    assert bad.status_code == 400 and "a number" in bad.json()["error"]
    with TestClient(app(tmp_path, None, fake)) as plain:  # no route: Triton's versions
        r = plain.post("/v2/models/minilm/versions/1/infer", json=V2, headers=NO_CACHE)
        assert r.status_code == 200 and r.headers["x-model-version"] == "1"
        assert fake.calls[-1].version == "1"
        newest = plain.post("/v2/models/minilm/infer", json=V2, headers=NO_CACHE)
        assert newest.headers["x-model-version"] == "2" and fake.calls[-1].version == ""
        gone = plain.post("/v2/models/minilm/versions/9/infer", json=V2, headers=AUTH)
        assert gone.status_code == 404
        for version in range(100, 150):  # versions Triton lacks: 404s that mint no labels
            r = plain.post(f"/v2/models/minilm/versions/{version}/infer", json=V2, headers=AUTH)
            assert r.status_code == 404
        labels = {
            s.labels["version"]
            for metric in services(plain).metrics.registry.collect()
            if metric.name.startswith("gateway_version_")
            for s in metric.samples
        }
        assert labels == {"1", "2"}


def test_embeddings_reach_the_pipeline_pinned_to_the_candidate(tmp_path: Path) -> None:
    fake = FakeTriton()
    meta, config = fake.models["minilm_text"]
    fake.models["minilm_text__v2"] = ({**meta, "name": "minilm_text__v2"}, config)
    doc = table(minilm_text=route(arm("2", 100, "minilm_text__v2", ""),
                                  arm("1", 0, "minilm_text", "")))  # fmt: skip
    body = {"input": ["one", "two"], "model": "minilm"}
    with TestClient(app(tmp_path, doc, fake)) as client:
        first = client.post("/v1/embeddings", json=body, headers=AUTH)
        assert first.status_code == 200, first.text
        assert fake.calls[-1].model == "minilm_text__v2" and fake.calls[-1].version == ""
        assert first.headers["x-model-version"] == "2"
        second = client.post("/v1/embeddings", json=body, headers=AUTH)
        assert second.headers["x-cache"] == "HIT" and second.headers["x-model-version"] == "2"


class ShadowTriton(FakeTriton):
    """Version 2 (the shadow) hangs, fails or answers like version 1."""

    mode = "same"

    async def infer(self, model_name: str, inputs: Any, outputs: Any = None,
                    request_id: str = "", client_timeout: float | None = None,
                    model_version: str = "") -> Any:  # fmt: skip
        if model_version == "2" and self.mode == "hang":
            await asyncio.sleep(30)
        if model_version == "2" and self.mode == "fail":
            raise RuntimeError("the shadow is broken")
        return await super().infer(
            model_name, inputs, outputs, request_id, client_timeout, model_version
        )


@pytest.mark.parametrize("mode", ["same", "fail", "hang"])
def test_a_shadow_gets_copies_and_never_touches_the_primary(tmp_path: Path, mode: str) -> None:
    fake = ShadowTriton()
    fake.mode = mode
    shadow = {"version": "2", "model": "minilm", "model_version": "2", "metric": "cosine",
              "budget": 0.99, "sample": 1.0}  # fmt: skip
    doc = table(minilm=route(arm("1", 100), shadow=shadow))
    settings = {"shadow_workers": 1, "shadow_queue": 2, "shadow_timeout_s": 5.0}
    with TestClient(app(tmp_path, doc, fake, **settings)) as client:
        for k in range(8):
            started = time.perf_counter()
            r = client.post("/v2/models/minilm/infer", json=V2,
                            headers={**NO_CACHE, "X-Routing-Key": f"s{k}"})  # fmt: skip
            assert r.status_code == 200 and r.headers["x-model-version"] == "1"
            assert time.perf_counter() - started < 1.0  # never waits for the shadow
        outcome = {"same": "within", "fail": "error", "hang": "dropped"}[mode]
        labels = {"model": "minilm", "version": "2", "outcome": outcome}
        assert eventually(lambda: sample(client, "gateway_shadow_comparisons_total", **labels) > 0)
        if mode == "same":
            assert any(c.version == "2" for c in fake.calls)  # the copy went to the shadow
        services(client).rollouts.mirror.timeout_s = 0.01  # let a hanging worker go at once


def test_a_table_from_redis_is_used_within_a_second_and_kept_while_redis_fails(
    tmp_path: Path,
) -> None:
    fake, redis = FakeTriton(), FakeRedis()
    settings = {"routes_poll_s": 0.05, "stats_flush_s": 0.05, "replica_id": "replica-a"}
    with TestClient(app(tmp_path, None, fake, **settings)) as client:
        svc = services(client)
        svc.redis = redis  # type: ignore[assignment]  # what the store and the recorder use
        try:

            def version() -> str:
                r = client.post("/v2/models/minilm/infer", json=V2, headers=NO_CACHE)
                return str(r.headers["x-model-version"])

            assert version() == "2"  # no route: the newest
            redis.data[ROUTES_KEY] = json.dumps(table(10, minilm=route(arm("1", 100)))).encode()
            written = time.monotonic()
            assert eventually(lambda: version() == "1", timeout_s=1.0)
            assert time.monotonic() - written < 1.0
            # the next poll says which revision this replica uses (the controller waits on it)
            assert eventually(lambda: redis.data[REPLICAS_KEY]["replica-a"].startswith("10 "))
            assert eventually(
                lambda: "v:1:n" in redis.data.get("tritonstack:rollout:stats:r1:2", {})
            )
            redis.down = True  # unreachable: the last good table stays
            time.sleep(0.2)
            assert version() == "1"
            redis.down = False
            redis.data[ROUTES_KEY] = b'{"revision": 11, "models": {"minilm": {}}}'  # unusable
            time.sleep(0.2)
            assert version() == "1" and svc.rollouts.store.errors.get("invalid") == 1
        finally:
            svc.redis = None  # the fake has nothing to close


def test_an_unusable_routes_file_stops_the_gateway_with_the_field_named(tmp_path: Path) -> None:
    doc = table(minilm=route(arm("2", 30), arm("1", 30)))
    with pytest.raises(RouteTableError, match="add up to 60"):
        app(tmp_path, doc, FakeTriton())
