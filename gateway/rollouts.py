"""The gateway's side of rollouts: which version answers a request, what it did, a shadow copy.

Per request, in O(1) and with nothing built that a table change can build (``_use`` builds
every pick of every route when the table changes): the route of the model the client called
(``gateway.traffic``, kept current from Redis by ``gateway.traffic_store.RouteStore``) picks the
caller's arm from its sticky key (``X-Routing-Key``, else its tenant), or a pinned version
(``/v2/models/{m}/versions/{v}/infer``) names one. A model without a route costs one dictionary
look-up. ``Routed.infer`` calls the arm's Triton model and version, makes the answer say the
version (v2 ``model_version``) and offers a sampled copy to the shadow version
(``gateway.shadow``: a non-blocking put; the primary never waits for it or sees it fail).
``Routed.produce`` times the request's upstream part, records it per version (Prometheus, with a
``version`` label; a rollout's step figures, summed in Redis by ``gateway.rollout_stats``) and
adds the ``X-Model-Version`` header, which the cache keeps with the answer; ``Routed.version``
goes into the cache key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from redis.asyncio import Redis

from gateway.cache import CachedResponse
from gateway.errors import GatewayError, bad_request, not_found
from gateway.metrics import Metrics
from gateway.models import ModelInfo
from gateway.rollout_stats import StepRecorder
from gateway.settings import GatewaySettings
from gateway.shadow import Outputs, ShadowJob, ShadowMirror
from gateway.tenants import Tenant
from gateway.traffic import ROUTING_KEY_HEADER, VERSION_HEADER, ModelRoute, RouteTable, sticky_key
from gateway.traffic_store import RouteStore, load_file
from gateway.triton import Output
from gateway.upstream import Upstream

log = logging.getLogger("gateway")


@dataclass(frozen=True, slots=True)
class Pick:
    route: ModelRoute | None  # None: the model has no route (pinned or not)
    version: str  # the version the client is told ("": the one Triton answers with)
    target: str  # the Triton model to call ("": the model the client called)
    target_version: str  # its version ("": the newest Triton serves)
    mirror: bool  # a copy goes to the route's shadow


UNROUTED = Pick(None, "", "", "", False)
Produce = Callable[[], Awaitable[tuple[CachedResponse, str]]]  # as gateway.admission's
Picks = dict[str, tuple[ModelRoute, dict[str, Pick], dict[str, Pick]]]  # route, arms, pinned


def float_outputs(result: Any) -> Outputs:
    """An answer's floating-point outputs as arrays (what a shadow comparison reads)."""
    names = [o.name for o in result.get_response().outputs if o.datatype[:2] in ("FP", "BF")]
    return {name: result.as_numpy(name) for name in names}


def build_picks(table: RouteTable) -> Picks:
    """Every pick of every route: the arms (mirrored when the route has a shadow) and the
    versions a caller may pin (the arms and the shadow, never mirrored)."""
    built: Picks = {}
    for name, route in table.routes.items():
        mirrored = route.shadow is not None
        arms = {a.version: Pick(route, a.version, a.model, a.model_version, mirrored)
                for a in route.arms}  # fmt: skip
        pinned = {v: Pick(route, v, p.target, p.target_version, False) for v, p in arms.items()}
        if route.shadow is not None:
            s = route.shadow
            pinned.setdefault(s.version, Pick(route, s.version, s.model, s.model_version, False))
        built[name] = (route, arms, pinned)
    return built


class Routed:
    """One request's pick: what ``produce`` calls instead of ``Upstream.infer``."""

    __slots__ = ("_rollouts", "model", "pick")

    def __init__(self, rollouts: Rollouts, model: ModelInfo, pick: Pick) -> None:
        self._rollouts, self.model, self.pick = rollouts, model, pick

    @property
    def version(self) -> str | None:
        """The version in the cache key (None: the model's newest, as without routes)."""
        return self.pick.version or None

    async def infer(
        self,
        model: ModelInfo,
        inputs: Sequence[Any],
        outputs: Sequence[Output] | None = None,
        *,
        request_id: str = "",
    ) -> Any:
        pick, upstream = self.pick, self._rollouts.upstream
        target = model
        if pick.target and pick.target != model.name:  # a pinned pipeline (metadata cached)
            target = await upstream.model(pick.target)
        result = await upstream.infer(
            target, inputs, outputs, request_id=request_id, version=pick.target_version
        )
        if pick.route is not None:
            response = result.get_response()
            response.model_name, response.model_version = model.name, pick.version
            if pick.mirror:
                self._rollouts.offer(pick.route, model, inputs, outputs, result)
        return result

    def produce(self, produce: Produce, shown: str = "") -> Produce:
        """``produce``, timed, recorded per version, its answer saying the version (``shown``:
        the version to say when there is no pick, else the one Triton answered with)."""
        rollouts, pick, model = self._rollouts, self.pick, self.model

        async def run() -> tuple[CachedResponse, str]:
            started = time.perf_counter()
            try:
                answer, served = await produce()
            except GatewayError as exc:  # a 4xx is the caller's; a 5xx the version's
                version = pick.version or shown or model.version
                # a version pinned outside a route that Triton does not serve is no version: no
                # metric label is made for it (a caller could mint one per request)
                if pick.route is not None or version in model.versions or not pick.version:
                    rollouts.record(model.name, pick, version, exc.status < 500, started)
                raise
            version = pick.version or shown or served
            rollouts.record(model.name, pick, version, True, started)
            if not version:  # Triton always says; a fake or an old server may not
                return answer, served
            headers = (*answer.headers, (VERSION_HEADER, version))
            return CachedResponse(answer.body, answer.media_type, headers), served

        return run


