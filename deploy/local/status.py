"""``tritonstack status``: what runs, where, how healthy, restarted how often and why, and which
models (versions, state, variant) the stack's Triton serves."""

from __future__ import annotations

import time
import urllib.error
from pathlib import Path
from typing import Any

from deploy.local.gateway import http_ok
from deploy.local.models import model_status
from deploy.local.settings import StackSettings
from deploy.local.state import ServiceRecord, read_state_file
from deploy.local.triton import http_ready

HINT = "no stack: start one with `tritonstack up`"


def absolute(settings: StackSettings) -> StackSettings:
    """The same settings with absolute paths (the supervisor runs from the project root)."""
    return settings.model_copy(
        update={
            "home": settings.home.absolute(),
            "model_repository": settings.model_repository.absolute(),
            "runtime_env": settings.runtime_dir,
        }
    )


def dev_api_key(settings: StackSettings) -> str | None:
    path = settings.home.absolute() / "gateway" / "dev-api-key"
    return path.read_text().strip() if path.is_file() else None


def status(settings: StackSettings) -> dict[str, Any]:
    """What runs, where, how healthy, restarted how often and why: ``status --json``."""
    settings = absolute(settings)
    state = read_state_file(settings.state_file)
    if state is None:
        return {
            "running": False,
            "state_file": str(settings.state_file),
            "hint": HINT,
            "supervisor": None,
            "triton": None,
            "redis": None,
            "gateway": None,
            "capture": None,
            "monitor": None,
            "models": None,
        }
    now = time.time()
    supervisor = state.supervisor
    supervisor_alive = supervisor.alive(settings.state_file)
    info: dict[str, Any] = {
        "running": supervisor_alive and supervisor.phase == "running",
        "state_file": str(settings.state_file),
        "supervisor": {
            "pid": supervisor.pid,
            "alive": supervisor_alive,
            "phase": supervisor.phase
            if supervisor_alive or supervisor.phase in ("stopped", "failed")
            else "dead",  # killed: its services run unsupervised until `down`
            "error": supervisor.error,
            "started_unix": supervisor.started_unix,
            "uptime_s": round(now - supervisor.started_unix, 1)
            if supervisor_alive and supervisor.started_unix
            else None,
            "log": supervisor.log,
        },
        "shm_prefix": state.shm_prefix,
        "triton": None,
        "redis": None,
        "gateway": None,
        "capture": None,
        "monitor": None,
        "models": None,
    }
    if not info["running"]:
        info["hint"] = "the stack is not running: `tritonstack down`, then `tritonstack up`"
    for name, record in state.services.items():
        info[name] = _service_status(settings, record, now)
    triton = info["triton"]
    if triton is not None:  # what the stack serves (which may not be this shell's setting)
        repository = Path(str(state.settings["model_repository"]))
        triton["model_repository"] = str(repository)
        info["models"] = _models(repository, triton)
    return info


def _models(repository: Path, triton: dict[str, Any]) -> list[dict[str, Any]]:
    """Each model: Triton's view when it answers, the repository's alone otherwise."""
    url = triton["http"].removeprefix("http://") if triton["alive"] else None
    try:
        return [m.as_dict() for m in model_status(repository, url)]
    except (urllib.error.URLError, OSError, ValueError):  # Triton went away meanwhile
        return [m.as_dict() for m in model_status(repository, None)]


def _service_status(settings: StackSettings, record: ServiceRecord, now: float) -> dict[str, Any]:
    alive = record.alive() and record.state == "running"
    uptime = record.uptime_s(now)
    last = record.last_exit
    entry: dict[str, Any] = {
        "state": record.state,
        "pid": record.pid,
        "alive": alive,
        "health": record.health if alive else "unknown",
        "uptime_s": round(uptime, 1) if uptime is not None and alive else None,
        "restarts": record.restarts,
        "last_exit": None
        if last is None
        else {
            "cause": last.cause,
            "ago_s": round(now - last.at_unix, 1),
            "log_tail": last.log_tail,
        },
        "message": record.message,
        "log": record.log,
    }
    host = record.host
    if record.name == "triton":
        ports = record.ports
        entry.update(
            ready=alive and http_ready(host, ports["http"]),
            grpc=f"{host}:{ports['grpc']}",
            http=f"http://{host}:{ports['http']}",
            metrics=record.metrics_url,
        )
    elif record.name == "redis":
        entry.update(url=record.url)
    elif record.name in ("capture", "monitor"):  # their address is their /metrics
        entry.update(ready=alive and http_ok(record.metrics_url), url=record.metrics_url,
                     metrics=record.metrics_url)  # fmt: skip
    else:
        entry.update(
            ready=alive and http_ok(f"{record.url}/readyz"),
            url=record.url,
            metrics=record.metrics_url,
            docs=f"{record.url}/docs",
            dev_api_key=dev_api_key(settings),
        )
    return entry
