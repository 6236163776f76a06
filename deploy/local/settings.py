"""Settings of the local stack, read from ``TRITONSTACK_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StackSettings(BaseSettings):
    """Where the local stack keeps its state and how it starts Triton.

    Relative paths are taken from the current directory (the project root for ``make``).
    A port of 0 means "pick a free loopback port at start-up".
    """

    model_config = SettingsConfigDict(env_prefix="TRITONSTACK_", extra="ignore")

    home: Path = Field(Path(".tritonstack"), description="state directory: envs, logs, state")
    model_repository: Path = Path("model_repository")
    runtime_env: Path | None = Field(
        None, description="Triton runtime virtual environment (default: HOME/runtime)"
    )
    host: str = "127.0.0.1"
    http_port: int = Field(0, ge=0, le=65535)
    grpc_port: int = Field(0, ge=0, le=65535)
    metrics_port: int = Field(0, ge=0, le=65535)
    gateway: bool = Field(True, description="start the gateway beside Triton")
    gateway_port: int = Field(0, ge=0, le=65535)
    gateway_metrics_port: int = Field(0, ge=0, le=65535, description="the gateway's /metrics")
    redis: bool = Field(True, description="start redis-server (False: in-process defaults)")
    redis_port: int = Field(0, ge=0, le=65535)
    capture: bool = Field(
        True, description="capture the gateway's traffic: the sink and the monitor (needs redis)"
    )
    capture_metrics_port: int = Field(0, ge=0, le=65535, description="the capture sink's /metrics")
    monitor_metrics_port: int = Field(0, ge=0, le=65535, description="the monitor's /metrics")
    capture_sample_rate: float = Field(
        1.0, ge=0, le=1, description="share of each model's requests the gateway captures"
    )
    response_cache_bytes: int = Field(
        0,
        ge=0,
        description="Triton's response cache (--cache-config local,size=N); 0 = off locally so "
        "that perf_analyzer measures the model, not the cache",
    )
    startup_timeout_s: float = Field(180.0, gt=0)
    shutdown_timeout_s: float = Field(30.0, gt=0)

    # -- supervision (deploy/local/supervisor.py) -------------------------------------------
    restart_backoff_s: float = Field(
        0.2, ge=0, description="wait before the first restart; x4 per restart in the window"
    )
    restart_backoff_max_s: float = Field(30.0, ge=0, description="longest wait before a restart")
    restart_budget: int = Field(
        5, ge=0, description="restarts per service within restart_window_s; then it stays failed"
    )
    restart_window_s: float = Field(300.0, gt=0)
    liveness_interval_s: float = Field(2.0, gt=0, description="between two liveness probes")
    liveness_timeout_s: float = Field(2.0, gt=0, description="deadline of one probe")
    liveness_failures: int = Field(
        5, ge=1, description="failed probes in a row after which a hung process is replaced"
    )

    @property
    def runtime_dir(self) -> Path:
        return (self.runtime_env or self.home / "runtime").absolute()

    @property
    def capture_store(self) -> Path:
        """Where the local capture sink writes its Parquet parts (and references live)."""
        return self.home.absolute() / "capture" / "store"

    @property
    def state_file(self) -> Path:
        return self.home.absolute() / "state.json"
