"""Response caches: answers keyed by tenant, model, model version and a canonical hash of the input.

Two layers live in the stack (see README, "Which cache serves what"):
- this gateway cache holds whole HTTP answers (the exact bytes), in Redis when configured (shared
  by replicas, TTL per entry, memory bounded by Redis' ``maxmemory`` + ``allkeys-lru``) or in an
  in-process LRU (entries and bytes bounded, TTL) as the embedded default;
- Triton's own response cache (``response_cache { enable: true }`` in the model config) holds
  per-request model outputs inside the server, for any client, gateway or not.

Entries are tenant-scoped: one tenant's request never reveals (``X-Cache: HIT``) or receives
another tenant's entry. A Redis entry carries an HMAC-SHA256 tag over its key and bytes (the key
is ``GATEWAY_CACHE_SIGNING_KEY``, shared by the replicas), and is served only when the tag
matches and its media type and headers are ones the gateway itself writes: whoever can write to
Redis cannot make the gateway serve their bytes, and a corrupt entry is a miss, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Protocol

from cachetools import TTLCache
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.redis_pipe import RedisPipe
from gateway.traffic import VERSION_HEADER

log = logging.getLogger(__name__)


# What the gateway itself caches: anything else read back from Redis is refused.
MEDIA_TYPES = frozenset({"application/json", "application/octet-stream"})
HEADERS = frozenset({"Inference-Header-Content-Length", VERSION_HEADER})
_TAG = 32  # HMAC-SHA256


@dataclass(frozen=True)
class CachedResponse:
    body: bytes
    media_type: str
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        head = "\n".join([self.media_type, *(f"{k}:{v}" for k, v in self.headers)]).encode()
        return len(head).to_bytes(4, "little") + head + self.body

    @classmethod
    def decode(cls, blob: bytes) -> CachedResponse | None:
        """The entry, or None when it is not one the gateway wrote (type-checked, never raises)."""
        size = int.from_bytes(blob[:4], "little")
        if len(blob) < 4 + size:
            return None
        try:
            media_type, *lines = blob[4 : 4 + size].decode().split("\n")
        except UnicodeDecodeError:
            return None
        headers = []
        for line in lines:
            name, sep, value = line.partition(":")
            if not sep or name not in HEADERS or not value.isdigit():
                return None
            headers.append((name, value))
        if media_type not in MEDIA_TYPES:
            return None
        return cls(blob[4 + size :], media_type, tuple(headers))

    def seal(self, key: str, signing_key: bytes) -> bytes:
        """``encode()`` behind an HMAC tag over the cache key and the bytes."""
        blob = self.encode()
        return _tag(signing_key, key, blob) + blob

    @classmethod
    def unseal(cls, sealed: bytes, key: str, signing_key: bytes) -> CachedResponse | None:
        """The entry when its tag matches ``key`` and ``signing_key`` and it type-checks."""
        blob = sealed[_TAG:]
        if len(sealed) < _TAG or not hmac.compare_digest(
            sealed[:_TAG], _tag(signing_key, key, blob)
        ):
            return None
        return cls.decode(blob)


def _tag(signing_key: bytes, key: str, blob: bytes) -> bytes:
    mac = hmac.new(signing_key, key.encode(), hashlib.sha256)
    mac.update(blob)
    return mac.digest()


def cache_key(tenant: str, model: str, version: str, *parts: bytes) -> str:
    """``model:version:sha256(tenant, parts)``, each part length-prefixed (no ambiguity)."""
    framed = b"".join(b for part in (tenant.encode(), *parts) for b in (_length(part), part))
    return f"{model}:{version}:{hashlib.sha256(framed).hexdigest()}"


def _length(part: bytes) -> bytes:
    return len(part).to_bytes(8, "little")


class ResponseCache(Protocol):
    layer: str

    async def get(self, key: str) -> CachedResponse | None: ...

    async def put(self, key: str, value: CachedResponse) -> None: ...


class LocalCache:
    """In-process LRU with a TTL, bounded in entries and in bytes.

    One ``TTLCache`` whose size unit is bytes, where each entry weighs at least
    ``max_bytes / max_entries``: so neither bound can be passed.
    """

    layer = "local"

    def __init__(self, max_entries: int, max_bytes: int, ttl_s: float) -> None:
        floor = max(1, max_bytes // max_entries)
        self._entries: TTLCache[str, CachedResponse] = TTLCache(
            maxsize=max_bytes, ttl=ttl_s, getsizeof=lambda v: max(floor, len(v.body) + 64)
        )

    async def get(self, key: str) -> CachedResponse | None:
        return self._entries.get(key)

    async def put(self, key: str, value: CachedResponse) -> None:
        with contextlib.suppress(ValueError):  # larger than the whole cache
            self._entries[key] = value


class RedisCache:
    """Redis ``SET key value EX ttl``; a Redis error is a miss, never a failed request.

    Writes are write-behind: ``put`` returns at once and the ``SET`` runs in the background (the
    answer does not wait for a Redis round trip); until it lands, this process answers the key
    from its pending writes, so its own next identical request is a hit. At most
    ``max_pending`` writes are in flight; past that, ``put`` waits for its write.

    Entries are sealed with ``signing_key`` (see the module docstring); without one, a random
    key of this process: nothing another process wrote is served.
    """

    layer = "redis"

    def __init__(
        self,
        redis: Redis,
        ttl_s: int,
        prefix: str = "tritonstack:rc:",
        max_pending: int = 1024,
        signing_key: bytes | None = None,
        pipe: RedisPipe | None = None,
    ) -> None:
        self._redis = redis
        self._pipe = pipe  # the hot path's commands (gateway.redis_pipe); None: redis-py
        self._ttl_s = ttl_s
        self._prefix = prefix
        self._max_pending = max_pending
        self._signing_key = signing_key or secrets.token_bytes(32)
        self._pending: dict[str, CachedResponse] = {}
        self._writes: set[asyncio.Task[None]] = set()
        self.errors = 0
        self.rejected = 0  # entries read back that were not ours (tag, type): misses

    def open(self, key: str, sealed: bytes | None) -> CachedResponse | None:
        """A blob read for ``key`` as an answer, or None (absent, forged or corrupt)."""
        if not sealed:
            return None
        value = CachedResponse.unseal(sealed, self.full_key(key), self._signing_key)
        if value is None:
            self.rejected += 1
            log.warning("response cache entry refused (tag or type mismatch): treated as a miss")
        return value

    def pending(self, key: str) -> CachedResponse | None:
        return self._pending.get(key)

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) for background writes, e.g. at shutdown."""
        if self._writes:
            await asyncio.wait(self._writes, timeout=timeout_s)

    @property
    def redis(self) -> Redis:
        return self._redis

    def full_key(self, key: str) -> str:
        return self._prefix + key

    async def get(self, key: str) -> CachedResponse | None:
        waiting = self._pending.get(key)
        if waiting is not None:
            return waiting
        try:
            if self._pipe is not None:
                (blob,) = await self._pipe.execute(("GET", self._prefix + key))
            else:
                blob = await self._redis.get(self._prefix + key)
        except (RedisError, OSError) as exc:
            self.errors += 1
            log.warning("response cache read failed (treated as a miss): %s", exc)
            return None
        return self.open(key, blob)

    async def put(self, key: str, value: CachedResponse) -> None:
        if len(self._writes) >= self._max_pending:  # back-pressure instead of unbounded tasks
            await self._write(key, value)
            return
        self._pending[key] = value
        task = asyncio.ensure_future(self._write(key, value))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, key: str, value: CachedResponse) -> None:
        try:
            sealed = value.seal(self.full_key(key), self._signing_key)
            if self._pipe is not None:
                command = ("SET", self.full_key(key), sealed, "EX", self._ttl_s)
                await self._pipe.execute(command, linger=True)  # rides with the next lookup
            else:
                await self._redis.set(self.full_key(key), sealed, ex=self._ttl_s)
        except (RedisError, OSError) as exc:
            self.errors += 1
            log.warning("response cache write failed (answer not cached): %s", exc)
        finally:
            if self._pending.get(key) is value:
                del self._pending[key]
