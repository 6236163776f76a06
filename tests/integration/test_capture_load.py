"""Capture under load, through the real gateway: every request answered, every sampled record
written or counted as dropped, a SIGKILLed sink loses no record Redis took, and Redis killed
in the middle costs no request (only counted drops)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.local.gateway import GatewayProcess
from deploy.local.monitoring import MonitoringProcess
from deploy.local.process import kill_process_group
from deploy.local.redis import RedisServer
from deploy.local.triton import TritonServer
from monitoring.store import Store
from tests.fixtures_gateway import UNLIMITED_KEY, StartGateway

pytestmark = pytest.mark.integration
STREAM = "tritonstack:capture:load"
CLIENTS = 8
PER_CLIENT = 120


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    start_gateway: StartGateway,
    ranker_triton: TritonServer,
) -> Iterator[dict[str, Any]]:
    """Its own redis-server (this module kills it), a capturing gateway, the sink."""
    base = tmp_path_factory.mktemp("capture-load")
    redis = RedisServer(base / "redis").start()
    gateway = start_gateway(
        ranker_triton.grpc_url, redis.url,
        extra_env={"GATEWAY_CAPTURE_ENABLED": "true", "GATEWAY_CAPTURE_STREAM": STREAM,
                   "GATEWAY_CAPTURE_SAMPLE_RATES": '{"*": 1.0}'},
    )  # fmt: skip
    found = {"base": base, "redis": redis, "gateway": gateway, "store": str(base / "store")}
    found["sink"] = _sink(found).start()
    try:
        yield found
    finally:
        found["sink"].stop()
        found["redis"].stop()


def _sink(stack: dict[str, Any]) -> MonitoringProcess:
    return MonitoringProcess(
        "capture", stack["base"] / "sink", store_url=stack["store"],
        redis_url=stack["redis"].url,
        settings={"CAPTURE_STREAM": STREAM, "CAPTURE_LINGER_S": "0.1", "CAPTURE_BATCH_MAX": "200",
                  "CAPTURE_BLOCK_MS": "100", "CAPTURE_CONSUMER": "load-sink"},
    )  # fmt: skip


def capture_counts(gateway: GatewayProcess) -> dict[str, float]:
    text = httpx.get(gateway.metrics_url, timeout=10).text
    counts = {"sampled": 0.0, "written": 0.0, "dropped": 0.0, "queued": 0.0, "redis_error": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removeprefix("gateway_capture_").removesuffix("_total")
            if name in counts:
                counts[name] += sample.value
            if name == "queued_records":
                counts["queued"] += sample.value
            if name == "dropped" and sample.labels.get("reason") == "redis_error":
                counts["redis_error"] += sample.value
    return counts


def load(gateway: GatewayProcess, during: Callable[[int], None]) -> tuple[list[int], list[str]]:
    """CLIENTS threads x PER_CLIENT requests of 2 rows; ``during(done)`` runs on the side."""
    statuses: list[int] = []
    ids: list[str] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        headers = {"Authorization": f"Bearer {UNLIMITED_KEY}"}
        with httpx.Client(base_url=gateway.url, headers=headers, timeout=30) as http:
            for _ in range(PER_CLIENT):
                rows = np.column_stack([rng.random(2), rng.random(2), rng.integers(0, 30, 2)])
                tensor = {"name": "features", "datatype": "FP32", "shape": [2, 3]}
                body = {"inputs": [{**tensor, "data": rows.ravel().tolist()}]}
                answer = http.post("/v2/models/driver_ranker/infer", json=body)
                with lock:
                    statuses.append(answer.status_code)
                    ids.append(answer.headers.get("X-Request-Id", ""))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        during(len(statuses))
        time.sleep(0.05)
    return statuses, ids


def settled(gateway: GatewayProcess, before: dict[str, float]) -> dict[str, float]:
    """The counters' growth once the writer's queue is empty."""
    deadline = time.monotonic() + 15
    while (now := capture_counts(gateway))["queued"] > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return {k: now[k] - before.get(k, 0.0) for k in now}


def stored_ids(store: str) -> list[str]:
    table = Store(store).read(
        "inferences", "driver_ranker", datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC)
    )
    return [] if table is None else table.column("request_id").to_pylist()


def test_a_killed_sink_under_load_loses_no_acknowledged_record(stack: dict[str, Any]) -> None:
    gateway = stack["gateway"]
    before = capture_counts(gateway)
    killed: list[int] = []

    def kill_the_sink_once(done: int) -> None:
        if not killed and done >= CLIENTS * PER_CLIENT // 3:
            old = stack["sink"]
            kill_process_group(old.pid)  # SIGKILL: the batch in hand neither finished nor acked
            old.stop()  # reaps it
            stack["sink"] = _sink(stack).start()  # the same consumer name takes its batch back
            killed.append(done)

    statuses, ids = load(gateway, kill_the_sink_once)
    assert killed, "the load ended before the sink was killed"
    assert len(statuses) == CLIENTS * PER_CLIENT and set(statuses) == {200}  # sent = answered
    grown = settled(gateway, before)
    assert grown["sampled"] == len(ids)  # 100 %: every request
    assert grown["written"] + grown["dropped"] == grown["sampled"]
    assert grown["dropped"] == 0  # Redis was up all along
    deadline = time.monotonic() + 60
    while len(stored_ids(stack["store"])) < 2 * len(ids) and time.monotonic() < deadline:
        time.sleep(0.2)
    stored = stored_ids(stack["store"])
    assert len(stored) == 2 * len(ids), "rows lost or written twice"
    assert set(stored) == set(ids)  # every acknowledged record, each once (two rows each)


def test_redis_killed_under_load_costs_no_request(stack: dict[str, Any]) -> None:
    gateway, redis = stack["gateway"], stack["redis"]
    before = capture_counts(gateway)
    events: list[str] = []

    def kill_and_restart_redis(done: int) -> None:
        if not events and done >= CLIENTS * PER_CLIENT // 4:
            kill_process_group(redis.pid)
            redis.stop()  # reaps it
            events.append("killed")
        elif events == ["killed"] and done >= CLIENTS * PER_CLIENT // 2:
            stack["redis"] = RedisServer(redis.work_dir, port=redis.port).start()
            events.append("restarted")

    statuses, ids = load(gateway, kill_and_restart_redis)
    assert events == ["killed", "restarted"], events
    assert len(statuses) == CLIENTS * PER_CLIENT and set(statuses) == {200}, {
        s: statuses.count(s) for s in set(statuses)
    }
    grown = settled(gateway, before)
    assert grown["sampled"] == len(ids)
    assert grown["written"] + grown["dropped"] == grown["sampled"]
    assert grown["redis_error"] > 0  # what Redis could not take was dropped, and counted
    assert grown["written"] > 0  # and capture resumed once Redis was back
