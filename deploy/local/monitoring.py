"""The monitoring services as local processes: the capture sink and the monitor.

``python -m monitoring capture`` (the Redis Stream -> Parquet sink) and ``python -m monitoring
monitor`` (drift and live-accuracy gauges), each with ``/metrics`` on its own port, configured
through ``CAPTURE_*`` / ``MONITOR_*`` variables (the user's own apply; these few are ours).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from deploy.local.gateway import http_ok
from deploy.local.process import BackgroundProcess, free_port

Role = Literal["capture", "monitor"]
PREFIX = {"capture": "CAPTURE_", "monitor": "MONITOR_"}


class MonitoringProcess(BackgroundProcess):
    def __init__(
        self,
        role: Role,
        work_dir: Path,
        *,
        store_url: str,
        redis_url: str | None = None,
        metrics_port: int = 0,
        host: str = "127.0.0.1",
        python: str = sys.executable,
        settings: Mapping[str, str] | None = None,
        startup_timeout_s: float = 60.0,
        shutdown_timeout_s: float = 30.0,
    ) -> None:
        self.name = role
        self.host = host
        self.metrics_port = metrics_port or free_port(host)
        prefix = PREFIX[role]
        env = dict(os.environ)
        env.update(
            {
                f"{prefix}STORE_URL": store_url,
                f"{prefix}METRICS_HOST": host,
                f"{prefix}METRICS_PORT": str(self.metrics_port),
            }
        )
        if role == "capture" and redis_url:
            env["CAPTURE_REDIS_URL"] = redis_url
        env.update(settings or {})
        super().__init__(
            [python, "-m", "monitoring", role],
            log_path=work_dir.absolute() / f"{role}.log",
            ready=lambda: http_ok(self.metrics_url),
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            startup_timeout_s=startup_timeout_s,
            shutdown_timeout_s=shutdown_timeout_s,
        )

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"
