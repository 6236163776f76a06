"""The Redis response cache against a real redis-server: write-behind, read-your-writes, TTL."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from deploy.local.redis import RedisServer
from gateway.cache import CachedResponse, RedisCache

pytestmark = pytest.mark.integration


async def test_write_behind_is_read_back_at_once_and_lands_in_redis(
    redis_server: RedisServer,
) -> None:
    redis = Redis.from_url(redis_server.url)
    cache = RedisCache(redis, ttl_s=30, prefix="test:wb:", signing_key=b"k" * 32)
    value = CachedResponse(b"answer", "application/json")
    await cache.put("k", value)
    assert await cache.get("k") == value  # before or after the SET landed: the same answer
    await cache.drain(timeout_s=2)
    assert cache.pending("k") is None
    stored = await redis.get("test:wb:k")  # sealed: an HMAC tag, then the entry
    assert CachedResponse.unseal(stored, "test:wb:k", b"k" * 32) == value
    assert await cache.get("k") == value  # read back from Redis
    assert 0 < await redis.ttl("test:wb:k") <= 30
    await redis.aclose()


async def test_back_pressure_bounds_writes_in_flight(redis_server: RedisServer) -> None:
    redis = Redis.from_url(redis_server.url)
    cache = RedisCache(redis, ttl_s=30, prefix="test:bp:", max_pending=4)
    await asyncio.gather(
        *(cache.put(str(i), CachedResponse(b"x" * 100, "text/plain")) for i in range(50))
    )
    await cache.drain(timeout_s=5)
    assert len(await redis.keys("test:bp:*")) == 50  # none lost
    await redis.aclose()


async def test_unreachable_redis_is_a_miss_not_an_error(tmp_path) -> None:
    with RedisServer(tmp_path) as server:
        url = server.url
    redis = Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=0.2)
    cache = RedisCache(redis, ttl_s=30)
    assert await cache.get("k") is None
    await cache.put("k", CachedResponse(b"x", "text/plain"))
    await cache.drain(timeout_s=2)
    assert cache.errors == 2 and cache.pending("k") is None
    await redis.aclose()
