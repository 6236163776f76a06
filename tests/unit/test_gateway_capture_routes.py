"""Capture and feedback through the gateway's routes against fakes (FakeTriton, an in-memory
Redis): what a sampled request records, that capture never changes or fails an answer, that
capture off adds nothing, and ``POST /v1/feedback``'s answers. The same against the real
Triton, Redis, sink and monitor: tests/integration/test_monitoring.py, test_capture_load.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError

from features.schema import MODEL_FEATURES
from gateway.app import create_app
from gateway.capture import CaptureRecord, FeedbackRecord, Sampler, Tensor, decode, text_hash
from gateway.capture_writer import CaptureMetrics, CaptureWriter, WriterOptions
from gateway.capturing import Capture
from gateway.services import Services
from gateway.settings import GatewaySettings
from gateway.tenants import TenantConfig, hash_key
from tests.fake_triton import DIM, FakeTriton
from tests.unit.test_gateway_routes import _Features

ALPHA_KEY = "ts_capture-alpha-0123456789abcdefghijk"
BETA_KEY = "ts_capture-beta-0123456789abcdefghijkl"
ALPHA = {"Authorization": f"Bearer {ALPHA_KEY}"}
BETA = {"Authorization": f"Bearer {BETA_KEY}"}
TENANTS = {
    name: TenantConfig(key_sha256=[hash_key(key)], models=["*"], rate_per_s=1e6, burst=10**6)
    for name, key in (("alpha", ALPHA_KEY), ("beta", BETA_KEY))
}
STREAM = "tritonstack:capture"
WIDTH = 5  # the fake driver_ranker's features per row


class FakeRedis:
    """What the capture writer and feedback use of redis.asyncio: pipelined XADD/SET, GET, XADD."""

    def __init__(self) -> None:
        self.streams: dict[str, list[dict[bytes, bytes]]] = defaultdict(list)
        self.values: dict[str, bytes] = {}
        self.down = False

    def pipeline(self, transaction: bool = True) -> _Pipeline:
        return _Pipeline(self)

    async def get(self, key: str) -> bytes | None:
        if self.down:
            raise RedisConnectionError("connection refused")
        return self.values.get(key)

    async def xadd(self, stream: str, fields: dict[bytes, bytes], **_: Any) -> bytes:
        if self.down:
            raise RedisConnectionError("connection refused")
        self.streams[stream].append(fields)
        return f"{len(self.streams[stream])}-0".encode()

    async def aclose(self) -> None:
        return None


class _Pipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis, self.ops = redis, []  # type: ignore[var-annotated]

    def xadd(self, stream: str, fields: dict[bytes, bytes], **_: Any) -> None:
        self.ops.append(lambda: self.redis.streams[stream].append(fields))

    def set(self, key: str, value: bytes, ex: int | None = None) -> None:
        self.ops.append(lambda: self.redis.values.__setitem__(key, value))

    async def execute(self) -> list[Any]:
        if self.redis.down:
            raise RedisConnectionError("connection refused")
        return [op() for op in self.ops]


def _settings(**overrides: Any) -> GatewaySettings:
    return GatewaySettings(
        tenants=TENANTS, environment="development", metrics_port=0, probe_interval_s=0,
        scoring_enabled=False, **overrides,
    )  # fmt: skip


class Captured:
    """An app whose capture writes into a FakeRedis; ``flush()`` runs the writer's round trip."""

    def __init__(self, client: TestClient, redis: FakeRedis) -> None:
        self.client, self.redis = client, redis
        svc: Services = client.app.state.services  # type: ignore[attr-defined]
        self.registry = CollectorRegistry()
        self.metrics = CaptureMetrics(self.registry)
        # a partial batch waits 30 s: only settle() (feedback, records()) makes it go sooner
        options = WriterOptions(feedback_models={"driver_ranker"}, flush_interval_s=30)
        self.writer = CaptureWriter(redis, options, self.metrics)  # type: ignore[arg-type]
        svc.redis = redis  # type: ignore[assignment]
        svc.capture = Capture(Sampler({"*": 1.0}), self.writer)
        assert client.portal is not None
        self.portal = client.portal
        self.portal.call(self.writer.start)  # its task, in the app's event loop

    def records(self) -> list[CaptureRecord | FeedbackRecord]:
        self.portal.call(self.writer.settle, 5.0)
        return [decode(entry) for entry in self.redis.streams[STREAM]]

    def count(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(f"gateway_capture_{name}_total", labels) or 0.0


@pytest.fixture
def captured() -> Iterator[Captured]:
    app = create_app(_settings(), upstream=FakeTriton(), features=_Features())  # type: ignore[arg-type]
    with TestClient(app) as client:
        yield Captured(client, FakeRedis())


def _ranker(rows: np.ndarray) -> dict[str, Any]:
    tensor = {"name": "features", "datatype": "FP32", "shape": list(rows.shape)}
    return {"inputs": [{**tensor, "data": rows.ravel().tolist()}]}


def test_capture_off_adds_no_header_and_no_metric() -> None:
    with TestClient(create_app(_settings(), upstream=FakeTriton())) as client:
        assert client.app.state.services.capture is None  # type: ignore[attr-defined]
        rows = np.ones((2, WIDTH), np.float32)
        answer = client.post("/v2/models/driver_ranker/infer", json=_ranker(rows), headers=ALPHA)
        assert answer.status_code == 200 and "x-request-id" not in answer.headers
        registry = client.app.state.services.metrics.registry  # type: ignore[attr-defined]
        assert registry.get_sample_value("gateway_capture_sampled_total", {"model": "x"}) is None


def test_v2_records_inputs_outputs_and_the_cache_hit_without_outputs(captured: Captured) -> None:
    rows = np.arange(2 * WIDTH, dtype=np.float32).reshape(2, -1)
    first = captured.client.post("/v2/models/driver_ranker/infer", json=_ranker(rows),
                                 headers=ALPHA)  # fmt: skip
    again = captured.client.post("/v2/models/driver_ranker/infer", json=_ranker(rows),
                                 headers=ALPHA)  # fmt: skip
    assert (first.status_code, again.headers["x-cache"]) == (200, "HIT"), first.text
    miss, hit = captured.records()
    assert isinstance(miss, CaptureRecord) and isinstance(hit, CaptureRecord)
    assert miss.request_id == first.headers["x-request-id"] != hit.request_id
    assert (miss.tenant, miss.model, miss.version, miss.items) == ("alpha", "driver_ranker", "1", 2)
    tensors = {t.name: t for t in miss.tensors}
    np.testing.assert_array_equal(tensors["features"].array, rows)
    np.testing.assert_array_equal(np.asarray(tensors["score"].array).ravel(), rows.sum(axis=1))
    assert (miss.cache, hit.cache) == ("miss", "hit")
    assert [t.name for t in hit.tensors] == ["features"]  # the cache kept no outputs
    assert captured.redis.values  # indexed for feedback (driver_ranker takes it)


def test_score_and_embeddings_records(captured: Captured) -> None:
    score = captured.client.post("/v1/score", json={"entity_ids": [7, 8, 9]}, headers=ALPHA)
    texts = ["a private sentence", "another one"]
    embedded = captured.client.post("/v1/embeddings", json={"input": texts, "model": "minilm"},
                                    headers=ALPHA)  # fmt: skip
    assert score.status_code == embedded.status_code == 200, (score.text, embedded.text)
    scored, encoded = captured.records()
    assert isinstance(scored, CaptureRecord) and isinstance(encoded, CaptureRecord)
    assert (scored.route, scored.entity_ids, scored.items) == ("/v1/score", (7, 8, 9), 3)
    tensors = {t.name: np.asarray(t.array) for t in scored.tensors}
    assert tensors["features"].shape == (3, len(MODEL_FEATURES))
    assert tensors["score"].ravel().tolist() == [s["score"] for s in score.json()["scores"]]
    assert (encoded.model, encoded.route) == ("minilm", "/v1/embeddings")
    by_name = {t.name: t.array for t in encoded.tensors}
    assert list(by_name["text_sha"]) == [text_hash(t) for t in texts]
    assert "text" not in by_name and "private" not in repr(encoded.tensors)  # off by default
    assert np.asarray(by_name["sentence_embedding"]).shape == (2, DIM)
    assert list(np.asarray(by_name["token_count"])) == [7, 7]


def test_capture_never_fails_an_answer(captured: Captured, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> CaptureRecord:
        raise RuntimeError("a bug in a builder")

    monkeypatch.setattr("gateway.capturing.tensors_record", broken)
    rows = np.ones((1, WIDTH), np.float32)
    answer = captured.client.post("/v2/models/driver_ranker/infer", json=_ranker(rows),
                                  headers=ALPHA)  # fmt: skip
    assert answer.status_code == 200 and answer.json()["outputs"]
    assert captured.count("dropped", model="driver_ranker", reason="build_error") == 1
    monkeypatch.undo()
    captured.redis.down = True  # Redis down: answered, the record dropped and counted
    answer = captured.client.post("/v1/score", json={"entity_ids": [1]}, headers=ALPHA)
    assert answer.status_code == 200
    assert captured.records() == []
    assert captured.count("dropped", model="driver_ranker", reason="redis_error") == 1
    assert captured.count("sampled", model="driver_ranker") == 2


def test_feedback_is_the_tenants_own_and_says_what_to_fix(captured: Captured) -> None:
    client = captured.client
    score = client.post("/v1/score", json={"entity_ids": [11, 12]}, headers=ALPHA)
    request_id = score.headers["x-request-id"]  # feedback at once: the index may still be queued
    ok = client.post("/v1/feedback", headers=ALPHA,
                     json={"request_id": request_id, "entity_id": 12, "outcome": 1})  # fmt: skip
    assert ok.status_code == 202, ok.text
    assert ok.json() == {"request_id": request_id, "model": "driver_ranker",
                         "model_version": "1", "item": 1, "status": "recorded"}  # fmt: skip
    cases = [
        (BETA, {"request_id": request_id, "item": 0, "outcome": 1}, 404, "no answered request"),
        (ALPHA, {"request_id": "f" * 32, "outcome": 1}, 404, "no answered request"),
        (ALPHA, {"request_id": request_id, "outcome": 0}, 422, "say which with entity_id"),
        (ALPHA, {"request_id": request_id, "entity_id": 5, "outcome": 1}, 422, "did not score"),
        (ALPHA, {"request_id": request_id, "item": 2, "outcome": 1}, 422, "item must be < 2"),
        (ALPHA, {"request_id": request_id, "outcome": 7}, 422, "outcome"),
        (ALPHA, {"outcome": 1}, 422, "request_id"),
    ]
    for headers, body, status, fragment in cases:
        answer = client.post("/v1/feedback", json=body, headers=headers)
        assert answer.status_code == status, (body, answer.text)
        assert fragment in answer.json()["error"]["message"], answer.text
    assert client.post("/v1/feedback", json={"request_id": request_id}).status_code == 401
    feedback = [r for r in captured.records() if isinstance(r, FeedbackRecord)]
    assert [(f.request_id, f.item, f.outcome, f.tenant) for f in feedback] == [
        (request_id, 1, 1.0, "alpha")
    ]
    captured.redis.down = True
    down = client.post("/v1/feedback", headers=ALPHA,
                       json={"request_id": request_id, "entity_id": 12, "outcome": 1})  # fmt: skip
    assert down.status_code == 503 and down.headers["retry-after"] == "1"


def test_feedback_without_capture_is_404_that_says_why() -> None:
    with TestClient(create_app(_settings(), upstream=FakeTriton())) as client:
        answer = client.post("/v1/feedback", json={"request_id": "ab", "outcome": 1}, headers=ALPHA)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "feedback_disabled"
        assert "capture" in answer.json()["error"]["message"]


def test_the_writers_queue_is_bounded_in_records_and_in_bytes() -> None:
    registry = CollectorRegistry()
    options = WriterOptions(queue_max=3, queue_max_bytes=1000, max_record_bytes=600)
    writer = CaptureWriter(FakeRedis(), options, CaptureMetrics(registry))  # type: ignore[arg-type]

    def record(nbytes: int) -> CaptureRecord:
        array = np.zeros(nbytes // 4, np.float32)
        return CaptureRecord("r", 0.0, "alpha", "m", "1", "/v2", 1.0, 1,
                             (Tensor("x", "input", array.reshape(1, -1)),))  # fmt: skip

    taken = [writer.offer(record(n)) for n in (400, 400, 400, 800, 100, 100, 100)]
    assert taken == [True, True, False, False, True, False, False]  # bytes, too large, records
    dropped = {
        reason: registry.get_sample_value(
            "gateway_capture_dropped_total", {"model": "m", "reason": reason}
        )
        for reason in ("queue_full", "too_large")
    }
    assert dropped == {"queue_full": 3.0, "too_large": 1.0}
    assert registry.get_sample_value("gateway_capture_queued_records") == 3