class Rollouts:
    """One per gateway process: the route table in use, the figures, the shadow mirror."""

    def __init__(self, settings: GatewaySettings, metrics: Metrics, upstream: Upstream) -> None:
        self.settings, self.upstream = settings, upstream
        replica = settings.replica_id or f"{socket.gethostname()}:{os.getpid()}"
        self._redis: Callable[[], Redis | None] = lambda: None
        # a routes file that is there but unusable fails start-up with its reason
        self.store = RouteStore(
            load_file(settings.routes_file),
            lambda: self._redis(),
            replica,
            timeout_s=settings.redis_timeout_s,
        )
        self.metrics = metrics.versions
        self.recorder = StepRecorder(replica)
        self.mirror = ShadowMirror(
            self.recorder,
            queue_size=settings.shadow_queue,
            workers=settings.shadow_workers,
            timeout_s=settings.shadow_timeout_s,
            observe=self.metrics.shadow_outcome,
        )
        self._picks: Picks = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.store.on_change.append(self._use)
        self.store.prepare = self._prepare
        self._use(self.store.table)

    # -- per request ------------------------------------------------------------------------------
    def route(
        self, model: ModelInfo, tenant: Tenant, request: Request, pinned: str | None = None
    ) -> Routed:
        """The request's pick: O(1) (a look-up, and a hash for a routed model's caller)."""
        found = self._picks.get(model.name)
        if found is None:
            if pinned is None:
                return Routed(self, model, UNROUTED)
            return Routed(self, model, Pick(None, _version(pinned), "", pinned, False))
        route, arms, by_version = found
        if pinned is not None:
            chosen = by_version.get(_version(pinned))
            if chosen is None:
                raise not_found(
                    f"model {model.name!r} has no version {pinned} in its rollout; its versions: "
                    f"{', '.join(sorted(by_version))}",
                    code="model_not_found",
                )
            return Routed(self, model, chosen)
        key = sticky_key(tenant.name, request.headers.get(ROUTING_KEY_HEADER))
        return Routed(self, model, arms[route.choose(key).version])

    def record(self, model: str, pick: Pick, version: str, ok: bool, started: float) -> None:
        seconds = time.perf_counter() - started
        self.metrics.observe(model, version, ok, seconds)
        if pick.route is not None:
            self.recorder.request(pick.route, version, ok, seconds)

    def offer(
        self,
        route: ModelRoute,
        model: ModelInfo,
        inputs: Sequence[Any],
        outputs: Sequence[Output] | None,
        result: Any,
    ) -> None:
        """A sampled copy of a primary call to the route's shadow version (never waited for)."""
        shadow = route.shadow
        if shadow is None or (shadow.sample < 1.0 and random.random() >= shadow.sample):
            return
        upstream = self.upstream

        async def call() -> Outputs:
            target = await upstream.model(shadow.model)
            answer = await upstream.infer(target, inputs, outputs, version=shadow.model_version)
            return float_outputs(answer)

        batched = model.max_batch_size > 0
        self.mirror.offer(ShadowJob(route, call, float_outputs(result), batched))

    # -- when the table changes -------------------------------------------------------------------
    def _use(self, table: RouteTable) -> None:
        self._picks = build_picks(table)
        self.metrics.revision.set(table.revision)

    async def _prepare(self, old: RouteTable, new: RouteTable) -> None:
        """Before a new table is used: the metadata of every model either table names, read
        again (the versions Triton serves, a pipeline's encoder version: the cache key's)."""
        names = set(old.routes) | set(new.routes)
        for route in new.routes.values():
            names.update(arm.model for arm in route.arms)
            if route.shadow is not None:
                names.add(route.shadow.model)

        async def refresh(name: str) -> None:
            with contextlib.suppress(GatewayError):  # not served (any more): evicted
                await self.upstream.model(name, refresh=True)

        await asyncio.gather(*(refresh(n) for n in sorted(names)))

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self, redis: Callable[[], Redis | None]) -> None:
        """Read Redis' table once before serving, then poll it and flush the figures."""
        self._redis = redis
        await self.store.refresh()
        self.mirror.start()
        self._tasks = [
            asyncio.create_task(self.store.run(self.settings.routes_poll_s)),
            asyncio.create_task(self._flush_every(self.settings.stats_flush_s)),
        ]

    async def _flush(self) -> None:
        redis = self._redis()
        if redis is None or not self.recorder.pending:
            return
        try:  # bounded by the client's socket timeout; on failure the counts are kept
            await self.recorder.flush(redis)
        except Exception as exc:
            log.warning("rollout figures not written to Redis (kept for the next try): %s", exc)

    async def _flush_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self._flush()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.mirror.stop()
        await self._flush()  # the last counts


def _version(text: str) -> str:
    if not (text.isdigit() and len(text) <= 18):
        raise bad_request(f"a model version is a number, got {text[:32]!r}", param="version")
    return text
