"""The gateway as a local process (``python -m gateway``) and its development tenant."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from deploy.local.process import BackgroundProcess, free_port
from gateway.tenants import TenantConfig, generate_key, hash_key, load_tenants, write_tenants

DEV_TENANT = "dev"


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def ensure_dev_tenant(directory: Path) -> tuple[Path, str]:
    """The local tenants file with a development tenant, and its key (created once, reused).

    The plain key is kept beside the file (mode 0600) so ``tritonstack status`` can print it;
    the gateway itself only ever sees its hash.
    """
    tenants_file = directory / "tenants.toml"
    key_file = directory / "dev-api-key"
    if tenants_file.is_file() and key_file.is_file():
        key = key_file.read_text().strip()
        tenants = load_tenants(tenants_file)
        if DEV_TENANT in tenants and hash_key(key) in tenants[DEV_TENANT].key_sha256:
            return tenants_file, key
    key = generate_key()
    directory.mkdir(parents=True, exist_ok=True)
    key_file.touch(mode=0o600, exist_ok=True)
    key_file.write_text(key + "\n")
    write_tenants(
        tenants_file,
        {
            DEV_TENANT: TenantConfig(
                key_sha256=[hash_key(key)],
                models=["*"],
                rate_per_s=200,
                burst=400,
                development=True,
            )
        },
    )
    return tenants_file, key


class GatewayProcess(BackgroundProcess):
    """``python -m gateway`` on a loopback port, configured through ``GATEWAY_*`` variables."""

    name = "gateway"

    def __init__(
        self,
        work_dir: Path,
        *,
        triton_grpc_url: str,
        tenants_file: Path | None = None,
        redis_url: str | None = None,
        port: int = 0,
        metrics_port: int = 0,
        host: str = "127.0.0.1",
        python: str = sys.executable,
        settings: Mapping[str, str] | None = None,
        startup_timeout_s: float = 60.0,
        shutdown_timeout_s: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        while self.metrics_port == self.port:
            self.metrics_port = free_port(host)
        env = dict(os.environ)  # the user's GATEWAY_* settings apply; these few are ours
        env.update(
            GATEWAY_HOST=host,
            GATEWAY_PORT=str(self.port),
            GATEWAY_METRICS_PORT=str(self.metrics_port),
            GATEWAY_TRITON_GRPC_URL=triton_grpc_url,
        )
        if tenants_file is not None:
            env["GATEWAY_TENANTS_FILE"] = str(tenants_file)
        if redis_url:
            env["GATEWAY_REDIS_URL"] = redis_url
        env.update(settings or {})
        super().__init__(
            [python, "-m", "gateway"],
            log_path=work_dir.absolute() / "gateway.log",
            ready=lambda: http_ok(f"{self.url}/healthz"),
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            startup_timeout_s=startup_timeout_s,
            shutdown_timeout_s=shutdown_timeout_s,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics: their own port, never the API's."""
        return f"http://{self.host}:{self.metrics_port}/metrics"


def curl_examples(url: str, key: str, metrics_url: str | None = None) -> str:
    """Working requests against the local gateway, with the development key."""
    auth = f'-H "Authorization: Bearer {key}"'
    return "\n".join(
        [
            "try the gateway:",
            f"  curl -s {url}/readyz",
            f"  curl -s {auth} -H 'Content-Type: application/json' {url}/v1/embeddings \\",
            """    -d '{"input": ["hello world", "triton"], "model": "all-MiniLM-L6-v2"}'""",
            f"  curl -s {auth} {url}/v2/models/minilm",
            f"  curl -s {metrics_url or url + '/metrics'} | grep gateway_",
            f"  open {url}/docs  (OpenAPI)",
            "the README's examples read the URL and key from the environment:",
            '  eval "$(.venv/bin/tritonstack status --env)"  # TRITONSTACK_URL, TRITONSTACK_KEY',
        ]
    )
