"""Triton behind the gateway: model metadata (cached), inference with deadlines, health.

Every call has a deadline; failures are answered as ``gateway.failures`` maps them, with a circuit
breaker per model. The client is ``gateway.triton.TritonGrpc`` (one gRPC channel, protobuf built
in place) unless one is injected (``create_app(upstream=...)``: the route tests' fake Triton).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from tritonclient.utils import InferenceServerException

from gateway.errors import GatewayError, not_found, unavailable
from gateway.failures import (
    CircuitBreaker,
    is_unreachable,
    map_triton_error,
    restarting_error,
)
from gateway.metrics import Metrics
from gateway.models import ModelInfo, TensorInfo, from_triton, newest
from gateway.settings import GatewaySettings
from gateway.triton import Output, TritonClient, TritonGrpc

__all__ = ["CircuitBreaker", "ModelInfo", "TensorInfo", "Upstream", "map_triton_error"]
log = logging.getLogger("gateway")
_MISSING_TTL_S = 1.0  # a model Triton does not know: asked again after this


class Upstream:
    """One client to Triton, shared by all requests of a gateway process."""

    def __init__(
        self, settings: GatewaySettings, metrics: Metrics, client: TritonClient | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._client: TritonClient | None = client
        self._injected = client is not None
        self._breakers: dict[str, CircuitBreaker] = {}
        self._slots = asyncio.Semaphore(settings.max_inflight)
        self._models: dict[str, ModelInfo] = {}
        self._missing: dict[str, float] = {}  # unknown model -> when to ask Triton again
        self._loading: dict[str, asyncio.Task[ModelInfo]] = {}
        self._latency: dict[tuple[str, str], Any] = {}  # (model, outcome) -> histogram child
        self._lost = False  # Triton was unreachable: reload metadata once it answers again
        key = settings.triton_admin_key
        # Triton's gRPC frontend expects restricted-protocol headers with this prefix
        self._admin_headers = (
            {f"triton-grpc-protocol-{settings.triton_admin_header}": key.get_secret_value()}
            if key
            else None
        )
        # callbacks(model, instance) when a call met a dead python stub: the health monitor
        self.on_dead_stub: list[Callable[[str, str], None]] = []
        self.restarting: set[str] = set()  # models being reloaded (and the pipelines using them)

    def breaker(self, model: str) -> CircuitBreaker:
        found = self._breakers.get(model)
        if found is None:  # one per model Triton knows (models come from its metadata)
            found = self._breakers[model] = CircuitBreaker(
                self.settings.breaker_failures, self.settings.breaker_cooldown_s
            )
        return found

    async def open(self) -> None:
        """Open the gRPC channel (inside the serving event loop: gRPC aio binds to it)."""
        if self._client is None:
            self._client = TritonGrpc(self.settings.triton_grpc_url)

    @property
    def client(self) -> TritonClient:
        if self._client is None:
            raise RuntimeError("Upstream.open() was not called (the app's lifespan opens it)")
        return self._client

    async def close(self) -> None:
        if self._client is not None and not self._injected:
            await self._client.close()
            self._client = None

    # -- metadata -----------------------------------------------------------------------------
    @property
    def known_models(self) -> list[str]:
        """Models whose metadata is cached (the health monitor checks they are still served)."""
        return list(self._models)

    def evict(self, name: str) -> None:
        """Forget a model's metadata: the next request asks Triton (unloaded: 404 at once)."""
        self._models.pop(name, None)

    async def model(self, name: str, *, refresh: bool = False) -> ModelInfo:
        """Metadata of a served model (cached ``metadata_ttl_s``; 404/503 as GatewayError)."""
        info = self._models.get(name)
        now = time.monotonic()
        fresh = info is not None and now - info.fetched_at < self.settings.metadata_ttl_s
        if info is not None and (fresh or name in self.restarting) and not refresh:
            return info  # (while it reloads Triton does not know it: keep what we knew)
        if name in self.restarting:
            raise restarting_error(name)
        if self._missing.get(name, 0.0) > now and not refresh:  # asked a moment ago
            raise not_found(f"model {name!r} is not served by Triton", code="model_not_found")
        task = self._loading.get(name)
        if task is None:  # one fetch per model however many requests wait for it
            task = asyncio.ensure_future(self._fetch(name))
            self._loading[name] = task
            task.add_done_callback(lambda _: self._loading.pop(name, None))
        try:
            info = await asyncio.shield(task)
        except GatewayError as exc:
            self._models.pop(name, None)
            if exc.status == 404:  # remembered briefly: unknown names cost Triton nothing
                if len(self._missing) > 10_000:
                    self._missing.clear()
                self._missing[name] = time.monotonic() + _MISSING_TTL_S
            raise
        self._missing.pop(name, None)
        self._models[name] = info
        return info

    async def _fetch(self, name: str) -> ModelInfo:
        timeout = self.settings.metadata_timeout_s
        client = self.client
        try:
            meta, config = await asyncio.gather(
                client.get_model_metadata(name, as_json=True, client_timeout=timeout),
                client.get_model_config(name, as_json=True, client_timeout=timeout),
            )
            info = from_triton(meta, config)
            if info.steps:  # an ensemble: its steps' newest versions, read once with it
                steps = await asyncio.gather(
                    *(client.get_model_metadata(s, True, timeout) for s in info.steps)
                )
                versions = (newest(list(m.get("versions", []))) for m in steps)
                info.step_versions = dict(zip(info.steps, versions, strict=True))
        except InferenceServerException as exc:
            raise map_triton_error(exc, name) from None
        return info

    # -- inference ---------------------------------------------------------------------------
    def _admit(self, model: ModelInfo) -> CircuitBreaker:
        """The model's breaker, or a 503 when it is restarting or its breaker is open."""
        if self.restarting and (
            model.name in self.restarting or self.restarting.intersection(model.steps)
        ):
            raise restarting_error(model.name)
        breaker = self.breaker(model.name)
        if not breaker.allow():
            self.metrics.upstream_rejected.labels(reason="circuit_open").inc()
            raise unavailable(
                f"model {model.name!r} is unavailable: it failed repeatedly, "
                f"retrying in {self.settings.breaker_cooldown_s:g} s",
                code="circuit_open",
                retry_after_s=max(1, round(self.settings.breaker_cooldown_s)),
            )
        return breaker

    async def _slot(self, breaker: CircuitBreaker) -> None:
        """One of the ``max_inflight`` upstream slots, waited for a bounded time (else 503)."""
        try:
            if self._slots.locked():  # full: wait a bounded time (wait_for costs a task)
                await asyncio.wait_for(self._slots.acquire(), self.settings.inflight_wait_s or 1e-3)
            else:
                await self._slots.acquire()
        except TimeoutError:
            breaker.cancel()  # a half-open trial that never ran must not keep the breaker shut
            self.metrics.upstream_rejected.labels(reason="overloaded").inc()
            raise GatewayError(
                503,
                "gateway_overloaded",
                f"the gateway has {self.settings.max_inflight} requests in flight; retry later",
                headers={"Retry-After": "1"},
            ) from None

    async def infer(
        self,
        model: ModelInfo,
        inputs: Sequence[Any],
        outputs: Sequence[Output] | None = None,
        *,
        request_id: str = "",
        version: str = "",
    ) -> Any:
        """One inference (``gateway.triton.RawInput`` or ``InferInput`` tensors) of ``model``'s
        ``version`` ("": the newest Triton serves)."""
        breaker = self._admit(model)
        await self._slot(breaker)
        started = time.perf_counter()
        outcome = "ok"
        try:
            result = await self.client.infer(
                model.name,
                list(inputs),
                outputs=list(outputs) if outputs else None,
                request_id=request_id,
                client_timeout=self.settings.upstream_timeout_s,
                model_version=version,
            )
        except InferenceServerException as exc:
            error = self._failed(model, breaker, exc)
            outcome = error.code
            raise error from None
        except BaseException:  # cancelled (client gone): the call's outcome is unknown
            breaker.cancel()
            raise
        finally:
            self._slots.release()
            self._observe(model.name, outcome, time.perf_counter() - started)
        breaker.success()
        self._reconnected()
        return result

    def _failed(
        self, model: ModelInfo, breaker: CircuitBreaker, exc: InferenceServerException
    ) -> GatewayError:
        error = map_triton_error(exc, model.name)
        if is_unreachable(error):
            breaker.failure()
            self._lost = True
        else:
            breaker.success()  # Triton answered (or only this request was slow)
        if error.code == "model_restarting":
            for callback in self.on_dead_stub:
                callback(model.name, error.detail or "")
        return error

    def _observe(self, model: str, outcome: str, seconds: float) -> None:
        child = self._latency.get((model, outcome))
        if child is None:  # labels() resolved once per (model, outcome), not per call
            child = self.metrics.upstream_latency.labels(model=model, outcome=outcome)
            self._latency[(model, outcome)] = child
        child.observe(seconds)

    def _reconnected(self) -> None:
        """Triton answers again after it could not be reached: it may be a restarted server
        serving other versions, so cached metadata is dropped (fetched again on next use)."""
        if self._lost:
            self._lost = False
            self._models.clear()

    async def reload(self, name: str) -> None:
        """Unload and load a model through Triton's repository API (with the admin key when set).

        A plain load of an unchanged model is a no-op in Triton (its files are unmodified), so a
        dead stub would stay dead: the unload makes the load start new instances (and Triton
        loads the ensembles that use the model again by itself)."""
        timeout = self.settings.model_load_timeout_s
        try:
            await self.client.unload_model(
                name, headers=self._admin_headers, client_timeout=timeout
            )
            await self.client.load_model(name, headers=self._admin_headers, client_timeout=timeout)
        except InferenceServerException as exc:
            log.error("Triton refused to load %r: %s", name, exc.message())
            raise map_triton_error(exc, name) from None
        self.breaker(name).success()

    # -- health ------------------------------------------------------------------------------
    async def ready(self, models: Sequence[str]) -> dict[str, bool]:
        """Triton's readiness and each model's, within the metadata deadline."""
        timeout = self.settings.metadata_timeout_s
        checks: dict[str, bool] = {}
        try:
            checks["triton"] = bool(await self.client.is_server_ready(client_timeout=timeout))
        except InferenceServerException:
            checks["triton"] = False
        for name in models:
            try:
                ok = checks["triton"] and await self.client.is_model_ready(
                    name, client_timeout=timeout
                )
            except InferenceServerException:
                ok = False
            checks[f"model:{name}"] = bool(ok)
        if checks["triton"]:
            self._reconnected()
        else:
            self._lost = True
        return checks  # never resets a breaker: only a real call's outcome does
