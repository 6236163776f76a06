"""A background server process of the local stack: start, wait until ready, stop its group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from deploy.local.errors import DeployError

_POLL_INTERVAL_S = 0.1


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 1024 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of ``pid`` from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return fields[0], int(fields[2])


def pid_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan nobody reaped is not running)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """The running (non-zombie) processes of the process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == pgid and stat[0] != "Z":
                members.append(int(entry.name))
    return members


def group_alive(pgid: int) -> bool:
    """True while a running process of the process group ``pgid`` exists.

    Zombies do not count: where PID 1 does not reap orphans (as on this machine), the killed
    python-backend stubs of a dead tritonserver stay zombies and would keep the group "alive".
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return bool(group_members(pgid))


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_process_group(pgid: int, timeout_s: float) -> bool:
    """SIGTERM the process group ``pgid``, SIGKILL it after ``timeout_s``.

    Returns True when the group had to be killed. The leader is reaped when it is our child.
    """
    if not group_alive(pgid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pgid)
        if not group_alive(pgid):
            return False
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    for _ in range(50):
        _reap(pgid)
        if not group_alive(pgid):
            break
        time.sleep(0.1)
    return True


def kill_process_group(pgid: int, wait_s: float = 5.0) -> bool:
    """SIGKILL what is left of the group ``pgid`` (a crashed leader's orphans) and wait for it.

    Returns True when the group is gone. A dead leader's group id is not reused while any
    member lives, so this reaches exactly the processes the leader started.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    while group_alive(pgid):
        _reap(pgid)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def exit_cause(returncode: int) -> str:
    """A process's exit status in words: ``exited with code 1``, ``killed by SIGKILL``."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"aborted ({name})" if name == "SIGABRT" else f"killed by {name}"


class ProcessStartError(DeployError):
    """A local server exited or did not become ready in time; carries its log tail."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(f"{message}\n{log}" if log else message)
        self.log = log


class BackgroundProcess:
    """One server process in its own process group, logging to ``log_path``.

    ``ready`` is polled until it returns True or ``startup_timeout_s`` passes; if the process
    dies first, :class:`ProcessStartError` carries its log tail. ``stop`` sends SIGTERM to the
    whole group and SIGKILL after ``shutdown_timeout_s``.
    """

    name = "process"
    log_mode = "ab"  # "wb": each start begins a fresh log

    def __init__(
        self,
        command: Sequence[str],
        *,
        log_path: Path,
        ready: Callable[[], bool],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        startup_timeout_s: float = 30.0,
        shutdown_timeout_s: float = 10.0,
    ) -> None:
        self.command = list(command)
        self.log_path = log_path
        self.ready = ready
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.startup_timeout_s = startup_timeout_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def prepare(self) -> None:
        """Last checks and the final command/env, just before the process starts (a hook)."""

    def start_error(self, message: str) -> Exception:
        """The exception for a failed start (a hook: subclasses attach their own log view)."""
        return ProcessStartError(message, log_tail(self.log_path))

    def start(self) -> Self:
        """Start the process and wait until it is ready, or raise :meth:`start_error`'s error."""
        self.prepare()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open(self.log_mode) as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # own process group: stop() reaches its children
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise self.start_error(
                    f"{self.name} exited with code {code} during start-up (log: {self.log_path})"
                )
            if self.ready():
                return
            time.sleep(_POLL_INTERVAL_S)
        raise self.start_error(
            f"{self.name} was not ready within {self.startup_timeout_s:g} s (log: {self.log_path})"
        )

    def stop(self) -> None:
        """Stop the process and its group; idempotent."""
        if self.process is None:
            return
        stop_process_group(self.process.pid, self.shutdown_timeout_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
