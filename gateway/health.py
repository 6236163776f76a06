"""The gateway's health monitor: one background loop per process, every ``health_interval_s``.

Each round it

* asks Triton whether it and the served models are ready (``/readyz`` answers the last round's
  result, so a flood of readiness probes costs Triton nothing);
* forgets the metadata of any model Triton no longer serves, so an unloaded model is refused
  within a round instead of being answered from the cache for ``metadata_ttl_s``;
* every ``probe_interval_s``, and at once when a request met a dead model, runs a real
  inference through each served pipeline: a python-backend stub that died leaves Triton and the
  model "ready" while every call fails, so readiness alone cannot see it. A pipeline that fails
  this way makes ``/readyz`` false and its dead model is reloaded through Triton's repository
  API (with ``GATEWAY_TRITON_ADMIN_KEY`` where that API is restricted); ready again once a probe
  passes;
* pings Redis (and the feature store when required), reloads the tenants file when it changed
  and reads the revocation set (``gateway.revocation``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from redis.asyncio import Redis
from redis.exceptions import RedisError
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from gateway import revocation
from gateway.errors import GatewayError
from gateway.settings import Environment, GatewaySettings
from gateway.tenants import Authenticator, load_tenants, placeholder_problems
from gateway.upstream import ModelInfo, Upstream, map_triton_error

log = logging.getLogger("gateway")
_RELOAD_BACKOFF_S = 5.0


def probe_inputs(model: ModelInfo) -> list[grpcclient.InferInput]:
    """One small request the model accepts or refuses as invalid input (either shows that it
    runs): each variable dimension 1, zeros, or the string "ready"."""
    tensors = []
    for info in model.inputs:
        if info.optional:
            continue
        shape = [1 if d < 0 else d for d in info.shape]
        if info.datatype == "BYTES":
            array = np.full(shape, b"ready", dtype=object)
        else:
            array = np.zeros(shape, dtype=triton_to_np_dtype(info.datatype))
        tensor = grpcclient.InferInput(info.name, shape, info.datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def owner(instance: str, model: ModelInfo) -> list[str]:
    """The model(s) to reload for a dead stub instance ('minilm_tokenizer_cpu_0'): the longest
    model name it starts with, else every model of the pipeline."""
    candidates = [model.name, *model.steps]
    matching = [name for name in candidates if instance.startswith(f"{name}_")]
    if matching:
        return [max(matching, key=len)]
    return list(model.steps) or [model.name]


class Health:
    def __init__(
        self,
        settings: GatewaySettings,
        upstream: Upstream,
        auth: Authenticator,
        *,
        redis: Callable[[], Redis | None],
        extra_checks: Callable[[], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.auth = auth
        self._redis = redis
        self._extra_checks = extra_checks  # async () -> dict[str, bool] (feature store)
        self.checks: dict[str, bool] = {"started": False}
        self._suspects: dict[str, str] = {}  # model -> dead instance named by a failed call
        self._wake = asyncio.Event()
        self._last_probe = 0.0
        self._tenants_stamp = self._stamp()
        self.reloads = 0
        self._reloaded_at: dict[str, float] = {}
        upstream.on_dead_stub.append(self.report_dead_stub)

    @property
    def ready(self) -> bool:
        return all(self.checks.values())

    def served(self) -> list[str]:
        models = [self.settings.embeddings_model, self.settings.embeddings_pipeline]
        if self.settings.ready_requires_features:
            models.append(self.settings.scoring_model)
        return models

    def report_dead_stub(self, model: str, instance: str) -> None:
        """A request met a dead model (``Upstream`` calls this): check it now."""
        self._suspects[model] = instance
        self.checks[f"inference:{model}"] = False
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # the monitor must outlive any one failure
                log.exception("health check failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.health_interval_s)
            self._wake.clear()

    async def check(self) -> None:
        served = self.served()
        checks = await self.upstream.ready(served)
        if checks["triton"]:
            await self._forget_unloaded(served, checks)
            checks.update(await self._probe())
        redis = self._redis()
        if redis is not None:
            try:  # the read doubles as the ping
                self.auth.revoke(*await revocation.read(redis))
                checks["redis"] = True
            except (RedisError, OSError):
                checks["redis"] = False  # the revocations read last stay in force
        if self._extra_checks is not None:
            checks.update(await self._extra_checks())
        self._reload_tenants()
        self.checks = checks

    async def _forget_unloaded(self, served: list[str], checks: dict[str, bool]) -> None:
        others = [name for name in self.upstream.known_models if name not in served]
        found = {**checks, **(await self.upstream.ready(others) if others else {})}
        for name in self.upstream.known_models:
            if not found.get(f"model:{name}", True):
                log.info("model %r is no longer ready in Triton: its metadata is dropped", name)
                self.upstream.evict(name)

    async def _probe(self) -> dict[str, bool]:
        """Real inferences through the pipelines (when due), and reloads of dead models."""
        now = time.monotonic()
        interval = self.settings.probe_interval_s
        due = interval > 0 and now - self._last_probe >= interval
        targets = [self.settings.embeddings_pipeline]
        if self.settings.ready_requires_features:
            targets.append(self.settings.scoring_model)
        results: dict[str, bool] = {}
        for name in targets:
            if not due and name not in self._suspects:
                if f"inference:{name}" in self.checks:
                    results[f"inference:{name}"] = self.checks[f"inference:{name}"]
                continue
            results[f"inference:{name}"] = await self._probe_one(name)
        if due:
            self._last_probe = now
        return results

    async def _probe_one(self, name: str) -> bool:
        try:
            model = await self.upstream.model(name)
        except GatewayError:
            return False
        timeout = max(self.settings.metadata_timeout_s, 5.0)  # a dead stub answers in ~1 s
        try:
            await self.upstream.client.infer(name, probe_inputs(model), client_timeout=timeout)
        except InferenceServerException as exc:
            error = map_triton_error(exc, name)
            if error.status == 400:
                self._suspects.pop(name, None)
                return True  # the model ran and refused the probe's zeros: alive
            if error.code == "model_restarting":
                await self._reload(model, error.detail or self._suspects.get(name, ""))
            return False
        self._suspects.pop(name, None)
        self.upstream.breaker(name).success()
        return True

    async def _reload(self, model: ModelInfo, instance: str) -> None:
        now = time.monotonic()
        for name in owner(instance, model):
            if now - self._reloaded_at.get(name, -1e9) < _RELOAD_BACKOFF_S:
                continue  # a reload just ran (or failed): give it time, do not hammer Triton
            self._reloaded_at[name] = now
            log.warning("reloading %r: its python backend stub died (%s)", name, instance)
            # meanwhile Triton does not know the model (nor the pipeline): answer 503, not 404
            self.upstream.restarting.update({name, model.name})
            try:
                await self.upstream.reload(name)
                self.reloads += 1
            except GatewayError as exc:
                log.error("reload of %r failed: %s", name, exc.message)
            finally:
                self.upstream.restarting.difference_update({name, model.name})
        self._wake.set()  # probe again at once

    # -- tenants ---------------------------------------------------------------------------
    def _stamp(self) -> tuple[int, int, int] | None:
        path = self.settings.tenants_file
        if path is None:
            return None
        try:
            st = os.stat(path)  # follows the Secret volume's symlink swap
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _reload_tenants(self) -> None:
        stamp = self._stamp()
        if stamp is None or stamp == self._tenants_stamp:
            return
        path: Path = self.settings.tenants_file  # type: ignore[assignment]
        try:
            tenants = load_tenants(path)
        except (ValueError, OSError) as exc:
            log.error("tenants file changed but cannot be used (keeping the previous): %s", exc)
            return
        tenants.update(self.settings.json_tenants)
        if self.settings.environment is not Environment.development:
            problems = placeholder_problems(tenants)
            if problems:
                log.error("tenants file refused (keeping the previous): %s", "; ".join(problems))
                self._tenants_stamp = stamp
                return
        if not tenants:
            log.error("tenants file holds no tenant (keeping the previous)")
            self._tenants_stamp = stamp
            return
        self.auth.replace(tenants)
        self._tenants_stamp = stamp
        log.info("tenants reloaded from %s: %d tenants", path, len(tenants))
