"""A local ``redis-server`` (Debian's package) on a loopback port, started and stopped by us."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from deploy.local.errors import RuntimeMissingError
from deploy.local.process import BackgroundProcess, free_port


def redis_binary() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        raise RuntimeMissingError(
            "redis-server is not installed: run `make setup` as root, or "
            "`sudo apt-get install -y redis-server`"
        )
    return found


def redis_ping(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when a Redis server answers PING on ``host:port`` (no client library needed); a
    server without anonymous access answers NOAUTH, which is an answer too."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer(BackgroundProcess):
    """``redis-server`` with no persistence, bound to loopback, with a memory bound.

    ``maxmemory`` with ``allkeys-lru`` bounds what the response cache can take; rate-limit keys
    are tiny and expire by themselves.
    """

    name = "redis-server"

    def __init__(
        self,
        work_dir: Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        maxmemory: str = "256mb",
        extra_args: list[str] | None = None,
        startup_timeout_s: float = 10.0,
        shutdown_timeout_s: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.work_dir = work_dir.absolute()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        command = [
            redis_binary(),
            "--port", str(self.port),
            "--bind", host,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.work_dir),
            "--maxmemory", maxmemory,
            "--maxmemory-policy", "allkeys-lru",
            *(extra_args or []),  # e.g. ACL users: --user default off --user NAME on >PASSWORD
        ]  # fmt: skip
        super().__init__(
            command,
            log_path=self.work_dir / "redis.log",
            ready=lambda: redis_ping(self.host, self.port),
            cwd=self.work_dir,
            startup_timeout_s=startup_timeout_s,
            shutdown_timeout_s=shutdown_timeout_s,
        )

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"
