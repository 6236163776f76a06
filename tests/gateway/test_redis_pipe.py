"""The gateway's pipelined Redis connection (gateway/redis_pipe.py) against a real redis-server:
replies matched to their callers under concurrency, lingering writes, deadlines, reconnects."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

from deploy.local.redis import RedisServer
from gateway.ratelimit import RedisRateLimiter
from gateway.redis_pipe import RedisPipe

pytestmark = pytest.mark.integration


def _pipe(server: RedisServer, timeout_s: float = 1.0) -> RedisPipe:
    found = RedisPipe.of(Redis.from_url(server.url, socket_timeout=timeout_s))
    assert found is not None
    return found


async def test_concurrent_commands_get_their_own_replies(redis_server: RedisServer) -> None:
    pipe = _pipe(redis_server)

    async def one(i: int) -> None:
        key = f"test:pipe:{i}"
        assert await pipe.execute(("SET", key, f"v{i}"), ("GET", key)) == [b"OK", f"v{i}".encode()]

    await asyncio.gather(*(one(i) for i in range(300)))
    with pytest.raises(ResponseError, match="unknown command"):
        await pipe.execute(("NOSUCHCOMMAND",))
    assert await pipe.execute(("GET", "test:pipe:7")) == [b"v7"]  # still in step
    with pytest.raises(NoScriptError):
        await pipe.execute(("EVALSHA", "0" * 40, 0))
    await pipe.close()


async def test_a_lingering_write_leaves_with_the_next_command(redis_server: RedisServer) -> None:
    pipe, direct = _pipe(redis_server), Redis.from_url(redis_server.url)
    write = asyncio.ensure_future(pipe.execute(("SET", "test:pipe:late", "x"), linger=True))
    await asyncio.sleep(0.01)
    assert await direct.get("test:pipe:late") is None  # not sent yet
    assert await pipe.execute(("GET", "test:pipe:late")) == [b"x"]  # rode along, in order
    assert await write == [b"OK"]
    alone = asyncio.ensure_future(pipe.execute(("SET", "test:pipe:alone", "y"), linger=True))
    assert await asyncio.wait_for(alone, 1.0) == [b"OK"]  # no later command: sent anyway
    await pipe.close()
    await direct.aclose()


async def test_a_late_reply_fails_its_batch_and_the_next_command_reconnects(
    redis_server: RedisServer,
) -> None:
    pipe = _pipe(redis_server, timeout_s=0.2)
    with pytest.raises(TimeoutError):
        await pipe.execute(("BLPOP", "test:pipe:never", 2))  # blocks its connection 2 s
    assert await pipe.execute(("PING",)) == [b"PONG"]  # a fresh connection
    await pipe.close()


async def test_a_restarted_redis_is_reached_again_and_the_script_reloaded(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "a") as server:
        client = Redis.from_url(server.url, socket_timeout=1.0)
        limiter = RedisRateLimiter(client, pipe=RedisPipe.of(client))
        assert (await limiter.hit("t", 10.0, 5)).allowed  # loads the script (NOSCRIPT first)
        port = server.port
    with pytest.raises((ConnectionError, TimeoutError)):
        await limiter.hit("t", 10.0, 5)
    with RedisServer(tmp_path / "b", port=port):  # empty: the script is gone too
        decision = await limiter.hit("t", 10.0, 5)
        assert decision.allowed and decision.remaining == 4
    await client.aclose()
