"""``tritonstack up|down|status``: Triton, redis-server and the gateway as background processes.

One state file records what ``up`` started; ``down`` stops exactly that.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deploy.local.errors import StackNotRunningError, TritonStartError
from deploy.local.gateway import GatewayProcess, ensure_dev_tenant, http_ok
from deploy.local.process import BackgroundProcess, stop_process_group
from deploy.local.redis import RedisServer
from deploy.local.runtime import TritonRuntime
from deploy.local.settings import StackSettings
from deploy.local.triton import TritonPorts, TritonServer, http_ready


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class TritonState:
    pid: int
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    model_repository: str
    log: str
    started_unix: float

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    def alive(self) -> bool:
        return pid_alive(self.pid)


@dataclass
class ServiceState:
    """A background service other than Triton (redis-server, the gateway)."""

    pid: int
    url: str
    log: str
    started_unix: float
    metrics: str = ""  # the gateway's /metrics (its own port)

    def alive(self) -> bool:
        return pid_alive(self.pid)


def _read(settings: StackSettings) -> dict[str, Any]:
    try:
        data = json.loads(settings.state_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(settings: StackSettings, data: dict[str, Any]) -> None:
    settings.state_file.parent.mkdir(parents=True, exist_ok=True)
    settings.state_file.write_text(json.dumps(data, indent=2) + "\n")


def read_state(settings: StackSettings) -> TritonState | None:
    try:
        return TritonState(**_read(settings)["triton"])
    except (KeyError, TypeError):
        return None


def read_service(settings: StackSettings, name: str) -> ServiceState | None:
    try:
        return ServiceState(**_read(settings)[name])
    except (KeyError, TypeError):
        return None


def up(settings: StackSettings, extra_args: list[str] | None = None) -> TritonState:
    """Start Triton, redis-server and the gateway in the background (each only when not running).

    Returns Triton's state; ``read_service(settings, "gateway"|"redis")`` gives the others.
    """
    triton = _up_triton(settings, extra_args)  # recorded as soon as it runs
    redis_url: str | None = None
    if settings.redis:
        redis = _up_redis(settings, read_service(settings, "redis"))
        _write(settings, {**_read(settings), "redis": asdict(redis)})  # `down` can stop it
        redis_url = redis.url
    if settings.gateway:
        gateway = _up_gateway(settings, triton, redis_url, read_service(settings, "gateway"))
        _write(settings, {**_read(settings), "gateway": asdict(gateway)})
    return triton


def servable_models(repository: Path) -> tuple[list[str], list[str]]:
    """Models of a repository that have an exported version, and those that only have a config.

    Ensembles (e.g. ``minilm_text``: tokenizer -> encoder) come after the models they compose,
    so loading them one by one into a running server finds their steps already loaded.
    """
    ready: list[str] = []
    unexported: list[str] = []
    for config in sorted(repository.glob("*/config.pbtxt")):
        versions = [p for p in config.parent.iterdir() if p.is_dir() and p.name.isdigit()]
        (ready if versions else unexported).append(config.parent.name)
    ready.sort(key=lambda name: _is_ensemble(repository / name / "config.pbtxt"))
    return ready, unexported


def _is_ensemble(config: Path) -> bool:
    try:
        return 'platform: "ensemble"' in config.read_text()
    except OSError:
        return False


def _up_triton(settings: StackSettings, extra_args: list[str] | None) -> TritonState:
    ready, _ = servable_models(settings.model_repository)
    current = read_state(settings)
    if current is not None and current.alive():
        for name in ready:  # exported since the server started: load it (explicit mode)
            _load_model(current, name)
        return current
    home = settings.home.absolute()
    if not ready:
        raise StackNotRunningError(
            f"no exported model in {settings.model_repository}: run `tritonstack export` first"
        )
    # Explicit model control: only models with an exported version load (a tracked config
    # whose artefacts are not built yet is skipped), and later exports load into a running
    # server through the repository API.
    mode = "explicit"
    extra_args = [*(f"--load-model={name}" for name in ready), *(extra_args or [])]
    server = TritonServer(
        TritonRuntime(settings.runtime_dir),
        settings.model_repository,
        work_dir=home / "triton",
        ports=TritonPorts.resolve(
            settings.http_port, settings.grpc_port, settings.metrics_port, settings.host
        ),
        host=settings.host,
        startup_timeout_s=settings.startup_timeout_s,
        shutdown_timeout_s=settings.shutdown_timeout_s,
        model_control_mode=mode,
        extra_args=extra_args,
        response_cache_bytes=settings.response_cache_bytes,
    )
    server.start()  # raises TritonStartError with the log tail; stops what it started
    assert server.pid is not None
    state = TritonState(
        pid=server.pid,
        host=settings.host,
        http_port=server.ports.http,
        grpc_port=server.ports.grpc,
        metrics_port=server.ports.metrics,
        model_repository=str(server.model_repository),
        log=str(server.log_path),
        started_unix=time.time(),
    )
    _write(settings, {**_read(settings), "triton": asdict(state)})
    server.process = None  # the server outlives this process; `down` stops it by its group
    return state


def _load_model(state: TritonState, name: str) -> None:
    base = f"http://{state.http_url}/v2"
    try:
        with urllib.request.urlopen(f"{base}/models/{name}/ready", timeout=2) as r:
            if r.status == 200:
                return
    except (urllib.error.URLError, OSError):
        pass
    request = urllib.request.Request(f"{base}/repository/models/{name}/load", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120):
            return
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise TritonStartError(f"Triton could not load {name!r}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise TritonStartError(f"Triton could not load {name!r}: {exc}") from None


def _detach(process: BackgroundProcess, url: str, metrics: str = "") -> ServiceState:
    assert process.pid is not None
    state = ServiceState(process.pid, url, str(process.log_path), time.time(), metrics)
    process.process = None  # outlives this process; `down` stops it by its group
    return state


def _up_redis(settings: StackSettings, current: ServiceState | None) -> ServiceState:
    if current is not None and current.alive():
        return current
    server = RedisServer(
        settings.home.absolute() / "redis", port=settings.redis_port, host=settings.host
    )
    server.start()
    return _detach(server, server.url)


def _up_gateway(
    settings: StackSettings,
    triton: TritonState,
    redis_url: str | None,
    current: ServiceState | None,
) -> ServiceState:
    if current is not None and current.alive():
        return current
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
    gateway = GatewayProcess(
        directory,
        triton_grpc_url=triton.grpc_url,
        tenants_file=tenants_file,
        redis_url=redis_url,
        port=settings.gateway_port,
        host=settings.host,
        settings=env,
    )
    gateway.start()
    return _detach(gateway, gateway.url, gateway.metrics_url)


def down(settings: StackSettings) -> TritonState:
    """Stop exactly what ``up`` started (gateway, redis-server, Triton) and forget it."""
    state = read_state(settings)
    if state is None:
        raise StackNotRunningError(f"no stack recorded in {settings.state_file}")
    for name in ("gateway", "redis"):
        service = read_service(settings, name)
        if service is not None:
            stop_process_group(service.pid, settings.shutdown_timeout_s)
    stop_process_group(state.pid, settings.shutdown_timeout_s)
    settings.state_file.unlink(missing_ok=True)
    return state


def dev_api_key(settings: StackSettings) -> str | None:
    path = settings.home.absolute() / "gateway" / "dev-api-key"
    return path.read_text().strip() if path.is_file() else None


def status(settings: StackSettings) -> dict[str, Any]:
    """What runs and where, as ``tritonstack status --json`` prints it."""
    state = read_state(settings)
    if state is None:
        return {
            "running": False,
            "state_file": str(settings.state_file),
            "triton": None,
            "redis": None,
            "gateway": None,
        }
    alive = state.alive()
    info: dict[str, Any] = {
        "running": alive,
        "state_file": str(settings.state_file),
        "triton": {
            "pid": state.pid,
            "alive": alive,
            "ready": alive and http_ready(state.host, state.http_port),
            "grpc": state.grpc_url,
            "http": f"http://{state.http_url}",
            "metrics": f"http://{state.host}:{state.metrics_port}/metrics",
            "model_repository": state.model_repository,
            "log": state.log,
        },
        "redis": None,
        "gateway": None,
    }
    redis = read_service(settings, "redis")
    if redis is not None:
        info["redis"] = {"pid": redis.pid, "alive": redis.alive(), "url": redis.url}
    gateway = read_service(settings, "gateway")
    if gateway is not None:
        gateway_alive = gateway.alive()
        info["gateway"] = {
            "pid": gateway.pid,
            "alive": gateway_alive,
            "ready": gateway_alive and http_ok(f"{gateway.url}/readyz"),
            "url": gateway.url,
            "metrics": gateway.metrics or f"{gateway.url}/metrics",
            "docs": f"{gateway.url}/docs",
            "dev_api_key": dev_api_key(settings),
            "log": gateway.log,
        }
    return info
