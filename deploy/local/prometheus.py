"""A local Prometheus (Debian's ``prometheus`` package) scraping the local Triton and gateway.

The scrape configuration is generated (JSON is YAML) with the same job names as the Compose
and Kubernetes set-ups ("triton", "gateway"), and loads the same alert rules
(``deploy/monitoring/prometheus/rules``), so what is checked here is what runs there.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deploy.local.errors import DeployError, RuntimeMissingError
from deploy.local.process import BackgroundProcess, free_port

RULES_DIR = Path(__file__).resolve().parents[1] / "monitoring" / "prometheus" / "rules"


class PrometheusQueryError(DeployError):
    """Prometheus' HTTP API refused a query or could not be reached."""


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found is None:
        raise RuntimeMissingError(
            "prometheus is not installed: run `make setup` as root, or "
            "`sudo apt-get install -y --no-install-recommends prometheus`"
        )
    return found


def scrape_config(
    targets: Mapping[str, Sequence[str]],
    *,
    scrape_interval_s: float = 15.0,
    rule_files: Sequence[Path] = (),
) -> dict[str, Any]:
    """A Prometheus configuration scraping ``/metrics`` of each job's ``host:port`` targets."""
    interval = f"{int(scrape_interval_s * 1000)}ms"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": "/metrics",
                "scrape_timeout": interval,
                "static_configs": [{"targets": list(addresses)}],
            }
            for job, addresses in targets.items()
        ],
    }


def host_port(url: str) -> str:
    """``host:port`` of a URL (``http://127.0.0.1:8002/metrics`` -> ``127.0.0.1:8002``)."""
    parts = urllib.parse.urlsplit(url if "//" in url else f"//{url}")
    if not parts.hostname or not parts.port:
        raise ValueError(f"{url!r} names no host and port")
    return f"{parts.hostname}:{parts.port}"


class PrometheusServer(BackgroundProcess):
    """``prometheus`` on a loopback port with a generated scrape configuration.

    ``targets`` maps a job name to ``host:port`` addresses whose ``/metrics`` it scrapes; the
    TSDB lives under ``work_dir`` (kept for ``retention``, 2 hours by default).
    """

    name = "prometheus"

    def __init__(
        self,
        work_dir: Path,
        targets: Mapping[str, Sequence[str]],
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        scrape_interval_s: float = 15.0,
        rule_files: Sequence[Path] = (),
        retention: str = "2h",
        startup_timeout_s: float = 30.0,
        shutdown_timeout_s: float = 10.0,
        request_timeout_s: float = 2.0,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.work_dir = work_dir.absolute()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.request_timeout_s = request_timeout_s
        self.config_path = self.work_dir / "prometheus.yml"
        config = scrape_config(targets, scrape_interval_s=scrape_interval_s, rule_files=rule_files)
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        command = [
            prometheus_binary(),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.work_dir / 'data'}",
            f"--storage.tsdb.retention.time={retention}",
            f"--web.listen-address={host}:{self.port}",
        ]
        super().__init__(
            command,
            log_path=self.work_dir / "prometheus.log",
            ready=self._ready,
            cwd=self.work_dir,
            startup_timeout_s=startup_timeout_s,
            shutdown_timeout_s=shutdown_timeout_s,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"{self.url}/-/ready", timeout=self.request_timeout_s
            ) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``: the ``data`` of a successful answer."""
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=self.request_timeout_s) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        except (urllib.error.URLError, OSError) as exc:
            raise PrometheusQueryError(f"Prometheus at {self.url} unreachable: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusQueryError(
                f"{path} {params}: {body.get('errorType', '?')}: {body.get('error', body)}"
            )
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query; the result vector (``[{"metric": {...}, "value": [t, "v"]}]``)."""
        data = self.api("query", query=promql)
        return list(data["result"])

    def target_health(self) -> dict[str, list[str]]:
        """Each job's active targets' health (``up``, ``down``, ``unknown``)."""
        health: dict[str, list[str]] = {}
        for target in self.api("targets", state="active")["activeTargets"]:
            health.setdefault(target["labels"]["job"], []).append(target["health"])
        return health
