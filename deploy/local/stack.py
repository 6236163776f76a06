"""``tritonstack up|down``: Triton, redis-server and the gateway under one supervisor.

``up`` fixes the stack's ports and shared-memory prefix in the state file and starts the
supervisor (``deploy/local/supervisor.py``), which starts the services, restarts a crashed one
on the same ports and records what happened; ``down`` stops the supervisor and so everything
under it, and then anything a dead supervisor left behind. Like ``docker compose up``, ``up``
on a running stack changes nothing (it refuses settings that differ from the running stack's),
and like ``compose down``, ``down`` with nothing running succeeds. ``status`` is
``deploy/local/status.py``'s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deploy.local.errors import StackConflictError, StackStartError
from deploy.local.models import load_model
from deploy.local.process import (
    group_alive,
    group_members,
    log_tail,
    pid_running,
    stop_process_group,
)
from deploy.local.services import log_path, plan
from deploy.local.settings import StackSettings
from deploy.local.state import (
    SERVICES,
    StackState,
    SupervisorRecord,
    process_cmdline,
    read_state_file,
    write_state_file,
)
from deploy.local.status import absolute, dev_api_key, status
from deploy.local.triton import new_shm_prefix, remove_shm_regions
from export.reader import servable_models

__all__ = [
    "ServiceState",
    "TritonState",
    "dev_api_key",
    "down",
    "read_service",
    "read_stack",
    "read_state",
    "running_since",
    "servable_models",
    "status",
    "up",
]

ROOT = Path(__file__).resolve().parents[2]
# what each service's processes run: `down` kills a recorded group only if it still runs these
_COMMANDS = {
    "triton": ("tritonserver", "triton_python_backend_stub"),
    "redis": ("redis-server",),
    "gateway": ("-m gateway",),
    "capture": ("-m monitoring capture",),
    "monitor": ("-m monitoring monitor",),
}
Progress = Callable[[str], None]


@dataclass
class TritonState:
    """Where the stack's Triton answers (what ``infer``, ``bench`` and the demo need)."""

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
        return bool(self.pid) and bool(group_alive(self.pid))


@dataclass
class ServiceState:
    """redis-server or the gateway: its pid (0 while it restarts), URL and log."""

    pid: int
    url: str
    log: str
    started_unix: float
    metrics: str = ""  # the gateway's /metrics (its own port)

    def alive(self) -> bool:
        return bool(self.pid) and bool(group_alive(self.pid))


def read_stack(settings: StackSettings) -> StackState | None:
    return read_state_file(settings.state_file)


def read_state(settings: StackSettings) -> TritonState | None:
    state = read_stack(settings)
    if state is None:
        return None
    triton = state.services["triton"]
    return TritonState(
        pid=triton.pid or 0,
        host=triton.host,
        http_port=triton.ports["http"],
        grpc_port=triton.ports["grpc"],
        metrics_port=triton.ports["metrics"],
        model_repository=str(state.settings["model_repository"]),
        log=triton.log,
        started_unix=triton.started_unix or 0.0,
    )


def read_service(settings: StackSettings, name: str) -> ServiceState | None:
    state = read_stack(settings)
    record = state.services.get(name) if state is not None else None
    if record is None:
        return None
    return ServiceState(
        record.pid or 0, record.url, record.log, record.started_unix or 0.0, record.metrics_url
    )


