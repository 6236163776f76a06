"""Load and faults through the real gateway, Triton and Redis: nothing lost, Triton or Redis
killed mid-load, overload shedding, graceful shutdown, a model update during traffic."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from deploy.local.gateway import GatewayProcess
from deploy.local.process import stop_process_group
from deploy.local.redis import RedisServer
from deploy.local.runtime import TritonRuntime
from deploy.local.triton import TritonServer
from export.model_config import load_config, write_config
from tests.fixtures_gateway import BETA_KEY, UNLIMITED_KEY, StartGateway, v2_json_body
from tests.reliability.conftest import Outcome, drive, summarize

pytestmark = pytest.mark.integration
LOAD = {"Authorization": f"Bearer {UNLIMITED_KEY}"}  # a tenant no load here can rate-limit
NO_CACHE = {**LOAD, "Cache-Control": "no-cache"}


def _embed(text: str, headers: dict[str, str] = NO_CACHE) -> Any:
    def send(session: Any, i: int) -> Any:
        return session.post(
            "/v1/embeddings", json={"input": f"{text} {i}", "model": "minilm"}, headers=headers
        )

    return send


def _kill(pid: int) -> None:
    """SIGKILL a whole process group: a crash, not a shutdown."""
    os.killpg(pid, signal.SIGKILL)


def _between(outcomes: list[Outcome], start: float, end: float) -> list[Outcome]:
    return [o for o in outcomes if start <= o.started < end]


# -- 1. nothing lost ------------------------------------------------------------------------------
async def test_nothing_lost_under_load(gateway: GatewayProcess, figures: dict) -> None:
    """16 clients x 25 requests: every request gets its documented answer and the counts add up."""

    def send(session: Any, i: int) -> Any:
        kind = i % 10
        if kind == 8:  # an empty string: 400
            return session.post("/v1/embeddings", json={"input": "", "model": "minilm"},
                                headers=NO_CACHE)  # fmt: skip
        if kind == 9:  # a tenant that may not use minilm: 403
            return session.post(
                "/v1/embeddings", json={"input": f"x {i}", "model": "minilm"},
                headers={"Authorization": f"Bearer {BETA_KEY}"},
            )  # fmt: skip
        return session.post(
            "/v1/embeddings", json={"input": f"nothing lost {i}", "model": "minilm"},
            headers=NO_CACHE,
        )  # fmt: skip

    outcomes = await drive(gateway.url, send, clients=16, requests_per_client=25)
    summary = summarize(outcomes)
    figures.update(summary)
    assert summary["sent"] == 400
    assert summary["by_status"] == {"200": 320, "400": 40, "403": 40}, summary
    assert summary["max_ms"] < 10_000  # nothing hung up to the upstream deadline


# -- 2. Triton killed ------------------------------------------------------------------------------
async def test_triton_killed_mid_load_fails_fast_and_recovers(
    runtime: TritonRuntime,
    model_repository: Path,
    tmp_path: Path,
    start_gateway: StartGateway,
    figures: dict,
) -> None:
    triton = TritonServer(
        runtime, model_repository, work_dir=tmp_path / "t1", startup_timeout_s=120
    )
    await asyncio.to_thread(triton.start)
    back = TritonServer(
        runtime, model_repository, work_dir=tmp_path / "t2", ports=triton.ports,
        startup_timeout_s=120,
    )  # fmt: skip
    try:
        gw = start_gateway(
            triton.grpc_url, None, upstream_timeout_s=2, breaker_failures=3, breaker_cooldown_s=0.5
        )
        marks: dict[str, float] = {}
        stop = False

        async def controller() -> None:
            nonlocal stop
            await asyncio.sleep(2.0)
            marks["killed"] = time.monotonic()
            assert triton.pid is not None
            _kill(triton.pid)
            while True:  # /readyz turns false
                ready = await asyncio.to_thread(_status, f"{gw.url}/readyz")
                if ready == 503:
                    marks["readyz_false"] = time.monotonic()
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(2.0)
            await asyncio.to_thread(back.start)
            marks["triton_back"] = time.monotonic()
            await asyncio.sleep(3.0)
            stop = True

        load = drive(gw.url, _embed("killed"), clients=8, until=lambda: stop)
        outcomes, _ = await asyncio.gather(load, controller())
    finally:
        back.stop()
        triton.stop()

    killed, back_at = marks["killed"], marks["triton_back"]
    outage = _between(outcomes, killed, back_at)
    statuses = {o.status for o in outcomes}
    assert statuses <= {200, 503}, summarize(outcomes)  # every request answered, nothing else
    assert outage and all(o.status == 503 for o in outage if o.started > killed + 0.1)
    assert max(o.latency_s for o in outage) < 2.5  # within the upstream deadline: no pile-up
    first_error = min(o.finished for o in outcomes if o.status == 503)
    recovered = min(o.finished for o in outcomes if o.status == 200 and o.started >= back_at)
    fast = sorted(o.latency_s for o in outage)[len(outage) // 2]
    figures.update(
        summarize(outcomes),
        time_to_first_503_ms=round((first_error - killed) * 1000, 1),
        time_to_readyz_false_ms=round((marks["readyz_false"] - killed) * 1000, 1),
        outage_requests=len(outage),
        outage_p50_ms=round(fast * 1000, 1),
        time_to_recover_ms=round((recovered - back_at) * 1000, 1),
    )
    assert recovered - back_at < 3.0  # reconnect backoff capped at 1 s in the gateway
    assert fast < 0.1  # the breaker answers at once instead of every request waiting


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


# -- 3. Redis killed -------------------------------------------------------------------------------
async def test_redis_killed_mid_load_keeps_serving(
    triton: TritonServer, tmp_path: Path, start_gateway: StartGateway, figures: dict
) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    restarted = RedisServer(tmp_path / "redis2", port=redis.port)
    try:
        gw = start_gateway(triton.grpc_url, redis.url)  # rate limiter: fallback (the default)
        marks: dict[str, float] = {}
        stop = False

        async def controller() -> None:
            nonlocal stop
            await asyncio.sleep(2.0)
            marks["killed"] = time.monotonic()
            assert redis.pid is not None
            _kill(redis.pid)
            await asyncio.sleep(2.5)
            await asyncio.to_thread(restarted.start)
            marks["back"] = time.monotonic()
            await asyncio.sleep(2.5)
            stop = True

        def send(session: Any, i: int) -> Any:  # 20 distinct texts: the cache has work to do
            return session.post(
                "/v1/embeddings", json={"input": f"redis {i % 20}", "model": "minilm"},
                headers=LOAD,
            )  # fmt: skip

        outcomes, _ = await asyncio.gather(
            drive(gw.url, send, clients=8, until=lambda: stop), controller()
        )
    finally:
        restarted.stop()
        redis.stop()

    outage = _between(outcomes, marks["killed"] + 0.1, marks["back"])
    after = _between(outcomes, marks["back"] + 0.5, float("inf"))
    before = _between(outcomes, 0, marks["killed"])
    assert {o.status for o in outcomes} == {200}, summarize(outcomes)  # no 5xx from Redis loss

    def hits(items: list[Outcome]) -> int:
        return sum(o.headers.get("x-cache") == "HIT" for o in items)

    figures.update(
        summarize(outcomes),
        cache_hits_before=hits(before), requests_before=len(before),
        cache_hits_during_outage=hits(outage), requests_during_outage=len(outage),
        cache_hits_after=hits(after), requests_after=len(after),
    )  # fmt: skip
    assert hits(before) > 0 and hits(after) > 0  # the cache works, and works again
    # bypassed while Redis is away (the few hits are this process's own writes still in flight)
    assert hits(outage) < len(outage) * 0.25


async def test_redis_failure_policy_deny_answers_503_not_500(
    triton: TritonServer, tmp_path: Path, start_gateway: StartGateway, figures: dict
) -> None:
    with RedisServer(tmp_path / "gone") as redis:
        url = redis.url  # then it is stopped: a Redis that is configured but down
    deny = start_gateway(triton.grpc_url, url, rate_limit_on_redis_error="deny")
    fallback = start_gateway(triton.grpc_url, url)
    denied = await drive(deny.url, _embed("deny"), clients=2, requests_per_client=5)
    served = await drive(fallback.url, _embed("fallback"), clients=2, requests_per_client=5)
    figures.update(deny=summarize(denied)["by_status"], fallback=summarize(served)["by_status"])
    assert {o.status for o in denied} == {503}
    assert all("retry-after" in o.headers for o in denied)
    assert b"rate_limiter_unavailable" in denied[0].body
    assert {o.status for o in served} == {200}


# -- 4. overload -----------------------------------------------------------------------------------
def _tiny_queue_repository(source: Path, target: Path, queue: int) -> Path:
    for name in ("minilm", "minilm_tokenizer", "minilm_text"):  # /v1/embeddings: the pipeline
        shutil.copytree(source / name, target / name)
    config = load_config(target / "minilm" / "config.pbtxt")
    config.dynamic_batching.default_queue_policy.max_queue_size = queue
    write_config(config, target / "minilm" / "config.pbtxt")
    return target


async def test_overload_is_shed_with_retry_after_and_bounded_latency(
    runtime: TritonRuntime,
    model_repository: Path,
    tmp_path: Path,
    start_gateway: StartGateway,
    figures: dict,
) -> None:
    repository = _tiny_queue_repository(model_repository, tmp_path / "repo", queue=16)
    with TritonServer(runtime, repository, work_dir=tmp_path / "t", startup_timeout_s=120) as t:
        # Triton sheds (queue of 16 -> 429) behind a gateway that lets everything through ...
        open_gate = start_gateway(t.grpc_url, None, max_inflight=256)
        # ... and the gateway sheds first (4 calls in flight, 50 ms wait -> 503)
        narrow = start_gateway(t.grpc_url, None, max_inflight=4, inflight_wait_s=0.05)
        by_triton = await drive(open_gate.url, _embed("queue"), clients=48, requests_per_client=4)
        by_gateway = await drive(narrow.url, _embed("gate"), clients=48, requests_per_client=4)

    for name, outcomes, shed_status in (
        ("triton_queue", by_triton, 429),
        ("gateway_limit", by_gateway, 503),
    ):
        accepted = sorted(o.latency_s for o in outcomes if o.status == 200)
        shed = [o for o in outcomes if o.status == shed_status]
        figures[name] = {
            **summarize(outcomes),
            "accepted_p99_ms": round(accepted[int(len(accepted) * 0.99) - 1] * 1000, 1),
        }
        assert {o.status for o in outcomes} <= {200, shed_status}, summarize(outcomes)
        assert shed, f"{name}: nothing was shed at 48 concurrent clients"
        assert all(int(o.headers["retry-after"]) >= 1 for o in shed)
        assert accepted and accepted[-1] < 5.0  # accepted requests stay far from the deadline


# -- 5. graceful shutdown --------------------------------------------------------------------------
async def test_graceful_shutdown_answers_every_request_in_flight(
    triton: TritonServer, start_gateway: StartGateway, figures: dict
) -> None:
    gw = start_gateway(triton.grpc_url, None, drain_timeout_s=20)
    texts = [f"drain {i} " + "words " * 20 for i in range(32)]  # one full batch of work each
    marks: dict[str, float] = {}

    def send(session: Any, i: int) -> Any:
        return session.post(
            "/v1/embeddings", json={"input": [f"{i} {t}" for t in texts], "model": "minilm"},
            headers=NO_CACHE,
        )  # fmt: skip

    async def stop_soon() -> None:
        await asyncio.sleep(0.3)
        marks["sigterm"] = time.monotonic()
        assert gw.pid is not None
        os.kill(gw.pid, signal.SIGTERM)

    outcomes, _ = await asyncio.gather(
        drive(gw.url, send, clients=12, requests_per_client=1), stop_soon()
    )
    exited = await asyncio.to_thread(_wait_exit, gw, 30)
    in_flight = [o for o in outcomes if o.started < marks["sigterm"] < o.finished]
    figures.update(
        summarize(outcomes), in_flight_at_sigterm=len(in_flight),
        last_answer_after_sigterm_ms=round((max(o.finished for o in outcomes) - marks["sigterm"])
                                           * 1000, 1),
        exit_after_sigterm_s=round(exited - marks["sigterm"], 2),
    )  # fmt: skip
    assert len(in_flight) >= 6, "the test did not catch requests in flight"
    assert [o.status for o in outcomes] == [200] * 12  # every accepted request answered
    stop_process_group(gw.pid, 1)


def _wait_exit(process: GatewayProcess, timeout_s: float) -> float:
    assert process.process is not None
    process.process.wait(timeout=timeout_s)
    return time.monotonic()


# -- 6. model update during traffic ----------------------------------------------------------------
async def test_new_model_version_loads_during_traffic_without_a_failed_request(
    runtime: TritonRuntime,
    model_repository: Path,
    tmp_path: Path,
    start_gateway: StartGateway,
    figures: dict,
) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(model_repository / "minilm", repository / "minilm")
    server = TritonServer(
        runtime, repository, work_dir=tmp_path / "t", model_control_mode="explicit",
        extra_args=["--load-model=minilm"], startup_timeout_s=120,
    )  # fmt: skip
    with server:
        gw = start_gateway(server.grpc_url, None)
        marks: dict[str, float] = {}
        stop = False

        def send(session: Any, i: int) -> Any:
            body = v2_json_body([101, 1000 + i % 5000, 2000 + i % 7000, 102])
            return session.post("/v2/models/minilm/infer", json=body, headers=NO_CACHE)

        async def controller() -> None:
            nonlocal stop
            await asyncio.sleep(1.5)
            shutil.copytree(repository / "minilm" / "1", repository / "minilm" / "2")
            marks["load"] = time.monotonic()
            request = urllib.request.Request(
                f"http://{server.http_url}/v2/repository/models/minilm/load", method="POST"
            )
            await asyncio.to_thread(urllib.request.urlopen, request, None, 120)
            marks["loaded"] = time.monotonic()
            await asyncio.sleep(1.5)
            stop = True

        outcomes, _ = await asyncio.gather(
            drive(gw.url, send, clients=8, until=lambda: stop), controller()
        )
    versions = {o.body.split(b'"model_version":"')[1].split(b'"')[0] for o in outcomes
                if o.status == 200}  # fmt: skip
    during = _between(outcomes, marks["load"], marks["loaded"])
    figures.update(
        summarize(outcomes), requests_during_load=len(during),
        load_seconds=round(marks["loaded"] - marks["load"], 2),
        versions_seen=sorted(v.decode() for v in versions),
    )  # fmt: skip
    assert {o.status for o in outcomes} == {200}, summarize(outcomes)
    assert versions == {b"1", b"2"}
