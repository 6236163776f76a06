"""Shared rate limits across replicas, cache expiry, deadlines, and Triton going away and back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import redis

from deploy.local.gateway import GatewayProcess
from deploy.local.redis import RedisServer
from deploy.local.runtime import TritonRuntime
from deploy.local.triton import TritonServer
from tests.fixtures_gateway import AUTH, LIMITED_BURST, LIMITED_KEY, StartGateway

pytestmark = pytest.mark.integration
NO_CACHE = {**AUTH, "Cache-Control": "no-cache"}
EMBED = {"input": "resilience", "model": "minilm"}


async def _burst(urls: list[str], per_url: int, headers: dict[str, str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        calls = [
            client.get(f"{url}/v2/models/minilm", headers=headers)
            for url in urls
            for _ in range(per_url)
        ]
        return list(await asyncio.gather(*calls))


def _assert_limited(responses: list[httpx.Response]) -> None:
    codes = [r.status_code for r in responses]
    assert codes.count(200) == LIMITED_BURST, codes
    assert codes.count(429) == len(codes) - LIMITED_BURST, codes
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-remaining"] == "0"
    assert refused.headers["ratelimit-limit"] == str(LIMITED_BURST)
    assert "rate limit" in refused.json()["error"]


def test_rate_limit_is_shared_by_two_gateways_through_redis(
    gateway: GatewayProcess,
    start_gateway: StartGateway,
    triton: TritonServer,
    redis_server: RedisServer,
) -> None:
    second = start_gateway(triton.grpc_url, redis_server.url)
    redis.Redis.from_url(redis_server.url).delete("tritonstack:rl:limited")
    headers = {"Authorization": f"Bearer {LIMITED_KEY}"}
    responses = asyncio.run(_burst([gateway.url, second.url], 10, headers))
    _assert_limited(responses)  # 20 concurrent requests over two processes: exactly the burst


def test_in_process_limiter_without_redis(
    start_gateway: StartGateway, triton: TritonServer
) -> None:
    local = start_gateway(triton.grpc_url, None, cache_ttl_s=1)
    headers = {"Authorization": f"Bearer {LIMITED_KEY}"}
    _assert_limited(asyncio.run(_burst([local.url], 12, headers)))

    with httpx.Client(base_url=local.url, timeout=30) as client:  # the in-process LRU's TTL
        states = [client.post("/v1/embeddings", json=EMBED, headers=AUTH).headers["x-cache"]]
        states.append(client.post("/v1/embeddings", json=EMBED, headers=AUTH).headers["x-cache"])
        time.sleep(1.3)
        states.append(client.post("/v1/embeddings", json=EMBED, headers=AUTH).headers["x-cache"])
        ready = client.get("/readyz").json()["checks"]
    assert states == ["MISS", "HIT", "MISS"]
    assert "redis" not in ready  # not configured, so not a readiness condition


def test_redis_cache_entries_expire(
    start_gateway: StartGateway, triton: TritonServer, redis_server: RedisServer
) -> None:
    short = start_gateway(triton.grpc_url, redis_server.url, cache_ttl_s=1)
    body = {"input": "expires in a second", "model": "minilm"}
    with httpx.Client(base_url=short.url, timeout=30) as client:
        first = client.post("/v1/embeddings", json=body, headers=AUTH)
        second = client.post("/v1/embeddings", json=body, headers=AUTH)
        time.sleep(1.3)
        third = client.post("/v1/embeddings", json=body, headers=AUTH)
    states = [r.headers["x-cache"] for r in (first, second, third)]
    assert states == ["MISS", "HIT", "MISS"]
    assert second.content == first.content


def test_upstream_deadline_is_504(start_gateway: StartGateway, triton: TritonServer) -> None:
    hasty = start_gateway(triton.grpc_url, None, upstream_timeout_s=0.001)
    started = time.monotonic()
    r = httpx.post(f"{hasty.url}/v1/embeddings", json=EMBED, headers=NO_CACHE, timeout=30)
    assert r.status_code == 504, r.text
    assert "deadline" in r.json()["error"]["message"]
    assert time.monotonic() - started < 2


def test_triton_down_is_503_fast_and_service_recovers(
    runtime: TritonRuntime,
    model_repository: Path,
    tmp_path: Path,
    start_gateway: StartGateway,
) -> None:
    own = TritonServer(runtime, model_repository, work_dir=tmp_path / "t1", startup_timeout_s=120)
    own.start()
    try:
        gw = start_gateway(
            own.grpc_url,
            None,
            upstream_timeout_s=2,
            breaker_failures=3,
            breaker_cooldown_s=0.5,
        )
        client = httpx.Client(base_url=gw.url, timeout=30)
        assert client.post("/v1/embeddings", json=EMBED, headers=NO_CACHE).status_code == 200

        own.stop()
        answers = []
        for _ in range(6):
            started = time.monotonic()
            r = client.post("/v1/embeddings", json=EMBED, headers=NO_CACHE)
            answers.append((r.status_code, r.json()["error"]["code"], time.monotonic() - started))
        assert all(status == 503 for status, _, _ in answers), answers
        assert all(elapsed < 2.5 for _, _, elapsed in answers), answers  # within the deadline
        assert answers[-1][1] == "circuit_open", answers  # later ones do not even try
        assert answers[-1][2] < 0.1, answers
        assert "retry-after" in r.headers
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["triton"] is False

        back = TritonServer(
            runtime, model_repository, work_dir=tmp_path / "t2", ports=own.ports,
            startup_timeout_s=120,
        )  # fmt: skip
        back.start()
        try:
            back_at = time.monotonic()
            while time.monotonic() - back_at < 15:
                r = client.post("/v1/embeddings", json=EMBED, headers=NO_CACHE)
                if r.status_code == 200:
                    break
                time.sleep(0.2)
            assert r.status_code == 200, r.text
            assert time.monotonic() - back_at < 10
            # /readyz reports the health monitor's last round (every GATEWAY_HEALTH_INTERVAL_S)
            deadline = time.monotonic() + 3
            while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert client.get("/readyz").status_code == 200
        finally:
            back.stop()
        client.close()
    finally:
        own.stop()


def test_flushed_lua_script_is_reloaded(client: httpx.Client, redis_server: RedisServer) -> None:
    """The rate-limit script runs by SHA in a pipeline; a Redis that lost it (restart, SCRIPT
    FLUSH) gets it loaded again instead of failing requests."""
    redis.Redis.from_url(redis_server.url).script_flush()
    r = client.post("/v1/embeddings", json={"input": "after a script flush", "model": "minilm"},
                    headers=AUTH)  # fmt: skip
    assert r.status_code == 200, r.text
    assert int(r.headers["ratelimit-remaining"]) > 0
