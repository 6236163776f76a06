"""The local stack's services, built from ``StackSettings`` and the addresses in the state.

Each service is a :class:`ServiceSpec`: how to make a fresh (unstarted) process of it on its
recorded ports (the same ``TritonServer`` / ``RedisServer`` / ``GatewayProcess`` classes the
tests and benchmarks start), how to probe that it is alive, and what to clean up between a dead
process and the next one. The supervisor runs them; ``up`` plans them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deploy.local.errors import TritonStartError
from deploy.local.gateway import GatewayProcess, ensure_dev_tenant, http_ok
from deploy.local.monitoring import MonitoringProcess, Role
from deploy.local.process import BackgroundProcess, free_port
from deploy.local.redis import RedisServer, redis_ping
from deploy.local.runtime import TritonRuntime
from deploy.local.settings import StackSettings
from deploy.local.state import ServiceRecord, StackState
from deploy.local.triton import TritonPorts, TritonServer, http_live, remove_shm_regions
from export.reader import servable_models

LOG_FILES = {
    "triton": Path("triton") / "tritonserver.log",
    "redis": Path("redis") / "redis.log",
    "gateway": Path("gateway") / "gateway.log",
    "capture": Path("capture") / "capture.log",
    "monitor": Path("monitor") / "monitor.log",
    "supervisor": Path("supervisor") / "supervisor.log",
}


def log_path(settings: StackSettings, name: str) -> Path:
    """Where service ``name`` (or ``supervisor``) logs: logs outlive the stack."""
    return settings.home.absolute() / LOG_FILES[name]


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    make: Callable[[], BackgroundProcess]  # a fresh, unstarted process on the recorded ports
    live: Callable[[], bool]  # liveness: False for long enough and the process is replaced
    cleanup: Callable[[], None]  # after its process group is gone, before the next start


def plan(settings: StackSettings, shm_prefix: str) -> dict[str, ServiceRecord]:
    """The services ``up`` will start, with their ports fixed now (0 in the settings: a free
    loopback port) so that every restart reuses them."""
    host = settings.host
    ports = TritonPorts.resolve(
        settings.http_port, settings.grpc_port, settings.metrics_port, host
    ).as_dict()
    records = {
        "triton": ServiceRecord(
            "triton", host, ports, f"{host}:{ports['grpc']}", str(log_path(settings, "triton"))
        )
    }
    taken = set(ports.values())
    if settings.redis:
        port = _port(settings.redis_port, host, taken)
        records["redis"] = ServiceRecord(
            "redis", host, {"redis": port}, f"redis://{host}:{port}/0",
            str(log_path(settings, "redis")),
        )  # fmt: skip
    if settings.gateway:
        port = _port(settings.gateway_port, host, taken)
        metrics = _port(settings.gateway_metrics_port, host, taken)  # /metrics: its own port
        records["gateway"] = ServiceRecord(
            "gateway", host, {"http": port, "metrics": metrics}, f"http://{host}:{port}",
            str(log_path(settings, "gateway")),
        )  # fmt: skip
    if settings.capture and settings.redis and settings.gateway:
        for name, wanted in (
            ("capture", settings.capture_metrics_port),
            ("monitor", settings.monitor_metrics_port),
        ):
            metrics = _port(wanted, host, taken)
            records[name] = ServiceRecord(
                name, host, {"metrics": metrics}, f"http://{host}:{metrics}/metrics",
                str(log_path(settings, name)),
            )  # fmt: skip
    return records


def _port(wanted: int, host: str, taken: set[int]) -> int:
    port = wanted
    while port == 0 or port in taken:
        port = free_port(host)
    taken.add(port)
    return port


def specs(settings: StackSettings, state: StackState) -> list[ServiceSpec]:
    """One spec per planned service, in start order."""
    home = settings.home.absolute()
    built: list[ServiceSpec] = []
    triton = state.services["triton"]
    ports = TritonPorts(**triton.ports)

    def make_triton() -> TritonServer:
        # what is exported now: a restarted Triton also serves models loaded since `up`
        ready, _ = servable_models(settings.model_repository)
        if not ready:
            raise TritonStartError(
                f"no exported model in {settings.model_repository}: run `tritonstack export` first"
            )
        return TritonServer(
            TritonRuntime(settings.runtime_dir),
            settings.model_repository,
            work_dir=home / "triton",
            ports=ports,
            host=triton.host,
            startup_timeout_s=settings.startup_timeout_s,
            shutdown_timeout_s=settings.shutdown_timeout_s,
            # explicit model control: only models with an exported version load, and later
            # exports load into the running server through the repository API (`up` again)
            model_control_mode="explicit",
            extra_args=[f"--load-model={name}" for name in ready],
            response_cache_bytes=settings.response_cache_bytes,
            shm_prefix=state.shm_prefix,
        )

    built.append(
        ServiceSpec(
            "triton",
            make_triton,
            lambda: http_live(triton.host, ports.http, settings.liveness_timeout_s),
            lambda: _remove_regions(state.shm_prefix),
        )
    )
    redis = state.services.get("redis")
    if redis is not None:
        port = redis.ports["redis"]
        built.append(
            ServiceSpec(
                "redis",
                lambda: RedisServer(home / "redis", port=port, host=redis.host),
                lambda: redis_ping(redis.host, port, settings.liveness_timeout_s),
                lambda: None,
            )
        )
    gateway = state.services.get("gateway")
    if gateway is not None:
        redis_url = redis.url if redis is not None else None
        built.append(
            ServiceSpec(
                "gateway",
                lambda: _gateway(
                    settings, gateway, triton.url, redis_url, capture="capture" in state.services
                ),
                lambda: http_ok(f"{gateway.url}/healthz", settings.liveness_timeout_s),
                lambda: None,
            )
        )
    for name in ("capture", "monitor"):
        record = state.services.get(name)
        if record is not None:
            built.append(_monitoring_spec(settings, record, redis.url if redis else None))
    return built


def _remove_regions(prefix: str) -> None:
    remove_shm_regions(prefix)


def _monitoring_spec(
    settings: StackSettings, record: ServiceRecord, redis_url: str | None
) -> ServiceSpec:
    return ServiceSpec(
        record.name,
        lambda: _monitoring(settings, record, redis_url),
        lambda: http_ok(record.metrics_url, settings.liveness_timeout_s),
        lambda: None,
    )


def _monitoring(
    settings: StackSettings, record: ServiceRecord, redis_url: str | None
) -> MonitoringProcess:
    """The capture sink or the monitor: the stack's store, a quick local cadence."""
    role: Role = "capture" if record.name == "capture" else "monitor"
    local = (
        {"CAPTURE_CONSUMER": "local", "CAPTURE_LINGER_S": "2"}
        if role == "capture"
        else {"MONITOR_INTERVAL_S": "30"}
    )
    return MonitoringProcess(
        role,
        settings.home.absolute() / record.name,
        store_url=str(settings.capture_store),
        redis_url=redis_url,
        metrics_port=record.ports["metrics"],
        host=record.host,
        settings={k: v for k, v in local.items() if k not in os.environ},
    )


