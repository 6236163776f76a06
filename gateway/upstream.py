"""Triton over gRPC (``tritonclient.grpc.aio``): model metadata, inference, health.

Every call has a deadline. Upstream failures become :class:`GatewayError` with a clear status
(unavailable → 503, deadline → 504, queue full → 429), and a circuit breaker per model answers
503 at once after consecutive failures that say the model cannot be reached (connection lost,
not ready, its python backend stub dead), instead of letting requests pile up on it. A deadline
does not count: it says that this request took too long, not that the model is gone, so one
tenant's oversized requests cannot open the breaker for everybody else.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from gateway.errors import GatewayError, not_found, sanitize, unavailable
from gateway.metrics import Metrics
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway")
_MAX_MESSAGE = 64 * 2**20
_MISSING_TTL_S = 1.0  # a model Triton does not know: asked again after this
# "Stub process 'minilm_tokenizer_cpu_0' is not healthy." (a dead python-backend stub)
_DEAD_STUB = re.compile(r"stub process '([^']+)' is not healthy", re.I)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]  # with the batch dimension (-1) first when the model batches
    optional: bool = False


@dataclass
class ModelInfo:
    name: str
    versions: list[str]
    max_batch_size: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    platform: str = ""
    steps: tuple[str, ...] = ()  # an ensemble's composing models
    fetched_at: float = field(default_factory=time.monotonic)

    @property
    def version(self) -> str:
        """The newest version Triton serves (the one an unversioned request reaches)."""
        return max(self.versions, key=lambda v: int(v) if v.isdigit() else -1, default="")

    def input(self, name: str) -> TensorInfo | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorInfo | None:
        return next((t for t in self.outputs if t.name == name), None)

    def metadata(self) -> dict[str, Any]:
        """The Open Inference Protocol model metadata object."""

        def tensors(items: list[TensorInfo]) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

        return {
            "name": self.name,
            "versions": self.versions,
            "platform": self.platform,
            "inputs": tensors(self.inputs),
            "outputs": tensors(self.outputs),
        }


def map_triton_error(exc: InferenceServerException, model: str | None = None) -> GatewayError:
    """Triton/gRPC failure → a gateway error with a status a client can act on.

    Only INVALID_ARGUMENT carries Triton's text (what to fix in the input), sanitized; every
    other failure is logged here and answered without it (addresses, internal names).
    """
    status = str(exc.status() or "")
    message = str(exc.message() or exc)
    lowered = message.lower()
    subject = f"model {model!r}" if model else "Triton"
    if "maximum queue size" in lowered:
        return GatewayError(
            429, "queue_full", f"{subject} is overloaded (queue full); retry later",
            headers={"Retry-After": "1"},
        )  # fmt: skip
    if "DEADLINE_EXCEEDED" in status or "deadline" in lowered:
        return GatewayError(
            504, "upstream_timeout", f"{subject} did not answer within the deadline"
        )
    if "unknown model" in lowered or "NOT_FOUND" in status:
        return not_found(f"{subject} is not served by Triton", code="model_not_found")
    if "timeout expired" in lowered:  # Triton's own queue timeout
        return unavailable(f"{subject} timed out in Triton's queue; retry later")
    dead = _DEAD_STUB.search(message)
    if dead:
        log.warning("%s: a python backend stub died: %s", subject, message)
        return GatewayError(
            503, "model_restarting", f"{subject} is restarting; retry shortly",
            headers={"Retry-After": "1"}, detail=dead.group(1),
        )  # fmt: skip
    if "UNAVAILABLE" in status or "not ready" in lowered:
        log.warning("%s unavailable: %s", subject, message)
        return unavailable(f"{subject} is unavailable: Triton cannot be reached or is not ready")
    if "INVALID_ARGUMENT" in status:
        text = sanitize(message)
        return GatewayError(
            400, "invalid_input", f"{subject} rejected the input: {text}", detail=text
        )
    if "RESOURCE_EXHAUSTED" in status:
        return GatewayError(413, "too_large", f"{subject}: request or response too large")
    log.warning("%s failed: %s %s", subject, status, message)
    return GatewayError(502, "upstream_error", f"{subject} failed; the gateway log has details")


class CircuitBreaker:
    """Closed → (``failures`` in a row) → open for ``cooldown_s`` → one trial call → closed."""

    def __init__(self, failures: int, cooldown_s: float) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._count = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if time.monotonic() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """May a call go now? In half-open, the one caller that gets True holds the trial and
        must end it with ``success``, ``failure`` or ``cancel``."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial:
            self._trial = True
            return True
        return False

    def cancel(self) -> None:
        """The call that held the trial never reached Triton (e.g. no slot): free the trial."""
        self._trial = False

    def success(self) -> None:
        self._count, self._opened_at, self._trial = 0, None, False

    def failure(self) -> None:
        self._count += 1
        self._trial = False
        if self._count >= self.failures or self._opened_at is not None:
            self._opened_at = time.monotonic()


def _restarting(name: str) -> GatewayError:
    return GatewayError(
        503, "model_restarting", f"model {name!r} is restarting; retry shortly",
        headers={"Retry-After": "1"},
    )  # fmt: skip


def _is_unreachable(error: GatewayError) -> bool:
    """Failures that say the model cannot be reached (a deadline does not: see the docstring)."""
    return error.code in ("upstream_unavailable", "model_restarting")