# -- up --------------------------------------------------------------------------------------------
def up(settings: StackSettings, *, progress: Progress | None = None) -> TritonState:
    """Start the stack under its supervisor, or return the running one (loading models exported
    since it started). Raises :class:`StackStartError` when a service did not start."""
    settings = absolute(settings)
    report = progress or (lambda _: None)
    current = read_stack(settings)
    if current is not None and current.supervisor.alive(settings.state_file):
        current = _wait_started(settings, report)
        if current.supervisor.phase != "running":
            raise StackStartError(
                f"the stack is {current.supervisor.phase}: "
                + (current.supervisor.error or "run `tritonstack up` again once `down` finished")
            )
        conflicts = _conflicts(current, settings)
        if conflicts:
            raise StackConflictError(
                f"a stack runs here since {_clock(current.supervisor.started_unix)} with "
                f"{'; '.join(conflicts)}: `tritonstack down` first to start it with new settings"
            )
        triton = current.services["triton"]
        if triton.state == "running":  # exported since it started: load it (explicit mode)
            for name in servable_models(settings.model_repository)[0]:
                load_model(f"{triton.host}:{triton.ports['http']}", name)
        return _triton(settings)
    if current is not None:  # a failed `up`, or a supervisor that died: clear what it left
        _clear(settings, current)
    elif _legacy_pids(settings):
        raise StackStartError(
            f"{settings.state_file} records a stack started by an older tritonstack (no "
            "supervisor): stop it with `tritonstack down` first"
        )
    prefix = new_shm_prefix()
    state = StackState(
        settings=settings.model_dump(mode="json"),
        shm_prefix=prefix,
        supervisor=SupervisorRecord(log=str(log_path(settings, "supervisor"))),
        services=plan(settings, prefix),
    )
    write_state_file(settings.state_file, state)
    supervisor_log = log_path(settings, "supervisor")
    supervisor_log.parent.mkdir(parents=True, exist_ok=True)
    with supervisor_log.open("ab") as out:
        first = subprocess.run(
            [sys.executable, "-m", "deploy.local.supervisor", str(settings.state_file)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,  # Ctrl-C in the terminal does not reach the stack
            timeout=60,
            check=False,
        )  # it forks the daemon and returns
    if first.returncode != 0:
        raise StackStartError(
            f"the supervisor did not start (exit {first.returncode}); log {supervisor_log}:\n"
            + log_tail(supervisor_log, 20)
        )
    final = _wait_started(settings, report)
    if final.supervisor.phase != "running":
        _wait_exit(settings, final.supervisor)  # it stopped everything; let it finish
        raise StackStartError(
            final.supervisor.error or f"the stack stopped while starting ({supervisor_log})"
        )
    return _triton(settings)


def running_since(settings: StackSettings) -> float | None:
    """When the running stack's supervisor started (None: no stack runs)."""
    state = read_stack(settings)
    if state is None or not state.supervisor.alive(absolute(settings).state_file):
        return None
    return state.supervisor.started_unix or None


def _clock(unix: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix)) if unix else "?"


# settings field -> (service, port name) of the ports fixed at the first `up`
_PORTS = {
    "http_port": ("triton", "http"),
    "grpc_port": ("triton", "grpc"),
    "metrics_port": ("triton", "metrics"),
    "redis_port": ("redis", "redis"),
    "gateway_port": ("gateway", "http"),
    "gateway_metrics_port": ("gateway", "metrics"),
    "capture_metrics_port": ("capture", "metrics"),
    "monitor_metrics_port": ("monitor", "metrics"),
}
# what defines a running stack (timeouts and restart settings do not: they are the supervisor's)
_DEFINING = (
    "host", "model_repository", "runtime_env", "redis", "gateway", "response_cache_bytes",
    "capture",
)  # fmt: skip


def _conflicts(state: StackState, wanted: StackSettings) -> list[str]:
    """How ``wanted`` differs from the running stack (a port of 0 asks for nothing)."""
    found = []
    for field, (service, port) in _PORTS.items():
        asked = getattr(wanted, field)
        record = state.services.get(service)
        if asked and record is not None and record.ports.get(port) != asked:
            found.append(f"{field.replace('_', ' ')} {record.ports.get(port)} (asked: {asked})")
    now = wanted.model_dump(mode="json")
    for field in _DEFINING:
        if field in state.settings and state.settings[field] != now[field]:
            found.append(f"{field} {state.settings[field]} (asked: {now[field]})")
    return found


def _triton(settings: StackSettings) -> TritonState:
    state = read_state(settings)
    assert state is not None
    return state


def _wait_started(settings: StackSettings, report: Progress) -> StackState:
    """Follow the supervisor's start-up until it runs the stack or gave up."""
    deadline = time.monotonic() + settings.startup_timeout_s + 120  # + redis, gateway, margin
    seen: dict[str, str] = {}
    while True:
        state = read_stack(settings)
        if state is None:
            raise StackStartError(f"the state file {settings.state_file} disappeared (`down`?)")
        _changes(state, seen, report)
        supervisor = state.supervisor
        if supervisor.phase != "starting":
            return state
        if supervisor.pid is not None and not supervisor.alive(settings.state_file):
            raise StackStartError(
                f"the supervisor died while starting the stack; log {supervisor.log}:\n"
                + log_tail(Path(supervisor.log), 20)
            )
        if time.monotonic() > deadline:
            raise StackStartError(f"the stack did not start in time; log {supervisor.log}")
        time.sleep(0.1)


