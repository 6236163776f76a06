"""The capture path against a real redis-server: the gateway's writer -> the Redis Stream -> the
sink (consumer group, real processes) -> Parquet. Nothing acknowledged is lost or written twice
across a crash, a dead Redis costs the writer nothing but counted drops, and the manifests' ACL
lets each user do exactly its part."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import redis
import yaml
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis as AsyncRedis

from deploy.local.process import free_port
from deploy.local.redis import RedisServer
from gateway import feedback
from gateway.capture import CaptureRecord, Tensor, decode, index_key
from gateway.capture_writer import CaptureMetrics, CaptureWriter, WriterOptions
from gateway.errors import GatewayError
from monitoring.settings import CaptureSettings
from monitoring.sink import Sink, SinkMetrics
from monitoring.store import Store
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def record(i: int, model: str = "driver_ranker") -> CaptureRecord:
    features = np.full((2, 3), i, dtype=np.float32)
    return CaptureRecord(
        f"r{i}", time.time(), "alpha", model, "1", "/v1/score", 1.0, 2,
        (Tensor("features", "input", features),
         Tensor("score", "output", np.full((2, 1), 0.5, np.float32))),
        entity_ids=(i, i + 1),
    )  # fmt: skip


def counted(metrics: CaptureMetrics, name: str) -> float:
    total = 0.0
    for family in getattr(metrics, name).collect():
        total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


async def produce(
    url: str, n: int, stream: str, rate_per_s: float, **options: object
) -> CaptureMetrics:
    """``n`` records offered at about ``rate_per_s`` by the gateway's writer, then closed."""
    client = AsyncRedis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25)
    metrics = CaptureMetrics(CollectorRegistry())
    writer = CaptureWriter(client, WriterOptions(stream=stream, **options), metrics)  # type: ignore[arg-type]
    writer.start()
    for i in range(n):
        writer.offer(record(i))
        if i % 50 == 49:
            await asyncio.sleep(50 / rate_per_s)
    await writer.close(timeout_s=5)
    await client.aclose()
    return metrics


def sink_process(
    url: str, store: Path, stream: str, consumer: str, log: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "CAPTURE_REDIS_URL": url,
        "CAPTURE_STREAM": stream, "CAPTURE_STORE_URL": str(store), "CAPTURE_CONSUMER": consumer,
        "CAPTURE_LINGER_S": "0.05", "CAPTURE_BATCH_MAX": "40", "CAPTURE_BLOCK_MS": "50",
        "CAPTURE_METRICS_PORT": str(free_port()),
    }  # fmt: skip
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "monitoring", "capture"], env=env, cwd=ROOT,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def stored_ids(store: Path) -> list[str]:
    table = Store(str(store)).read(
        "inferences", "driver_ranker", datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC)
    )
    return [] if table is None else table.column("request_id").to_pylist()