class Upstream:
    """One async gRPC client to Triton, shared by all requests of a gateway process."""

    def __init__(self, settings: GatewaySettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._client: grpcaio.InferenceServerClient | None = None
        self._breakers: dict[str, CircuitBreaker] = {}
        self._slots = asyncio.Semaphore(settings.max_inflight)
        self._models: dict[str, ModelInfo] = {}
        self._missing: dict[str, float] = {}  # unknown model -> when to ask Triton again
        self._loading: dict[str, asyncio.Task[ModelInfo]] = {}
        self._lost = False  # Triton was unreachable: reload metadata once it answers again
        key = settings.triton_admin_key
        # Triton's gRPC frontend expects restricted-protocol headers with this prefix
        self._admin_headers = (
            {f"triton-grpc-protocol-{settings.triton_admin_header}": key.get_secret_value()}
            if key
            else None
        )
        self.on_dead_stub: list[Any] = []  # callbacks(model, instance): the health monitor
        self.restarting: set[str] = set()  # models being reloaded (and the pipelines using them)

    def breaker(self, model: str) -> CircuitBreaker:
        found = self._breakers.get(model)
        if found is None:  # one per model Triton knows (models come from its metadata)
            found = self._breakers[model] = CircuitBreaker(
                self.settings.breaker_failures, self.settings.breaker_cooldown_s
            )
        return found

    async def open(self) -> None:
        """Create the gRPC channel (inside the serving event loop: gRPC aio binds to it)."""
        self._client = grpcaio.InferenceServerClient(
            self.settings.triton_grpc_url,
            channel_args=[
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                ("grpc.keepalive_time_ms", 30_000),
                # with a dns:/// target naming a headless Service, spread calls over every
                # Triton pod (a ClusterIP Service balances connections, not calls)
                ("grpc.lb_policy_name", "round_robin"),
                # reconnect within a second once Triton is back (gRPC's default backoff grows
                # to minutes; measured: 2.9 s to recover after a 2.5 s outage)
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )

    @property
    def client(self) -> grpcaio.InferenceServerClient:
        if self._client is None:
            raise RuntimeError("Upstream.open() was not called (the app's lifespan opens it)")
        return self._client

    async def close(self) -> None:
        if self._client is not None:
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
        fresh = info and now - info.fetched_at < self.settings.metadata_ttl_s
        if info is not None and (fresh or name in self.restarting) and not refresh:
            return info  # (while it reloads Triton does not know it: keep what we knew)
        if name in self.restarting:
            raise _restarting(name)
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
        try:
            meta, config = await asyncio.gather(
                self.client.get_model_metadata(name, as_json=True, client_timeout=timeout),
                self.client.get_model_config(name, as_json=True, client_timeout=timeout),
            )
        except InferenceServerException as exc:
            raise map_triton_error(exc, name) from None
        config = config.get("config", config)
        optional = {i["name"] for i in config.get("input", []) if i.get("optional")}
        steps = tuple(
            step["model_name"]
            for step in config.get("ensemble_scheduling", {}).get("step", [])
            if step.get("model_name")
        )

        def tensors(items: list[dict[str, Any]]) -> list[TensorInfo]:
            return [
                TensorInfo(
                    t["name"],
                    t["datatype"],
                    tuple(int(d) for d in t.get("shape", [])),
                    t["name"] in optional,
                )
                for t in items
            ]

        return ModelInfo(
            name=meta["name"],
            versions=list(meta.get("versions", [])),
            max_batch_size=int(config.get("max_batch_size", 0)),
            inputs=tensors(meta.get("inputs", [])),
            outputs=tensors(meta.get("outputs", [])),
            platform=meta.get("platform", ""),
            steps=steps,
        )

    # -- inference ---------------------------------------------------------------------------
    async def infer(
        self,
        model: ModelInfo,
        inputs: Sequence[grpcclient.InferInput],
        outputs: Sequence[grpcclient.InferRequestedOutput] | None = None,
        *,
        request_id: str = "",
    ) -> grpcclient.InferResult:
        if self.restarting and (
            model.name in self.restarting or self.restarting.intersection(model.steps)
        ):
            raise _restarting(model.name)
        breaker = self.breaker(model.name)
        if not breaker.allow():
            self.metrics.upstream_rejected.labels(reason="circuit_open").inc()
            raise unavailable(
                f"model {model.name!r} is unavailable: it failed repeatedly, "
                f"retrying in {self.settings.breaker_cooldown_s:g} s",
                code="circuit_open",
                retry_after_s=max(1, round(self.settings.breaker_cooldown_s)),
            )
        try:
            if self._slots.locked():  # full: wait a bounded time (wait_for costs a task)
                await asyncio.wait_for(self._slots.acquire(), self.settings.inflight_wait_s or 1e-3)
            else:
                await self._slots.acquire()
        except TimeoutError:
            breaker.cancel()  # a half-open trial that never ran must not keep the breaker shut
            self.metrics.upstream_rejected.labels(reason="overloaded").inc()
            raise GatewayError(
                503, "gateway_overloaded",
                f"the gateway has {self.settings.max_inflight} requests in flight; retry later",
                headers={"Retry-After": "1"},
            ) from None  # fmt: skip
        started = time.perf_counter()
        outcome = "ok"
        try:
            result = await self.client.infer(
                model.name,
                list(inputs),
                outputs=list(outputs) if outputs else None,
                request_id=request_id,
                client_timeout=self.settings.upstream_timeout_s,
            )
        except InferenceServerException as exc:
            error = map_triton_error(exc, model.name)
            outcome = error.code
            if _is_unreachable(error):
                breaker.failure()
                self._lost = True
            else:
                breaker.success()  # Triton answered (or only this request was slow)
            if error.code == "model_restarting":
                for callback in self.on_dead_stub:
                    callback(model.name, error.detail or "")
            raise error from None
        except BaseException:  # cancelled (client gone): the call's outcome is unknown
            breaker.cancel()
            raise
        finally:
            self._slots.release()
            self.metrics.upstream_latency.labels(model=model.name, outcome=outcome).observe(
                time.perf_counter() - started
            )
        breaker.success()
        self._reconnected()
        return result

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