def _gateway(
    settings: StackSettings,
    record: ServiceRecord,
    triton_grpc_url: str,
    redis_url: str | None,
    *,
    capture: bool = False,
) -> GatewayProcess:
    directory = settings.home.absolute() / "gateway"
    tenants_file, _ = ensure_dev_tenant(directory)
    env = {
        "GATEWAY_ENVIRONMENT": "development",
        # the feature store `tritonstack features ...` set up (SQLite unless FEATURES_REDIS_URL)
        "FEATURES_STATE_DIR": os.environ.get(
            "FEATURES_STATE_DIR", str(settings.home.absolute() / "features")
        ),
    }
    if "driver_ranker" in servable_models(settings.model_repository)[0]:
        env["GATEWAY_READY_REQUIRES_FEATURES"] = "true"
    if capture and redis_url:  # the sink reads what the gateway captures from Redis
        env["GATEWAY_CAPTURE_ENABLED"] = "true"
        env["GATEWAY_CAPTURE_SAMPLE_RATES"] = json.dumps({"*": settings.capture_sample_rate})
    return GatewayProcess(
        directory,
        triton_grpc_url=triton_grpc_url,
        tenants_file=tenants_file,
        redis_url=redis_url,
        port=record.ports["http"],
        metrics_port=record.ports["metrics"],
        host=record.host,
        settings=env,
    )
