"""Shadow copies: a bounded queue and a few workers, never in the primary's way.

The primary path hands a finished request to ``ShadowMirror.offer`` after its own answer is
made: a non-blocking put into a queue of ``queue_size`` jobs; a full queue drops the copy and
counts it (``dropped``), so a slow or dead shadow version costs the primary nothing but that
put. ``workers`` tasks take jobs, call the shadow version (each call bounded by ``timeout_s``),
compare its outputs with the primary's (:mod:`gateway.agreement`) and record the figures
(:class:`gateway.rollout_stats.StepRecorder`); a failed shadow call is recorded as a shadow
error and never reaches a client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import numpy as np

from gateway.agreement import compare, within
from gateway.rollout_stats import StepRecorder
from gateway.traffic import ModelRoute

log = logging.getLogger("gateway")
Outputs = Mapping[str, np.ndarray]
Observer = Callable[[ModelRoute, str], None]  # (route, outcome: within|outside|error|dropped)


@dataclass(frozen=True)
class ShadowJob:
    route: ModelRoute  # with its shadow set
    call: Callable[[], Awaitable[Outputs]]  # the same request to the shadow version
    primary: Outputs  # the primary's answer, as arrays
    batched: bool  # the first dimension is the batch (rows are compared one by one)


class ShadowMirror:
    def __init__(
        self,
        recorder: StepRecorder,
        *,
        queue_size: int,
        workers: int,
        timeout_s: float,
        observe: Observer | None = None,
    ) -> None:
        self.recorder = recorder
        self.timeout_s = timeout_s
        self.observe = observe
        self._queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=queue_size)
        self._workers_wanted = workers
        self._workers: list[asyncio.Task[None]] = []
        self._stopping = False
        self.dropped = 0

    def offer(self, job: ShadowJob) -> bool:
        """Queue ``job`` without waiting; False (dropped, counted) when the queue is full."""
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.dropped += 1
            self.recorder.shadow_failed(job.route, dropped=True)
            if self.observe:
                self.observe(job.route, "dropped")
            return False
        return True

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        """Start the workers (inside the serving loop)."""
        self._stopping = False
        self._workers = [asyncio.create_task(self._work()) for _ in range(self._workers_wanted)]

    async def stop(self) -> None:
        """Stop the workers. A cancellation that Python 3.11's ``wait_for`` swallowed (the
        shadow call finished at that moment) would leave a worker waiting on the queue for
        ever: the workers also stop at the flag, and are cancelled again until they are done."""
        self._stopping = True
        workers, self._workers = self._workers, []
        for _ in range(5):
            pending = [task for task in workers if not task.done()]
            if not pending:
                break
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=1.0)
        for task in workers:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a worker ends only by cancellation or the flag

    async def _work(self) -> None:
        while not self._stopping:
            job = await self._queue.get()
            try:
                await self.run(job)
            finally:
                self._queue.task_done()

    async def run(self, job: ShadowJob) -> str:
        """Call, compare and record one job; its outcome (within, outside, error)."""
        shadow = job.route.shadow
        assert shadow is not None
        try:
            answer = await asyncio.wait_for(job.call(), self.timeout_s)
            figures = compare(shadow.metric, job.primary, answer, batched=job.batched)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the shadow failed: recorded, never raised to anyone
            log.debug("shadow call to %s version %s failed: %s", shadow.model, shadow.version, exc)
            figures = None
        if figures is None or figures.size == 0:
            self.recorder.shadow_failed(job.route)
            outcome = "error"
        else:
            ok = within(shadow.metric, figures, shadow.budget)
            worst = float(figures.max() if shadow.metric == "rel_l2" else figures.min())
            self.recorder.shadow(
                job.route, int(figures.size), int(np.count_nonzero(ok)), float(figures.sum()), worst
            )
            outcome = "within" if bool(ok.all()) else "outside"
        if self.observe:
            self.observe(job.route, outcome)
        return outcome
