"""The gateway's outermost ASGI middleware: nothing is parsed for a caller it has not admitted.

For every route but the public ones (health, readiness, the OpenAPI description and the API
docs with their assets), in order and
before a byte of the body is read:

1. the API key (``Authorization: Bearer`` or ``X-API-Key``) → 401 (a key sent without the
   ``Bearer`` scheme is told the header's form);
2. the tenant's rate-limit gate (known to be over its limit) → 429, no Redis round trip;
3. the tenant's requests in flight on this replica (``max_inflight``) → 429;
4. the body: ``Content-Length`` over ``GATEWAY_MAX_BODY_BYTES`` → 413 at once, a chunked body
   → 413 as soon as it passes the bound; then it is handed to the app in one piece.

An answer given before the body was read closes the connection (``Connection: close``), so a
slow upload cannot keep it. The time to receive headers and body is bounded by
``gateway.protocol``. Request latency, responses by status and the in-flight gauge are recorded
here; the ``model`` label is set only once a request was admitted to a model Triton serves
(``gateway.admission.admitted``), so unknown names never become label values.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import GatewayError, error_response
from gateway.ratelimit import limited
from gateway.tenants import Tenant

if TYPE_CHECKING:
    from gateway.services import Services

PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
    }
)
PUBLIC_PREFIX = "/docs/assets/"  # Swagger UI's and ReDoc's own files, served by the gateway
_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}
_FORM = "send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
_REFUSALS = {
    "missing": f"missing API key: {_FORM}",
    "invalid": "invalid API key",
    "bare": f"the Authorization header needs the Bearer scheme: {_FORM}",
    "scheme": f"the Authorization header's scheme must be Bearer: {_FORM}",
}


def presented_key(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str]:
    """The key a request presents, and how: ``presented``, ``missing``, or why it is not one
    (``bare``: no scheme; ``scheme``: not Bearer). Never from the query string."""
    api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, space, token = value.decode("latin-1").strip().partition(" ")
            if not space and scheme.lower() != "bearer":
                return None, "bare"
            if scheme.lower() != "bearer":
                return None, "scheme"
            return token.strip() or None, "missing" if not token.strip() else "presented"
        if name == b"x-api-key":
            api_key = value.decode("latin-1")
    return api_key, "presented" if api_key else "missing"


def _declares_body(headers: list[tuple[bytes, bytes]]) -> tuple[bool, int | None]:
    """Whether a body follows, and its declared length (None: chunked or absent)."""
    length: int | None = None
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            length = int(value) if value.isdigit() else None
        elif name == b"transfer-encoding":
            chunked = True
    return chunked or bool(length), length


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}


class Guard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        svc: Services = scope["app"].state.services
        started = time.perf_counter()
        status = 500
        svc.metrics.inflight.inc()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        tenant: Tenant | None = None
        try:
            path: str = scope["path"]
            if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIX):
                await self.app(scope, receive, send_wrapper)
                return
            has_body, length = _declares_body(scope["headers"])
            refused = self._admit(svc, scope)
            if isinstance(refused, GatewayError):
                await self._refuse(svc, scope, refused, has_body, send_wrapper)
                return
            tenant = refused
            svc.in_flight[tenant.name] = svc.in_flight.get(tenant.name, 0) + 1
            body = await self._read_body(receive, svc.settings.max_body_bytes, length)
            if isinstance(body, GatewayError):
                await self._refuse(svc, scope, body, has_body, send_wrapper)
            elif body is not None:  # None: the client went away (or was too slow)
                await self.app(scope, _replay(body, receive), send_wrapper)
        finally:
            if tenant is not None:
                svc.in_flight[tenant.name] -= 1
                if not svc.in_flight[tenant.name]:
                    del svc.in_flight[tenant.name]
            svc.metrics.inflight.dec()
            route = getattr(scope.get("route"), "path", "unmatched")
            svc.metrics.observe(route, scope["state"].get("model", ""), status, started)

    @staticmethod
    def _admit(svc: Services, scope: Scope) -> Tenant | GatewayError:
        """The tenant, or the refusal: its key (401), its gate (429), its requests in flight."""
        metrics = svc.metrics
        key, how = presented_key(scope["headers"])
        tenant = svc.auth.authenticate(key)
        if tenant is None:
            reason = "missing" if how == "missing" else "invalid"
            metrics.auth_failures.labels(reason=reason).inc()
            message = _REFUSALS["invalid" if how == "presented" else how]
            return GatewayError(401, "unauthorized", message, headers=dict(_UNAUTHORIZED))
        scope["state"]["tenant"] = tenant
        wait = svc.limiter.blocked_for(tenant.name)
        if wait > 0:
            metrics.rate_limited.labels(tenant=tenant.name).inc()
            retry = str(max(1, math.ceil(wait)))
            limit = {
                "RateLimit-Limit": str(tenant.config.burst),
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": retry,
                "Retry-After": retry,
            }
            return limited(tenant, wait, limit)
        bound = tenant.config.max_inflight or svc.settings.tenant_max_inflight
        if svc.in_flight.get(tenant.name, 0) >= bound:
            metrics.rate_limited.labels(tenant=tenant.name).inc()
            return GatewayError(
                429,
                "too_many_in_flight",
                f"this API key has {bound} requests in flight on this replica; wait for one to "
                "finish",
                headers={"Retry-After": "1"},
            )
        return tenant

    @staticmethod
    async def _refuse(
        svc: Services, scope: Scope, error: GatewayError, has_body: bool, send: Send
    ) -> None:
        if has_body:  # the body was not read: do not wait for it on this connection
            error.headers["Connection"] = "close"
        answer = error_response(error, svc.shapes.of(scope["path"]))
        await answer(scope, _empty_receive, send)

    @staticmethod
    async def _read_body(
        receive: Receive, limit: int, length: int | None
    ) -> bytes | GatewayError | None:
        """The whole body (at most ``limit`` bytes), a 413, or None when the client left."""
        too_large = GatewayError(413, "body_too_large", f"the request body exceeds {limit} bytes")
        if length is not None and length > limit:
            return too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read, handed to the app in one message (then the connection's own receive)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
