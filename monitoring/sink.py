"""The capture sink: the Redis Stream's consumer group -> Parquet parts -> acknowledgement.

One batch at a time: read (``XREADGROUP ... >``, waiting up to ``linger_s`` for a fuller
batch), decode, write one part per partition (durably, named by its stream ids), then ``XACK``
the batch; the next batch is read only once this one is acknowledged. So after a crash a
consumer's pending entries are the one batch it was writing. On start it takes them back
(``XREADGROUP ... 0``), and entries another consumer left pending longer than
``claim_idle_s`` are taken over (``XAUTOCLAIM``); for those, entries a part already holds
(:meth:`monitoring.store.Store.written_ids`) are not written again. Nothing acknowledged is
lost, nothing is written twice. An entry that is not a capture record is counted and
acknowledged (it would block nothing, and is never retried).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis import Redis
from redis.exceptions import RedisError, ResponseError

from gateway.capture import CaptureRecord, FeedbackRecord, RecordError, decode
from monitoring.errors import StoreError
from monitoring.settings import CaptureSettings
from monitoring.store import Store
from monitoring.tables import date_of, feedback_table, inference_table

log = logging.getLogger("monitoring.sink")
Entry = tuple[str, dict[bytes, bytes] | None]
RETRY_S = 1.0
READ_COUNT = 500


class SinkMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.entries = Counter(
            "tritonstack_capture_sink_entries_total",
            "Stream entries handled: written, already_written (after a crash), invalid, trimmed",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.rows = Counter(
            "tritonstack_capture_sink_rows_total", "Rows written, per kind", ["kind"], registry=r
        )
        self.parts = Counter(
            "tritonstack_capture_sink_parts_total", "Parquet parts written", ["kind"], registry=r
        )
        self.errors = Counter(
            "tritonstack_capture_sink_errors_total", "Failures, per stage (retried)", ["stage"],
            registry=r,
        )  # fmt: skip
        self.write_seconds = Histogram(
            "tritonstack_capture_sink_batch_seconds", "Time to write and acknowledge one batch",
            registry=r,
        )  # fmt: skip
        self.lag = Gauge(
            "tritonstack_capture_sink_lag_entries",
            "Entries in the stream not yet delivered to the group", registry=r,
        )  # fmt: skip
        self.pending = Gauge(
            "tritonstack_capture_sink_pending_entries", "Delivered, not yet acknowledged",
            registry=r,
        )  # fmt: skip
        self.length = Gauge(
            "tritonstack_capture_stream_length", "Entries the stream holds", registry=r
        )
        self.last_write = Gauge(
            "tritonstack_capture_sink_last_write_timestamp_seconds",
            "When the last batch was written", registry=r,
        )  # fmt: skip


class Sink:
    def __init__(
        self, settings: CaptureSettings, redis: Redis, store: Store, metrics: SinkMetrics
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.store = store
        self.metrics = metrics
        self._stats_at = 0.0

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(
                self.settings.stream, self.settings.group, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- one batch ---------------------------------------------------------------------------
    def handle(self, entries: Sequence[Entry], *, recovering: bool) -> None:
        """Write ``entries`` (checking for parts a crash left when ``recovering``), then ack."""
        if not entries:
            return
        started = time.perf_counter()
        groups: dict[tuple[str, str, str, str], list[tuple[str, CaptureRecord | FeedbackRecord]]]
        groups = defaultdict(list)
        for stream_id, fields in entries:
            if not fields:  # trimmed from the stream before it was read back
                self.metrics.entries.labels(outcome="trimmed").inc()
                continue
            try:
                record = decode(fields)
            except RecordError as exc:
                log.warning("entry %s is not a capture record: %s", stream_id, exc)
                self.metrics.entries.labels(outcome="invalid").inc()
                continue
            kind = "feedback" if isinstance(record, FeedbackRecord) else "inferences"
            key = (kind, date_of(record.time_unix), record.model, record.version)
            groups[key].append((stream_id, record))
        for (kind, day, model, version), items in groups.items():
            folder = self.store.partition(kind, day, model, version)
            if recovering:
                done = self.store.written_ids(folder, items[0][0], items[-1][0])
                if done:
                    self.metrics.entries.labels(outcome="already_written").inc(len(done))
                    items = [(s, r) for s, r in items if s not in done]
            if not items:
                continue
            table = (
                feedback_table(items)  # type: ignore[arg-type]
                if kind == "feedback"
                else inference_table(items)  # type: ignore[arg-type]
            )
            self.store.write_part(folder, table, items[0][0], items[-1][0])
            self.metrics.parts.labels(kind=kind).inc()
            self.metrics.rows.labels(kind=kind).inc(table.num_rows)
            self.metrics.entries.labels(outcome="written").inc(len(items))
        self._ack([stream_id for stream_id, _ in entries])
        self.metrics.write_seconds.observe(time.perf_counter() - started)
        self.metrics.last_write.set(time.time())

    def _ack(self, ids: list[str]) -> None:
        """Acknowledge, retrying until Redis takes it (the parts are written: a crash here only
        means they are checked again)."""
        while True:
            try:
                self.redis.xack(self.settings.stream, self.settings.group, *ids)
                return
            except RedisError as exc:
                self.metrics.errors.labels(stage="ack").inc()
                log.warning("XACK failed (%s); retrying", exc)
                time.sleep(RETRY_S)

    def _handle_safely(self, entries: Sequence[Entry], *, recovering: bool) -> None:
        while True:
            try:
                self.handle(entries, recovering=recovering)
                return
            except StoreError as exc:
                self.metrics.errors.labels(stage="write").inc()
                log.warning("writing a batch failed (%s); retrying", exc)
                recovering = True  # some of its parts may be written
                time.sleep(RETRY_S)

    # -- reading -----------------------------------------------------------------------------
    def _read(self, stream_id: str, count: int, block_ms: int | None) -> list[Entry]:
        s = self.settings
        answer: Any = self.redis.xreadgroup(
            s.group, s.consumer, {s.stream: stream_id}, count=count, block=block_ms
        )
        return [(_text(i), f) for i, f in answer[0][1]] if answer else []

    def recover(self) -> int:
        """This consumer's own pending entries (a batch a crash interrupted), then others'."""
        taken = 0
        while entries := self._read("0", self.settings.batch_max, None):
            self._handle_safely(entries, recovering=True)
            taken += len(entries)
        return taken + self.claim()

    def claim(self) -> int:
        s = self.settings
        taken, start = 0, "0-0"
        while True:
            answer: Any = self.redis.xautoclaim(
                s.stream, s.group, s.consumer, int(s.claim_idle_s * 1000), start_id=start,
                count=s.batch_max,
            )  # fmt: skip
            start, claimed = _text(answer[0]), [(_text(i), f) for i, f in answer[1]]
            self._handle_safely(claimed, recovering=True)
            taken += len(claimed)
            if start == "0-0":
                return taken

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set (the batch in hand is written and acknowledged first)."""
        s = self.settings
        claimed_at = 0.0
        while not stop.is_set():
            try:
                self.ensure_group()
                self.recover()
                claimed_at = time.monotonic()
                while not stop.is_set():
                    batch = self._gather(stop)
                    self._handle_safely(batch, recovering=False)
                    if time.monotonic() - claimed_at > s.claim_idle_s / 2:
                        self.claim()
                        claimed_at = time.monotonic()
                    self._stats()
            except RedisError as exc:  # Redis down or restarted (its group then is gone)
                self.metrics.errors.labels(stage="read").inc()
                log.warning("reading the stream failed (%s); retrying", exc)
                stop.wait(RETRY_S)

    def _gather(self, stop: threading.Event) -> list[Entry]:
        s = self.settings
        batch: list[Entry] = []
        size = 0
        first_at: float | None = None
        while not stop.is_set() and len(batch) < s.batch_max and size < s.batch_max_bytes:
            wait_ms = s.block_ms
            if first_at is not None:
                left = s.linger_s - (time.monotonic() - first_at)
                if left <= 0:
                    break
                wait_ms = max(1, min(wait_ms, int(left * 1000)))
            entries = self._read(">", min(READ_COUNT, s.batch_max - len(batch)), wait_ms)
            if entries and first_at is None:
                first_at = time.monotonic()
            batch.extend(entries)
            size += sum(len(v) for _, f in entries for v in (f or {}).values())
            if not entries and first_at is None and batch == []:
                self._stats()
        return batch

    def _stats(self) -> None:
        now = time.monotonic()
        if now - self._stats_at < 5.0:
            return
        self._stats_at = now
        s = self.settings
        try:
            length: Any = self.redis.xlen(s.stream)
            groups: Any = self.redis.xinfo_groups(s.stream)
            self.metrics.length.set(length)
            for group in groups:
                if _text(group["name"]) == s.group:
                    self.metrics.pending.set(group["pending"])
                    if group.get("lag") is not None:
                        self.metrics.lag.set(group["lag"])
        except RedisError:
            self.metrics.errors.labels(stage="stats").inc()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
