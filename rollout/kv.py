"""Typed calls on a synchronous Redis client (redis-py types its results for both the sync
and the async client, so each call is cast once here)."""

from __future__ import annotations

from typing import Any, cast

from redis import Redis


class KV:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def get(self, key: str) -> bytes | None:
        return cast(bytes | None, self.redis.get(key))

    def getdel(self, key: str) -> bytes | None:
        return cast(bytes | None, self.redis.getdel(key))

    def set(self, key: str, value: str, **options: Any) -> bool:
        return bool(self.redis.set(key, value, **options))

    def delete(self, key: str) -> None:
        self.redis.delete(key)

    def pexpire(self, key: str, ms: int) -> None:
        self.redis.pexpire(key, ms)

    def keys(self, pattern: str) -> list[bytes]:
        return cast(list[bytes], self.redis.keys(pattern))

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        return cast(dict[bytes, bytes], self.redis.hgetall(key))

    def lrange(self, key: str, start: int, end: int) -> list[bytes]:
        return cast(list[bytes], self.redis.lrange(key, start, end))

    def push_unique(self, key: str, value: str, limit: int) -> None:
        """``value`` first in the list at ``key`` (once), the list cut to ``limit``."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrem(key, 0, value)
        pipe.lpush(key, value)
        pipe.ltrim(key, 0, limit - 1)
        pipe.execute()
