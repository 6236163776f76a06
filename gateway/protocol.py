"""uvicorn's HTTP protocol with deadlines to receive a request: headers, then body.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and the number of
connections (``limit_concurrency``), but has no deadline to *receive* a request (its issue #157,
``--timeout-request-start`` / ``--timeout-request-complete``, is still open): a client that
opens a connection and sends nothing, or a header a byte at a time, or a body slowly, holds the
connection for ever (slowloris). ASGI middleware cannot help: it runs after the headers are in.

So this subclass of uvicorn's own httptools protocol (what ``http="auto"`` picks) arms one
timer when a connection opens or a request begins (``header_timeout_s``), re-arms it when the
headers are complete (``body_timeout_s`` for the rest of the body) and disarms it when the
request is complete. On expiry: a ``408`` and close when the headers never completed, a plain
close when the body did not (the app then reads ``http.disconnect``). One ``call_later`` per
request, nothing per byte.

It also sends a response's head and body in one write: uvicorn writes each ASGI message as it
comes (two ``send`` system calls per response); ``CoalescingTransport`` joins what is written
in one event-loop turn (benchmarks/README.md, "Gateway overhead", has what it saves).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("gateway")
_MESSAGE = b"the request was not received in time\n"
_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_MESSAGE), _MESSAGE)
)


class CoalescingTransport:
    """A transport whose writes of one event-loop turn leave in one ``send``; everything else
    is the wrapped transport's (a close sends what is pending first)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._later: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._pending.append(bytes(data))
        if len(self._pending) > 1:  # a response's head and its body: out together, now
            self.flush()
        elif self._later is None:  # a lone write (a head whose body streams, a 408)
            self._later = self._loop.call_soon(self.flush)

    def flush(self) -> None:
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s = 10.0
    body_timeout_s = 30.0
    _deadline: asyncio.TimerHandle | None = None
    _headers_done = False

    def _arm(self, seconds: float) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if not self._headers_done:
            log.info("closing a connection: no complete headers in %g s", self.header_timeout_s)
            self.transport.write(_408)
        else:
            log.info("closing a connection: body not received in %g s", self.body_timeout_s)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalescing = CoalescingTransport(transport, self.loop)
        super().connection_made(coalescing)  # type: ignore[arg-type]
        self._headers_done = False
        self._arm(self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._headers_done = False
        if self._deadline is None:
            self._arm(self.header_timeout_s)

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._arm(self.body_timeout_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


def deadline_protocol(header_timeout_s: float, body_timeout_s: float) -> type[HttpToolsProtocol]:
    """The protocol class for ``uvicorn.run(http=...)`` with these deadlines."""
    return type(
        "GatewayHttpProtocol",
        (DeadlineHttpToolsProtocol,),
        {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s},
    )
