"""The local stack's state file: what ``up`` planned, what the supervisor runs, what happened.

One JSON file (``HOME/state.json``). ``up`` writes the plan (settings, ports, the shared-memory
prefix) before it starts the supervisor; from then on only the supervisor writes it, each time
atomically (a temporary file renamed over it), so readers (``status``, ``down``, ``logs``,
``infer``, ``bench``) never see half a file.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploy.local.process import pid_running

# start order; `down` and the supervisor stop them in reverse
SERVICES = ("triton", "redis", "gateway", "capture", "monitor")
MAX_EXITS = 10  # exits kept per service (the newest last)
FORMAT = 2


def process_cmdline(pid: int) -> str:
    """The command line of ``pid`` ('' when it is gone or unreadable)."""
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


@dataclass
class ExitRecord:
    """One unexpected end of a service: when, why, after how long, its last log lines."""

    at_unix: float
    cause: str  # "killed by SIGKILL", "aborted (SIGABRT)", "liveness check failed 5 times", ...
    uptime_s: float | None = None
    log_tail: str = ""


@dataclass
class ServiceRecord:
    """A supervised service: its fixed addresses and what the supervisor last saw of it.

    ``state``: planned → starting → running → (exit) restarting → running ... or failed (its
    restart budget is spent, or its first start failed) / stopped (by ``down``).
    """

    name: str
    host: str
    ports: dict[str, int]  # chosen at the first `up`, reused by every restart
    url: str
    log: str
    state: str = "planned"
    pid: int | None = None  # also its process group id
    started_unix: float | None = None
    health: str = "unknown"  # healthy | unhealthy | unknown (the liveness probe's last answer)
    restarts: int = 0
    next_restart_unix: float | None = None
    message: str | None = None  # why it failed
    exits: list[ExitRecord] = field(default_factory=list)

    @property
    def last_exit(self) -> ExitRecord | None:
        return self.exits[-1] if self.exits else None

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics on a port of their own: Triton's and the gateway's ("" else)."""
        port = self.ports.get("metrics")
        return f"http://{self.host}:{port}/metrics" if port else ""

    def alive(self) -> bool:
        return self.pid is not None and pid_running(self.pid)

    def uptime_s(self, now: float | None = None) -> float | None:
        if self.state != "running" or self.started_unix is None:
            return None
        return max(0.0, (now or time.time()) - self.started_unix)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServiceRecord:
        exits = [ExitRecord(**e) for e in data.get("exits", [])]
        return cls(**{**data, "exits": exits})


@dataclass
class SupervisorRecord:
    """The supervising process. ``phase``: starting → running → stopping → stopped, or failed
    (a service did not start: everything started was stopped again, ``error`` says why)."""

    log: str
    pid: int | None = None
    phase: str = "starting"
    started_unix: float | None = None
    error: str | None = None

    def alive(self, state_file: Path) -> bool:
        """True while ``pid`` is this stack's supervisor (not a process that reused the pid)."""
        if self.pid is None or not pid_running(self.pid):
            return False
        cmdline = process_cmdline(self.pid)
        return "deploy.local.supervisor" in cmdline and str(state_file) in cmdline


@dataclass
class StackState:
    settings: dict[str, Any]  # StackSettings as JSON, paths absolute
    shm_prefix: str  # the python backend's region prefix for this stack's Triton
    supervisor: SupervisorRecord
    services: dict[str, ServiceRecord]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": FORMAT,
            "settings": self.settings,
            "shm_prefix": self.shm_prefix,
            "supervisor": asdict(self.supervisor),
        }
        data.update({name: asdict(record) for name, record in self.services.items()})
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StackState:
        return cls(
            settings=data["settings"],
            shm_prefix=data["shm_prefix"],
            supervisor=SupervisorRecord(**data["supervisor"]),
            services={
                name: ServiceRecord.from_json(data[name]) for name in SERVICES if data.get(name)
            },
        )


def read_state_file(path: Path) -> StackState | None:
    """The recorded stack, or None when there is none (or it was written by an older version)."""
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            return None
        return StackState.from_json(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_state_file(path: Path, state: StackState) -> None:
    """Write atomically: readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    os.replace(tmp, path)
