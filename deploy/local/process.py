"""A background server process of the local stack: start, wait until ready, stop its group."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from deploy.local.errors import DeployError
from deploy.local.triton import log_tail, stop_process_group

_POLL_INTERVAL_S = 0.1


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

    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
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
                raise ProcessStartError(
                    f"{self.name} exited with code {code} during start-up (log: {self.log_path})",
                    log_tail(self.log_path),
                )
            if self.ready():
                return
            time.sleep(_POLL_INTERVAL_S)
        raise ProcessStartError(
            f"{self.name} was not ready within {self.startup_timeout_s:g} s (log: {self.log_path})",
            log_tail(self.log_path),
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
