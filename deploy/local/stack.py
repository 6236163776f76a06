"""``tritonstack up|down|status``: the local stack as background processes with one state file."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from deploy.local.errors import StackNotRunningError
from deploy.local.runtime import TritonRuntime
from deploy.local.settings import StackSettings
from deploy.local.triton import TritonPorts, TritonServer, http_ready, stop_process_group


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
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def read_state(settings: StackSettings) -> TritonState | None:
    try:
        data = json.loads(settings.state_file.read_text())
        return TritonState(**data["triton"])
    except (FileNotFoundError, KeyError, TypeError, json.JSONDecodeError):
        return None


def up(settings: StackSettings, extra_args: list[str] | None = None) -> TritonState:
    """Start Triton in the background (or return the one already running) and record it."""
    current = read_state(settings)
    if current is not None and current.alive():
        return current
    home = settings.home.absolute()
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
        extra_args=extra_args,
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
    settings.state_file.parent.mkdir(parents=True, exist_ok=True)
    settings.state_file.write_text(json.dumps({"triton": asdict(state)}, indent=2) + "\n")
    server.process = None  # the server outlives this process; `down` stops it by its group
    return state


def down(settings: StackSettings) -> TritonState:
    """Stop exactly what ``up`` started (Triton's process group) and forget it."""
    state = read_state(settings)
    if state is None:
        raise StackNotRunningError(f"no stack recorded in {settings.state_file}")
    stop_process_group(state.pid, settings.shutdown_timeout_s)
    settings.state_file.unlink(missing_ok=True)
    return state


def status(settings: StackSettings) -> dict[str, Any]:
    """What runs and where, as ``tritonstack status --json`` prints it."""
    state = read_state(settings)
    if state is None:
        return {
            "running": False,
            "state_file": str(settings.state_file),
            "triton": None,
            "gateway": None,
        }
    alive = state.alive()
    return {
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
        "gateway": None,  # the gateway (issue #3) records its URL and dev API key here
    }
