"""The bounded, asynchronous writer of capture records to a Redis Stream.

A request hands its record to :meth:`CaptureWriter.offer` (no I/O, no await: it never delays or
fails the request) and the writer's own task sends what queued in one pipelined round trip
(``XADD ... MAXLEN ~ N`` per record, plus ``SET ... EX`` of the feedback index for the models
that take feedback). The queue is bounded: a full queue drops the new record; a failed or slow
round trip (the client's socket deadline) drops its batch, and the writer then backs off before
it tries Redis again. Every record is counted once as sampled and, in the end, once as written or
dropped (by reason): ``written + dropped = sampled`` once the queue is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.capture import CaptureRecord, index_key, index_value

log = logging.getLogger("gateway.capture")


@dataclass(frozen=True)
class WriterOptions:
    stream: str = "tritonstack:capture"
    maxlen: int = 100_000  # entries the stream keeps (approximately): Redis' memory bound
    queue_max: int = 10_000  # records waiting in this process; past it new ones are dropped
    queue_max_bytes: int = 64 << 20  # and their tensors' bytes: the process' memory bound
    batch_max: int = 256  # records per round trip
    max_record_bytes: int = 1 << 20  # larger records are dropped (reason "too_large")
    flush_interval_s: float = 0.05  # a partial batch waits at most this long
    backoff_s: float = 1.0  # after a failed round trip, records queue (bounded) this long
    feedback_models: Collection[str] = ()  # their requests are indexed for feedback
    index_ttl_s: int = 3600  # how long feedback may follow its request


class CaptureMetrics:
    """``gateway_capture_*``: sampled = written + dropped (+ queued right now)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sampled = Counter(
            "gateway_capture_sampled_total", "Requests chosen for capture, per model",
            ["model"], registry=registry,
        )  # fmt: skip
        self.written = Counter(
            "gateway_capture_written_total", "Capture records Redis acknowledged, per model",
            ["model"], registry=registry,
        )  # fmt: skip
        self.dropped = Counter(
            "gateway_capture_dropped_total",
            "Capture records dropped, per model and reason (queue_full, redis_error, too_large)",
            ["model", "reason"], registry=registry,
        )  # fmt: skip
        self.queued = Gauge(
            "gateway_capture_queued_records", "Capture records waiting to be sent or being sent",
            registry=registry,
        )  # fmt: skip


class CaptureWriter:
    def __init__(
        self, redis: Redis, options: WriterOptions, metrics: CaptureMetrics | None = None
    ) -> None:
        self.redis = redis
        self.options = options
        self.metrics = metrics or CaptureMetrics(CollectorRegistry())
        self._queue: deque[tuple[CaptureRecord, int]] = deque()  # each with its size
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._retry_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._sending = 0  # records of the round trip under way
        self._accepted = self._settled = 0  # records queued, ever; of those, written or dropped
        # read at scrape time: queued + being sent, so 0 means every offered record was settled
        self.metrics.queued.set_function(lambda: len(self._queue) + self._sending)

    # -- the request side: O(1), never awaits ------------------------------------------------
    def offer(self, record: CaptureRecord) -> bool:
        """Queue ``record`` (counted as sampled); False when it was dropped at once."""
        metrics = self.metrics
        metrics.sampled.labels(model=record.model).inc()
        size, options = record.size(), self.options
        if size > options.max_record_bytes:
            metrics.dropped.labels(model=record.model, reason="too_large").inc()
            return False
        if (
            len(self._queue) >= options.queue_max
            or self._queued_bytes + size > options.queue_max_bytes
            or self._closing
        ):
            metrics.dropped.labels(model=record.model, reason="queue_full").inc()
            return False
        self._queue.append((record, size))
        self._queued_bytes += size
        self._accepted += 1
        if len(self._queue) >= self.options.batch_max:
            self._wake.set()
        return True

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- the writer's task --------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="capture-writer")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.options.flush_interval_s)
            self._wake.clear()
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            while self._queue:
                if not await self.flush():
                    break

    async def flush(self) -> bool:
        """Send up to ``batch_max`` queued records in one round trip; False when it failed."""
        options = self.options
        taken = [self._queue.popleft() for _ in range(min(len(self._queue), options.batch_max))]
        self._queued_bytes -= sum(size for _, size in taken)
        batch = [record for record, _ in taken]
        if not batch:
            return True
        self._sending = len(batch)
        pipe = self.redis.pipeline(transaction=False)
        for record in batch:
            fields: dict[Any, Any] = record.fields()  # redis-py types its own key union
            pipe.xadd(options.stream, fields, maxlen=options.maxlen, approximate=True)
            if record.model in options.feedback_models:
                pipe.set(index_key(record.request_id), index_value(record), ex=options.index_ttl_s)
        try:
            await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._retry_at = time.monotonic() + options.backoff_s
            log.warning("capture: %d records dropped, Redis failed: %s", len(batch), exc)
            self._drop(batch, "redis_error")
            return False
        except asyncio.CancelledError:  # closing mid-round-trip: unknown fate, counted dropped
            self._drop(batch, "redis_error")
            raise
        finally:
            self._sending = 0
            self._settled += len(batch)
        for record in batch:
            self.metrics.written.labels(model=record.model).inc()
        return True

    async def settle(self, timeout_s: float = 0.5) -> bool:
        """Wait (at most ``timeout_s``) until the records queued before now were written or
        dropped; False at once when none was waiting (feedback right after its request)."""
        target = self._accepted
        if self._settled >= target:
            return False
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        while self._settled < target and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return True

    async def close(self, timeout_s: float = 1.0) -> None:
        """Stop taking records, send what queued within ``timeout_s``, drop (and count) the rest."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(TimeoutError):
            while self._queue and time.monotonic() < deadline:
                if not await asyncio.wait_for(self.flush(), max(deadline - time.monotonic(), 0)):
                    break
        self._drop([record for record, _ in self._queue], "redis_error")
        self._settled += len(self._queue)
        self._queue.clear()
        self._queued_bytes = 0

    def _drop(self, records: list[CaptureRecord], reason: str) -> None:
        for record in records:
            self.metrics.dropped.labels(model=record.model, reason=reason).inc()
