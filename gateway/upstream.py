"""Triton over gRPC (``tritonclient.grpc.aio``): model metadata, inference, health.

Every call has a deadline. Upstream failures become :class:`GatewayError` with a clear status
(unavailable → 503, deadline → 504, queue full → 429), and a circuit breaker answers 503 at once
after consecutive connection failures instead of letting requests pile up on a dead server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from gateway.errors import GatewayError, not_found, unavailable
from gateway.metrics import Metrics
from gateway.settings import GatewaySettings

_MAX_MESSAGE = 64 * 2**20


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
    """Triton/gRPC failure → a gateway error with a status a client can act on."""
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
    if "UNAVAILABLE" in status or "not ready" in lowered:
        return unavailable(f"{subject} is unavailable: Triton cannot be reached or is not ready")
    if "INVALID_ARGUMENT" in status:
        return GatewayError(
            400, "invalid_input", f"{subject} rejected the input: {message}", detail=message
        )
    if "RESOURCE_EXHAUSTED" in status:
        return GatewayError(413, "too_large", f"{subject}: request or response too large")
    return GatewayError(502, "upstream_error", f"{subject} failed: {message}")


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
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial:
            self._trial = True
            return True
        return False

    def success(self) -> None:
        self._count, self._opened_at, self._trial = 0, None, False

    def failure(self) -> None:
        self._count += 1
        self._trial = False
        if self._count >= self.failures or self._opened_at is not None:
            self._opened_at = time.monotonic()


def _is_connection_failure(error: GatewayError) -> bool:
    return error.code in ("upstream_unavailable", "upstream_timeout")


class Upstream:
    """One async gRPC client to Triton, shared by all requests of a gateway process."""

    def __init__(self, settings: GatewaySettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._client: grpcaio.InferenceServerClient | None = None
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s)
        self._slots = asyncio.Semaphore(settings.max_inflight)
        self._models: dict[str, ModelInfo] = {}
        self._loading: dict[str, asyncio.Task[ModelInfo]] = {}
        self._lost = False  # Triton was unreachable: reload metadata once it answers again

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
    async def model(self, name: str, *, refresh: bool = False) -> ModelInfo:
        """Metadata of a served model (cached ``metadata_ttl_s``; 404/503 as GatewayError)."""
        info = self._models.get(name)
        fresh = info and time.monotonic() - info.fetched_at < self.settings.metadata_ttl_s
        if info is not None and fresh and not refresh:
            return info
        task = self._loading.get(name)
        if task is None:  # one fetch per model however many requests wait for it
            task = asyncio.ensure_future(self._fetch(name))
            self._loading[name] = task
            task.add_done_callback(lambda _: self._loading.pop(name, None))
        try:
            info = await asyncio.shield(task)
        except GatewayError:
            self._models.pop(name, None)
            raise
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
        if not self.breaker.allow():
            self.metrics.upstream_rejected.labels(reason="circuit_open").inc()
            raise unavailable(
                f"model {model.name!r} is unavailable: Triton failed repeatedly, "
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
            if _is_connection_failure(error):
                self.breaker.failure()
                self._lost = True
            else:
                self.breaker.success()  # Triton answered: the connection is fine
            raise error from None
        finally:
            self._slots.release()
            self.metrics.upstream_latency.labels(model=model.name, outcome=outcome).observe(
                time.perf_counter() - started
            )
        self.breaker.success()
        self._reconnected()
        return result

    def _reconnected(self) -> None:
        """Triton answers again after it could not be reached: it may be a restarted server
        serving other versions, so cached metadata is dropped (fetched again on next use)."""
        if self._lost:
            self._lost = False
            self._models.clear()

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
            self.breaker.success()
            self._reconnected()
        else:
            self._lost = True
        return checks
