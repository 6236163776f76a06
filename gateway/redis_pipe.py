"""The hot path's Redis commands on one pipelined connection (hiredis parses the replies).

Every gateway request runs one or two Redis commands (the rate-limit script with the cache
lookup, and the cache fill). Through redis-py's asyncio client each cost the gateway more CPU
than the rest of a cache hit (its connection pool, retry and instrumentation layers; coredis
was no better): benchmarks/README.md, "Gateway overhead", has the measurements.

``RedisPipe`` sends them on one connection that any number of requests share: commands issued
in the same event-loop turn go out in one write, replies come back in order (Redis answers a
connection's commands in the order sent) and are matched to their requests by a queue.
Replies are parsed by ``hiredis``, the parser redis-py itself uses; errors are redis-py's
exception types, so callers handle them as before. A cache fill nobody waits for lingers until
the next command that is waited for (at c=1, the next request's lookup): one round trip less.

Each batch has a deadline (``timeout_s``): past it, the connection is closed (its replies can
no longer be matched) and every request waiting on it fails with ``TimeoutError``; the next
command opens a new connection (authenticating and selecting the database as configured). It
serves plain TCP (``redis://``); anything else (TLS, unix sockets) stays with redis-py.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

Arg = bytes | str | int | float


# hiredis' packer, in C (its stub types the command as a 1-tuple)
_pack_command = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)


def pack(commands: tuple[tuple[Arg, ...], ...]) -> bytes:
    """RESP arrays of bulk strings, as Redis reads commands."""
    return b"".join(map(_pack_command, commands))


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.flush_soon = False
        self.flush_later: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                if not self.waiting:
                    raise hiredis.ProtocolError("a reply nobody asked for")
                future = self.waiting.popleft()
                if not future.done():
                    future.set_result(reply)
        except hiredis.ProtocolError:
            self.fail(ConnectionError("Redis answered out of protocol"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.fail(ConnectionError("the Redis connection was closed"))

    def fail(self, error: Exception) -> None:
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: nobody may be waiting any more

    def send(self, data: bytes, count: int, linger_s: float) -> list[asyncio.Future[Any]]:
        """Queue commands; they leave with the next write of this loop turn, or (``linger_s``
        > 0: a write nobody waits for, the cache fill) with the next command that is waited for,
        at the latest after ``linger_s``."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("the Redis connection is closed")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(count)]
        idle = not self.waiting  # nothing in flight: no other request to share a write with
        self.waiting.extend(futures)
        self.buffer += data
        if linger_s <= 0 and idle and not self.flush_soon:
            self.flush()  # now, not a loop turn later
        elif linger_s <= 0:
            if not self.flush_soon:  # one write per loop turn, however many requests
                self.flush_soon = True
                loop.call_soon(self.flush)
        elif not self.flush_soon and self.flush_later is None:
            self.flush_later = loop.call_later(linger_s, self.flush)
        return futures

    def flush(self) -> None:
        self.flush_soon = False
        if self.flush_later is not None:
            self.flush_later.cancel()
            self.flush_later = None
        if self.transport is not None and self.buffer:
            self.transport.write(bytes(self.buffer))
        self.buffer.clear()

    def close(self) -> None:
        if self.transport is not None:
            self.flush()
            self.transport.close()


class RedisPipe:
    """``execute(*commands)``: the replies of commands sent together (errors as values are
    raised: ``NoScriptError``, ``ResponseError``; a lost or late connection: ``ConnectionError``
    or ``TimeoutError``)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 0.25,
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.timeout_s = timeout_s
        self._connection: _Connection | None = None
        self._opening: asyncio.Lock | None = None

    @classmethod
    def of(cls, client: Redis) -> RedisPipe | None:
        """A pipe to the server a redis-py client talks to (None unless plain TCP)."""
        kwargs = client.connection_pool.connection_kwargs
        if client.connection_pool.connection_class.__name__ != "Connection" or "host" not in kwargs:
            return None
        return cls(
            kwargs["host"],
            int(kwargs.get("port", 6379)),
            db=int(kwargs.get("db", 0) or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            timeout_s=float(kwargs.get("socket_timeout") or 5.0),
        )

    async def _open(self) -> _Connection:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            found = self._connection
            if found is not None and found.transport is not None:
                return found
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self.timeout_s):
                    _, connection = await loop.create_connection(_Connection, self.host, self.port)
            except (OSError, TimeoutError) as exc:
                raise ConnectionError(f"cannot reach Redis: {type(exc).__name__}") from None
            self._connection = connection
            setup: list[tuple[Arg, ...]] = []
            if self.password is not None:
                credentials = (self.username, self.password) if self.username else (self.password,)
                setup.append(("AUTH", *credentials))
            if self.db:
                setup.append(("SELECT", self.db))
            if setup:
                await self._send(connection, tuple(setup))
            return connection

    async def execute(self, *commands: tuple[Arg, ...], linger: bool = False) -> list[Any]:
        """The replies of ``commands``; ``linger``: a write nobody waits for (it leaves with
        the next command that is waited for, at the latest after a twentieth of a second)."""
        connection = self._connection
        if connection is None or connection.transport is None:
            connection = await self._open()
        return await self._send(connection, commands, linger)

    async def _send(
        self, connection: _Connection, commands: tuple[tuple[Arg, ...], ...], linger: bool = False
    ) -> list[Any]:
        linger_s = min(0.05, self.timeout_s / 4) if linger else 0.0
        futures = connection.send(pack(commands), len(commands), linger_s)
        loop = asyncio.get_running_loop()
        late = loop.call_later(linger_s + self.timeout_s, self._expire, connection, futures)
        try:
            replies = [await future for future in futures]
        finally:
            late.cancel()
        for reply in replies:
            if isinstance(reply, ResponseError):
                if str(reply).startswith("NOSCRIPT"):
                    raise NoScriptError(str(reply))
                raise reply
        return replies

    def _expire(self, connection: _Connection, futures: list[asyncio.Future[Any]]) -> None:
        """A batch past its deadline: its replies can no longer be matched, so the connection
        goes (every request waiting on it fails; the next command opens a new one)."""
        if all(f.done() for f in futures):
            return
        connection.fail(TimeoutError(f"Redis did not answer within {self.timeout_s} s"))
        connection.close()
        if self._connection is connection:
            self._connection = None

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