def _changes(
    state: StackState, seen: dict[str, str], report: Progress, stopping: bool = False
) -> None:
    """Report each service whose state changed since ``seen`` (updated), in start order (stop
    order when ``stopping``)."""
    names = list(state.services)
    for name in reversed(names) if stopping else names:
        record = state.services[name]
        if seen.get(name) != record.state:
            seen[name] = record.state
            report(f"{name} {record.state}")


def _wait_exit(
    settings: StackSettings, supervisor: SupervisorRecord, timeout_s: float = 10
) -> None:
    deadline = time.monotonic() + timeout_s
    while supervisor.alive(settings.state_file) and time.monotonic() < deadline:
        time.sleep(0.05)


# -- down ------------------------------------------------------------------------------------------
def down(settings: StackSettings, *, progress: Progress | None = None) -> StackState | None:
    """Stop the supervisor (it stops the gateway, Redis and Triton), then whatever a dead
    supervisor left: the recorded process groups and the stack's shared-memory regions.

    Returns the stack's last state; None when there was nothing to stop (safe to repeat)."""
    settings = absolute(settings)
    report = progress or (lambda _: None)
    state = read_stack(settings)
    if state is None:
        legacy = _legacy_pids(settings)
        if not legacy:
            return None
        for name, pid in legacy:  # the launcher before supervision: its groups, in order
            if _runs(name, pid):
                report(f"stopping {name} (pid {pid})")
                stop_process_group(pid, settings.shutdown_timeout_s)
        settings.state_file.unlink(missing_ok=True)
        return StackState(settings.model_dump(mode="json"), "", SupervisorRecord(log=""), {})
    supervisor = state.supervisor
    if supervisor.alive(settings.state_file):
        assert supervisor.pid is not None
        report(f"stopping {', '.join(reversed(state.services))} (supervisor pid {supervisor.pid})")
        os.kill(supervisor.pid, signal.SIGTERM)
        seen = {name: record.state for name, record in state.services.items()}
        deadline = time.monotonic() + 3 * settings.shutdown_timeout_s + 10
        while supervisor.alive(settings.state_file) and time.monotonic() < deadline:
            _changes(read_stack(settings) or state, seen, report, stopping=True)
            time.sleep(0.1)
        if supervisor.alive(settings.state_file):
            report(f"the supervisor did not stop in time: SIGKILL (pid {supervisor.pid})")
            os.kill(supervisor.pid, signal.SIGKILL)
        # an exiting process loses its cmdline (so `alive` is False) before it is gone
        gone = time.monotonic() + 10
        while pid_running(supervisor.pid) and time.monotonic() < gone:
            time.sleep(0.02)
        _changes(read_stack(settings) or state, seen, report, stopping=True)  # the last ones
    final = read_stack(settings) or state
    _clear(settings, final)
    settings.state_file.unlink(missing_ok=True)
    return final


def _clear(settings: StackSettings, state: StackState) -> None:
    """Stop the recorded services that still run (only groups that still run their commands:
    a pid may have been reused), then remove the stack's shared-memory regions."""
    for name in reversed(SERVICES):
        record = state.services.get(name)
        if record is not None and record.pid is not None and _runs(name, record.pid):
            stop_process_group(record.pid, settings.shutdown_timeout_s)
    remove_shm_regions(state.shm_prefix)


def _runs(name: str, pgid: int) -> bool:
    """True while the group ``pgid`` still runs service ``name``'s commands."""
    return any(
        any(c in process_cmdline(pid) for c in _COMMANDS[name]) for pid in group_members(pgid)
    )


def _legacy_pids(settings: StackSettings) -> list[tuple[str, int]]:
    """(service, pid) of a state file written by the launcher before supervision, if any."""
    try:
        data = json.loads(settings.state_file.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or "format" in data:
        return []
    found = [(name, data[name].get("pid")) for name in ("gateway", "redis", "triton")
             if isinstance(data.get(name), dict)]  # fmt: skip
    return [(name, pid) for name, pid in found if isinstance(pid, int)]