def wait_until(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s")
        time.sleep(0.1)


def test_a_killed_sink_loses_no_acknowledged_record(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Records flow while the sink is SIGKILLed twice and restarted: every record Redis took
    from the writer ends in exactly one Parquet row pair, none twice."""
    stream, store, log = "tritonstack:capture:kill-test", tmp_path / "store", tmp_path / "sink.log"
    n = 1500
    done = threading.Event()
    found: dict[str, CaptureMetrics] = {}

    def traffic() -> None:
        found["metrics"] = asyncio.run(produce(redis_server.url, n, stream, rate_per_s=300))
        done.set()

    producer = threading.Thread(target=traffic)
    sink = sink_process(redis_server.url, store, stream, "sink-a", log)
    producer.start()
    try:
        for mark in (200, 1400):  # kill mid-stream, restart under the same name
            wait_until(lambda m=mark: len(stored_ids(store)) >= m, 30, f"{mark} rows stored")
            os.killpg(sink.pid, signal.SIGKILL)
            sink.wait(10)
            sink = sink_process(redis_server.url, store, stream, "sink-a", log)
        producer.join(60)
        metrics = found["metrics"]
        written = counted(metrics, "written")
        assert written + counted(metrics, "dropped") == counted(metrics, "sampled") == n
        assert written == n  # Redis was up: nothing dropped
        wait_until(lambda: len(stored_ids(store)) >= 2 * n, 60, "every record stored")
        time.sleep(0.5)  # anything written twice would show now
        ids = stored_ids(store)
        assert len(ids) == 2 * n and set(ids) == {f"r{i}" for i in range(n)}  # 2 items each
        client = redis.Redis.from_url(redis_server.url)
        group = next(g for g in client.xinfo_groups(stream) if g["name"] == b"sink")
        assert group["pending"] == 0 and group["lag"] == 0
    finally:
        os.killpg(sink.pid, signal.SIGTERM)
        sink.wait(20)


def test_a_crash_between_write_and_ack_is_not_written_twice(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The exact window a SIGKILL can hit: parts written, XACK never sent. The next sink (same
    consumer) takes its pending entries back and writes none of them again; another consumer
    takes a dead one's entries over after claim_idle_s."""
    stream = "tritonstack:capture:ack-test"
    client = redis.Redis.from_url(redis_server.url)
    for i in range(30):
        client.xadd(stream, record(i).fields())  # type: ignore[arg-type]
    settings = CaptureSettings(
        redis_url=redis_server.url, stream=stream, store_url=str(tmp_path / "store"),
        consumer="first", batch_max=30, linger_s=0, claim_idle_s=0.5,
    )  # fmt: skip
    store = Store(settings.store_url)
    first = Sink(settings, client, store, SinkMetrics(CollectorRegistry()))
    first.ensure_group()

    def crash(ids: list[str]) -> None:
        raise SystemExit("killed before XACK")

    first._ack = crash  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        first.handle(first._read(">", 20, None), recovering=False)
    assert len(stored_ids(tmp_path / "store")) == 40  # 20 records written, not acknowledged
    metrics = SinkMetrics(CollectorRegistry())
    again = Sink(settings, client, store, metrics)
    assert again.recover() == 20
    assert len(stored_ids(tmp_path / "store")) == 40  # nothing written twice
    # the remaining 10: delivered to a consumer that then dies, taken over by another
    orphan = Sink(settings.model_copy(update={"consumer": "dead"}), client, store, metrics)
    assert len(orphan._read(">", 10, None)) == 10
    time.sleep(0.6)
    other = Sink(settings.model_copy(update={"consumer": "other"}), client, store, metrics)
    assert other.claim() == 10
    ids = stored_ids(tmp_path / "store")
    assert len(ids) == 60 and len(set(ids)) == 30
    group = next(g for g in client.xinfo_groups(stream) if g["name"] == b"sink")
    assert group["pending"] == 0


def test_a_dead_redis_costs_the_writer_only_counted_drops(tmp_path: Path) -> None:
    """Nothing listens: every record is dropped and counted, ``offer`` never blocks, the queue
    never passes its bound."""
    url = f"redis://127.0.0.1:{free_port()}/0"

    async def run() -> tuple[CaptureMetrics, float, int]:
        client = AsyncRedis.from_url(url, socket_timeout=0.2, socket_connect_timeout=0.2)
        metrics = CaptureMetrics(CollectorRegistry())
        writer = CaptureWriter(client, WriterOptions(queue_max=100, backoff_s=0.2), metrics)
        writer.start()
        slowest, deepest = 0.0, 0
        for i in range(2000):
            started = time.perf_counter()
            writer.offer(record(i))
            slowest = max(slowest, time.perf_counter() - started)
            deepest = max(deepest, writer.queued)
            if i % 100 == 0:
                await asyncio.sleep(0.01)
        await writer.close(timeout_s=0.5)
        await client.aclose()
        return metrics, slowest, deepest

    metrics, slowest, deepest = asyncio.run(run())
    assert counted(metrics, "sampled") == 2000 == counted(metrics, "dropped")
    assert counted(metrics, "written") == 0
    assert deepest <= 100 and slowest < 0.01


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """redis-server with the ACL arguments of deploy/k8s/components/redis/redis.yaml."""
    manifest = ROOT / "deploy/k8s/components/redis/redis.yaml"
    deployment = next(yaml.safe_load_all(manifest.read_text()))
    args = [str(a) for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]]
    acl = [
        a.replace("$(REDIS_PASSWORD)", "gw-pass").replace("$(CAPTURE_PASSWORD)", "cap-pass")
        for a in args[args.index("--user") :]
    ]
    with RedisServer(tmp_path / "redis", extra_args=acl) as server:
        yield server


def test_the_manifest_acl_lets_each_user_do_its_part_only(acl_redis: RedisServer) -> None:
    def client(user: str, password: str) -> redis.Redis:
        return redis.Redis(host=acl_redis.host, port=acl_redis.port, username=user,
                           password=password, socket_timeout=2)  # fmt: skip

    gateway, capture = client("gateway", "gw-pass"), client("capture", "cap-pass")
    fields = record(1).fields()
    gateway.xadd("tritonstack:capture", fields, maxlen=1000, approximate=True)  # type: ignore[arg-type]
    gateway.set(index_key("r1"), b"x", ex=60)
    settings = CaptureSettings(redis_url="redis://unused", consumer="c")
    sink = Sink(settings, capture, Store("memory://acl-test"), SinkMetrics(CollectorRegistry()))
    sink.ensure_group()
    entries = sink._read(">", 10, None)
    assert len(entries) == 1
    sink.handle(entries, recovering=False)  # XACK
    assert sink.claim() == 0  # XAUTOCLAIM
    sink._stats_at = 0
    sink._stats()  # XLEN, XINFO GROUPS
    assert sink.metrics.length._value.get() == 1  # type: ignore[attr-defined]
    for forbidden in (
        lambda: capture.get(index_key("r1")),  # the feedback index is the gateway's
        lambda: capture.xadd("tritonstack:capture", {b"h": b"{}"}),  # only the gateway writes
        lambda: capture.xrange("tritonstack:cache:x"),
        lambda: gateway.xreadgroup("sink", "g", {"tritonstack:capture": ">"}),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()


def test_feedback_is_taken_for_the_tenants_own_indexed_requests_only(
    redis_server: RedisServer,
) -> None:
    stream = "tritonstack:capture:feedback-test"

    async def run() -> None:
        client = AsyncRedis.from_url(redis_server.url, socket_timeout=1)
        options = WriterOptions(stream=stream, feedback_models={"driver_ranker"})
        writer = CaptureWriter(client, options)
        writer.offer(record(7))  # scored entities 7 and 8
        writer.offer(record(9, model="minilm"))  # not a feedback model: not indexed
        assert await writer.flush()
        ok = await feedback.record(
            client, feedback.FeedbackRequest(request_id="r7", outcome=1, entity_id=8), "alpha",
            stream=stream, maxlen=1000,
        )  # fmt: skip
        assert (ok.model, ok.model_version, ok.item) == ("driver_ranker", "1", 1)
        refused = [
            ("r7", "beta", {"entity_id": 8}, 404),  # another tenant's request: unknown to it
            ("nope", "alpha", {"item": 0}, 404),
            ("r9", "alpha", {"item": 0}, 404),  # minilm takes no feedback here
            ("r7", "alpha", {}, 422),  # two items: which one?
            ("r7", "alpha", {"entity_id": 5}, 422),
            ("r7", "alpha", {"item": 2}, 422),
            ("r7", "alpha", {"item": 0, "entity_id": 8}, 422),
        ]
        for request_id, tenant, extra, status in refused:
            body = feedback.FeedbackRequest(request_id=request_id, outcome=0, **extra)
            with pytest.raises(GatewayError) as caught:
                await feedback.record(client, body, tenant, stream=stream, maxlen=1000)
            assert caught.value.status == status, (request_id, tenant, extra)
        entries = await client.xrange(stream)
        kinds = [decode(fields).kind for _, fields in entries]
        assert kinds == ["inference", "inference", "feedback"]
        await client.aclose()
        dead = AsyncRedis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.2,
                                   socket_connect_timeout=0.2)  # fmt: skip
        with pytest.raises(GatewayError) as caught:
            body = feedback.FeedbackRequest(request_id="r7", outcome=1, entity_id=8)
            await feedback.record(dead, body, "alpha", stream=stream, maxlen=1000)
        assert caught.value.status == 503 and caught.value.headers["Retry-After"]
        await dead.aclose()

    asyncio.run(run())
    with pytest.raises(ValueError):
        feedback.FeedbackRequest(request_id="bad id with spaces", outcome=1)
    with pytest.raises(ValueError):
        feedback.FeedbackRequest(request_id="r1", outcome=2)
