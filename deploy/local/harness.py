"""A throwaway local stack: Triton, redis-server and a gateway on free loopback ports.

The one way the benchmarks and the test fixtures start servers together::

    key, tenants = unlimited_tenant()
    with local_stack(work, settings, models=["minilm"], tenants=tenants) as stack:
        ...  # stack.triton.grpc_url, stack.gateway.url, stack.redis.url

Each part is started with the tenants and settings given and stopped on exit, in reverse
order, exactly what this harness started: a server passed in (``triton=``, ``redis=``) is
used and left running. Triton runs in explicit model control and loads the models named
(default: every model with an exported version, ensembles after their steps), as
``tritonstack up`` does. ``up`` keeps its own life cycle (deploy/local/stack.py): its
processes outlive the command, while these end with the ``with`` block.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from deploy.local.errors import DeployError
from deploy.local.gateway import GatewayProcess
from deploy.local.redis import RedisServer
from deploy.local.runtime import TritonRuntime
from deploy.local.settings import StackSettings
from deploy.local.triton import TritonPorts, TritonServer
from export.reader import servable_models
from gateway.tenants import TenantConfig, generate_key, hash_key


@dataclass(frozen=True)
class LocalStack:
    """The running parts; ``redis`` and ``gateway`` are None when not asked for."""

    triton: TritonServer
    redis: RedisServer | None
    gateway: GatewayProcess | None

    @property
    def gateway_url(self) -> str:
        if self.gateway is None:
            raise DeployError("this stack was started without a gateway")
        return self.gateway.url


def tenants_env(tenants: Mapping[str, TenantConfig]) -> dict[str, str]:
    """``GATEWAY_TENANTS``: the tenants (hashes only) as JSON, as the gateway reads them."""
    return {"GATEWAY_TENANTS": json.dumps({n: t.model_dump() for n, t in tenants.items()})}


def unlimited_tenant(name: str = "bench") -> tuple[str, dict[str, TenantConfig]]:
    """A fresh API key and the one tenant it opens, whom no load can rate-limit."""
    key = generate_key()
    tenant = TenantConfig(
        key_sha256=[hash_key(key)], models=["*"], rate_per_s=1e6, burst=10**6, max_inflight=10**6
    )
    return key, {name: tenant}


def triton_server(
    settings: StackSettings,
    work_dir: Path,
    models: Sequence[str] | None = None,
    *,
    ports: TritonPorts | None = None,
    response_cache_bytes: int = 0,
) -> TritonServer:
    """Triton (not started) in explicit model control on ``settings.model_repository``,
    loading ``models`` (default: every exported one, ensembles last), on ``ports`` (default:
    free ones, never the configured ports a running ``up`` may hold), response cache off
    unless asked for (perf_analyzer repeats its inputs)."""
    chosen = servable_models(settings.model_repository)[0] if models is None else list(models)
    return TritonServer(
        TritonRuntime(settings.runtime_dir),
        settings.model_repository,
        work_dir=work_dir,
        ports=ports,
        response_cache_bytes=response_cache_bytes,
        host=settings.host,
        startup_timeout_s=settings.startup_timeout_s,
        shutdown_timeout_s=settings.shutdown_timeout_s,
        model_control_mode="explicit",
        extra_args=[f"--load-model={name}" for name in chosen],
    )


def gateway_process(
    work_dir: Path,
    triton_grpc_url: str,
    *,
    redis_url: str | None = None,
    tenants: Mapping[str, TenantConfig] | None = None,
    tenants_file: Path | None = None,
    settings: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> GatewayProcess:
    """A gateway (not started) in front of ``triton_grpc_url`` on ``port`` (0: a free one);
    ``tenants`` go in ``GATEWAY_TENANTS`` (or a ``tenants_file``), ``settings``
    (``GATEWAY_*``/``FEATURES_*``) over them."""
    env = {**(tenants_env(tenants) if tenants is not None else {}), **(settings or {})}
    return GatewayProcess(
        work_dir,
        triton_grpc_url=triton_grpc_url,
        tenants_file=tenants_file,
        redis_url=redis_url,
        port=port,
        host=host,
        settings=env,
    )


@contextmanager
def local_stack(
    work_dir: Path,
    settings: StackSettings,
    *,
    models: Sequence[str] | None = None,
    tenants: Mapping[str, TenantConfig] | None = None,
    gateway_settings: Mapping[str, str] | None = None,
    with_redis: bool = True,
    with_gateway: bool = True,
    triton: TritonServer | None = None,
    redis: RedisServer | None = None,
) -> Iterator[LocalStack]:
    """Start what is asked for under ``work_dir`` and stop exactly that on exit."""
    with ExitStack() as started:
        if triton is None:
            triton = started.enter_context(triton_server(settings, work_dir / "triton", models))
        if redis is None and with_redis:
            redis = started.enter_context(RedisServer(work_dir / "redis", host=settings.host))
        gateway = None
        if with_gateway:
            gateway = gateway_process(
                work_dir / "gateway",
                triton.grpc_url,
                redis_url=redis.url if redis is not None else None,
                tenants=tenants,
                # a throwaway stack's tenants and servers are development ones
                settings={"GATEWAY_ENVIRONMENT": "development", **(gateway_settings or {})},
                host=settings.host,
            )
            started.enter_context(gateway)
        yield LocalStack(triton, redis, gateway)
