"""Start, wait for and stop a real ``tritonserver`` process.

The server runs in its own process group (python-backend stubs are its children), so stopping
it stops everything it started: SIGTERM to the group, then SIGKILL after ``shutdown_timeout_s``.
Its python backend names its shared-memory regions (``/dev/shm``) with a prefix of its own, so
the regions a killed server leaves behind are removed exactly, never another server's.
"""

from __future__ import annotations

import contextlib
import secrets
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from deploy.local.errors import TritonStartError
from deploy.local.process import BackgroundProcess, free_port, log_tail
from deploy.local.runtime import TritonRuntime


@dataclass(frozen=True)
class TritonPorts:
    http: int
    grpc: int
    metrics: int

    @classmethod
    def resolve(
        cls, http: int = 0, grpc: int = 0, metrics: int = 0, host: str = "127.0.0.1"
    ) -> TritonPorts:
        """Keep the ports given; replace each 0 by a free loopback port."""
        chosen: list[int] = []
        for port in (http, grpc, metrics):
            while port == 0 or port in chosen:
                port = free_port(host)
            chosen.append(port)
        return cls(*chosen)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# Start-up noise of a GPU-less machine, not the reason anything failed (some of it is logged
# as errors: "unable to create stream for minilm_text: CUDA driver version is insufficient").
_HARMLESS = (
    "CudaDriverHelper",
    "NVML",
    "DCGM",
    "GPU metrics",
    "pinned memory",
    "CUDA driver version is insufficient",
)


def is_noise(line: str) -> bool:
    """A log line a CPU-only machine always shows: never the cause of a failure."""
    return any(h in line for h in _HARMLESS)


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
        and not is_noise(line)
    ]
    parts = []
    if found:
        parts += ["errors:", *found[-errors:]]
    parts += ["last lines:", *lines[-tail:]]
    return "\n".join(parts)


SHM_DIR = Path("/dev/shm")


def new_shm_prefix() -> str:
    """A fresh ``shm-region-prefix-name`` for the python backend (regions: prefix + uuid)."""
    return f"tritonstack_{secrets.token_hex(6)}_"


def shm_regions(prefix: str) -> list[Path]:
    """The python-backend shared-memory regions named with ``prefix`` that exist now."""
    if not prefix:
        raise ValueError("an empty prefix would match every region on the machine")
    return sorted(SHM_DIR.glob(f"{prefix}*"))


def remove_shm_regions(prefix: str) -> list[Path]:
    """Unlink the regions of ``prefix`` (call it once the server's process group is gone)."""
    removed = []
    for region in shm_regions(prefix):
        with contextlib.suppress(FileNotFoundError):
            region.unlink()
            removed.append(region)
    return removed


def http_live(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """True when Triton's ``/v2/health/live`` answers 200 (the process serves, models aside)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/v2/health/live", timeout=timeout_s) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def http_ready(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when Triton's ``/v2/health/ready`` answers 200 (all models loaded, strict readiness)."""
    try:
        with urllib.request.urlopen(
            f"http://{host}:{port}/v2/health/ready", timeout=timeout_s
        ) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class TritonServer(BackgroundProcess):
    """One ``tritonserver`` process serving ``model_repository`` on loopback ports.

    Its own process group (python-backend stubs are its children), so stopping it stops
    everything it started; a failed start raises :class:`TritonStartError` with Triton's error
    lines and log tail. ``shm_prefix`` names its python-backend regions (default: a fresh one);
    ``stop`` removes what is left of them.
    """

    name = "tritonserver"
    log_mode = "wb"  # each start begins a fresh log

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
        shm_prefix: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.shm_prefix = shm_prefix or new_shm_prefix()
        self.model_repository = model_repository.absolute()
        self.work_dir = work_dir.absolute()
        self.ports = ports or TritonPorts.resolve(host=host)
        self.host = host
        self.model_control_mode = model_control_mode
        self.extra_args = list(extra_args or [])
        self.response_cache_bytes = response_cache_bytes  # models opt in (response_cache)
        super().__init__(
            [],  # built by prepare(): the backend directory is made at start
            log_path=self.work_dir / "tritonserver.log",
            ready=lambda: http_ready(self.host, self.ports.http),
            cwd=self.work_dir,
            startup_timeout_s=startup_timeout_s,
            shutdown_timeout_s=shutdown_timeout_s,
        )

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

    def build_command(self) -> list[str]:
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
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *(
                [f"--cache-config=local,size={self.response_cache_bytes}"]
                if self.response_cache_bytes
                else []
            ),
            *self.extra_args,
        ]

    # -- life cycle (start/wait/stop: BackgroundProcess) ------------------------------------------
    def prepare(self) -> None:
        if not self.model_repository.is_dir():
            raise TritonStartError(f"model repository {self.model_repository} does not exist")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.command = self.build_command()
        self.env = self.runtime.server_env()

    def start_error(self, message: str) -> Exception:
        return TritonStartError(message, log_excerpt(self.log_path))

    def stop(self) -> None:
        """Stop the server and its stubs, then remove the shared memory they left behind."""
        super().stop()
        if self.process is not None:
            remove_shm_regions(self.shm_prefix)
