"""Start, wait for and stop a real ``tritonserver`` process.

The server runs in its own process group (python-backend stubs are its children), so stopping
it stops everything it started: SIGTERM to the group, then SIGKILL after ``shutdown_timeout_s``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from deploy.local.errors import TritonStartError
from deploy.local.runtime import TritonRuntime

_POLL_INTERVAL_S = 0.2


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TritonPorts:
    http: int
    grpc: int
    metrics: int

    @classmethod
    def resolve(cls, http: int = 0, grpc: int = 0, metrics: int = 0, host: str = "127.0.0.1"):
        """Keep the ports given; replace each 0 by a free loopback port."""
        chosen: list[int] = []
        for port in (http, grpc, metrics):
            while port == 0 or port in chosen:
                port = free_port(host)
            chosen.append(port)
        return cls(*chosen)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


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


# Start-up noise of a GPU-less machine, not the reason anything failed.
_HARMLESS = ("CudaDriverHelper", "NVML", "DCGM", "GPU metrics", "pinned memory")


def log_excerpt(path: Path, errors: int = 20, tail: int = 15) -> str:
    """Triton's error lines (whatever their place in the log) followed by its last lines.

    A failing model is reported early in the log, and the banner tables that follow would push
    it out of a plain tail.
    """
    text = log_tail(path, lines=100_000)
    lines = text.splitlines()
    found = [
        line
        for line in lines
        if (
            line.startswith("E1")
            or " ERROR" in line
            or "error:" in line.lower()
            or "failed" in line.lower()
        )
        and not any(h in line for h in _HARMLESS)
    ]
    parts = []
    if found:
        parts += ["errors:", *found[-errors:]]
    parts += ["last lines:", *lines[-tail:]]
    return "\n".join(parts)


def http_ready(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when Triton's ``/v2/health/ready`` answers 200 (all models loaded, strict readiness)."""
    try:
        with urllib.request.urlopen(
            f"http://{host}:{port}/v2/health/ready", timeout=timeout_s
        ) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class TritonServer:
    """One ``tritonserver`` process serving ``model_repository`` on loopback ports."""

    def __init__(
        self,
        runtime: TritonRuntime,
        model_repository: Path,
        *,
        work_dir: Path,
        ports: TritonPorts | None = None,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 180.0,
        shutdown_timeout_s: float = 30.0,
        model_control_mode: str = "none",
        extra_args: list[str] | None = None,
        response_cache_bytes: int = 0,
    ) -> None:
        self.runtime = runtime
        self.model_repository = model_repository.absolute()
        self.work_dir = work_dir.absolute()
        self.ports = ports or TritonPorts.resolve(host=host)
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.model_control_mode = model_control_mode
        self.extra_args = list(extra_args or [])
        self.response_cache_bytes = response_cache_bytes  # models opt in (response_cache)
        self.log_path = self.work_dir / "tritonserver.log"
        self.process: subprocess.Popen[bytes] | None = None

    # -- addresses -------------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports.metrics}/metrics"

    def command(self) -> list[str]:
        backend_dir = self.runtime.backend_directory(self.work_dir / "backends")
        return [
            str(self.runtime.server_binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--cache-directory={self.runtime.cache_directory}",
            f"--http-address={self.host}",
            f"--http-port={self.ports.http}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.ports.metrics}",
            f"--model-control-mode={self.model_control_mode}",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--disable-auto-complete-config",
            "--allow-gpu-metrics=false",
            *(
                [f"--cache-config=local,size={self.response_cache_bytes}"]
                if self.response_cache_bytes
                else []
            ),
            *self.extra_args,
        ]

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> TritonServer:
        """Start the server and wait until it is ready, or raise :class:`TritonStartError`."""
        if not self.model_repository.is_dir():
            raise TritonStartError(f"model repository {self.model_repository} does not exist")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        command = self.command()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.runtime.server_env(),
                cwd=self.work_dir,
                start_new_session=True,  # own process group: stop() reaches the stubs too
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
                raise TritonStartError(
                    f"tritonserver exited with code {code} during start-up (log: {self.log_path})",
                    log_excerpt(self.log_path),
                )
            if http_ready(self.host, self.ports.http):
                return
            time.sleep(_POLL_INTERVAL_S)
        raise TritonStartError(
            f"tritonserver was not ready within {self.startup_timeout_s:.0f} s "
            f"(log: {self.log_path})",
            log_excerpt(self.log_path),
        )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Stop the server and every process of its group; idempotent."""
        if self.process is None:
            return
        stop_process_group(self.process.pid, self.shutdown_timeout_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_process_group(pgid: int, timeout_s: float) -> bool:
    """SIGTERM the process group ``pgid``, SIGKILL it after ``timeout_s``.

    Returns True when the group had to be killed. The leader is reaped when it is our child.
    """
    if not _group_alive(pgid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pgid)
        if not _group_alive(pgid):
            return False
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    for _ in range(50):
        _reap(pgid)
        if not _group_alive(pgid):
            break
        time.sleep(0.1)
    return True
