"""The route table every gateway replica uses: Redis first, a local file as the embedded default.

The rollout controller writes one JSON document (``gateway.traffic``) to ``ROUTES_KEY``; each
replica reads it every ``GATEWAY_ROUTES_POLL_S`` (0.5 s: a change is used within a second)
and takes it when its ``revision`` is higher than the one it uses. The revision is the
controller's clock in milliseconds, so a table written again after Redis lost its data (no
persistence here) still wins, and an older one never replaces a newer one. A replica that
cannot read Redis, or reads a table it cannot parse, keeps its last good table and counts the
error; with no table in Redis (nothing rolled out yet, or a fresh Redis) it keeps the file's
(``GATEWAY_ROUTES_FILE``; none: no routes) or the last one it had.

Each poll also records ``revision`` and time under this replica's id in ``REPLICAS_KEY``, so
the controller can wait until every live replica uses a table before it unloads a version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from redis.asyncio import Redis

from gateway.traffic import EMPTY, RouteTable, RouteTableError, parse_table

log = logging.getLogger("gateway")
ROUTES_KEY = "tritonstack:routes"
REPLICAS_KEY = "tritonstack:routes:replicas"
MAX_TABLE_BYTES = 256 * 1024


def load_file(path: Path | None) -> RouteTable:
    """The embedded default: ``path``'s table, or no routes when there is no file.

    Raises ``RouteTableError`` (start-up fails with the reason) for a file that is there but
    unusable: a replica must not start serving with routes it silently ignored."""
    if path is None or not path.exists():
        return EMPTY
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RouteTableError(f"cannot read the routes file {path}: {exc.strerror}") from None
    try:
        return parse_table(raw)
    except RouteTableError as exc:
        raise RouteTableError(f"routes file {path}: {exc}") from None


def replica_record(revision: int, now: float) -> str:
    return f"{revision} {now:.3f}"


def parse_replicas(raw: dict[bytes, bytes], now: float, fresh_s: float) -> dict[str, int]:
    """Replica id -> the revision it uses, for replicas heard from within ``fresh_s``."""
    found: dict[str, int] = {}
    for key, value in raw.items():
        try:
            revision, seen = value.decode().split()
            if now - float(seen) <= fresh_s:
                found[key.decode()] = int(revision)
        except (UnicodeDecodeError, ValueError):
            continue
    return found


class RouteStore:
    """The table in use, refreshed from Redis by ``run()`` (one per gateway process)."""

    def __init__(
        self,
        default: RouteTable,
        redis: Callable[[], Redis | None],
        replica: str,
        *,
        timeout_s: float = 0.25,
    ) -> None:
        self.table = default
        self.source = "file"
        self._redis = redis
        self.replica = replica
        self.timeout_s = timeout_s
        self._raw: bytes | None = None
        self.errors: dict[str, int] = {}  # reason -> count (redis, invalid)
        self.on_change: list[Callable[[RouteTable], None]] = []
        # awaited with (old, new) before a table from Redis is used (e.g. to learn the versions
        # it names, or no longer names, before any request is routed by it)
        self.prepare: Callable[[RouteTable, RouteTable], Awaitable[None]] | None = None

    def _error(self, reason: str, detail: object) -> None:
        first = reason not in self.errors
        self.errors[reason] = self.errors.get(reason, 0) + 1
        if first or self.errors[reason] % 100 == 0:
            log.warning(
                "route table: %s (%s); keeping revision %d", reason, detail, self.table.revision
            )

    async def refresh(self) -> bool:
        """One poll; True when the table in use changed."""
        redis = self._redis()
        if redis is None:
            return False
        try:
            pipe = redis.pipeline(transaction=False)
            pipe.get(ROUTES_KEY)
            pipe.hset(REPLICAS_KEY, self.replica, replica_record(self.table.revision, time.time()))
            # a refused HSET (an ACL without it) must not keep the table from being read
            raw, record = await asyncio.wait_for(pipe.execute(raise_on_error=False), self.timeout_s)
        except Exception as exc:  # RedisError, timeouts, a closed connection: keep the table
            self._error("redis", type(exc).__name__)
            return False
        if isinstance(record, Exception):  # the controller will not see this replica
            self._error("replica_record", record)
        if isinstance(raw, Exception):
            self._error("redis", type(raw).__name__)
            return False
        if raw is None or raw == self._raw:
            return False
        self._raw = raw
        if len(raw) > MAX_TABLE_BYTES:
            self._error("invalid", f"{len(raw)} bytes")
            return False
        try:
            table = parse_table(raw)
        except RouteTableError as exc:
            self._error("invalid", exc)
            return False
        if table.revision <= self.table.revision:
            return False
        if self.prepare is not None:
            await self.prepare(self.table, table)
        self.use(table, "redis")
        return True

    def use(self, table: RouteTable, source: str) -> None:
        self.table, self.source = table, source
        log.info(
            "route table revision %d from %s: %s",
            table.revision,
            source,
            ", ".join(sorted(table.routes)) or "no routes",
        )
        for callback in self.on_change:
            callback(table)

    async def run(self, interval_s: float) -> None:
        """Poll until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(interval_s)
