"""Errors the gateway answers with: a status, a stable code and a message that says what to fix.

Two body shapes (``Shape``), one per router, declared where the router is included
(``gateway/api/__init__.py``):
- the Open Inference Protocol router (``/v2``): ``{"error": "<message>", "code": "<code>"}``,
  the shape ``tritonclient.http`` reads;
- everything else (OpenAI-compatible and our own): ``{"error": {"message", "type", "code",
  "param"}}``.

This module is the one place that turns a failure into an answer (``to_gateway_error`` and
``error_response``): the shape comes from the router that owns the path (``Shapes``, built once
from the routers; a path no route matches gets its prefix's router's shape), and no text from
Triton, Redis or the feature store reaches a client unless it went through ``sanitize`` (no
addresses, paths or tracebacks). Anything unexpected is a 500 that says only that, logged with
its traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

log = logging.getLogger("gateway")
# host:port, IPv4, URLs and file paths: what internal messages carry and clients must not see
_INTERNALS = re.compile(
    r"(?:[a-z][a-z0-9+.-]*://\S+)"  # URLs (redis://user:pass@host, dns:///triton:8001)
    r"|(?:\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b)"  # IPv4[:port]
    r"|(?:\[[0-9a-f]*:[0-9a-f:]+\](?::\d+)?)"  # [IPv6]:port
    r"|(?:\b[\w.-]+:\d{2,5}\b)"  # host:port
    r"|(?:(?:/[\w.+-]+){2,}/?)",  # /absolute/file/paths
    re.I,
)
_MAX_MESSAGE = 500


class Shape(StrEnum):
    """The error body of a router: OpenAI's object, or the v2 protocol's string."""

    openai = "openai"
    v2 = "v2"


class Shapes:
    """The error shape of each router, by the path prefix it serves (the longest that
    matches; ``""`` is the default)."""

    def __init__(self, prefixes: Iterable[tuple[str, Shape]]) -> None:
        self._prefixes = sorted(prefixes, key=lambda p: -len(p[0]))

    def of(self, path: str) -> Shape:
        for prefix, shape in self._prefixes:
            if path.startswith(prefix):
                return shape
        return Shape.openai


class GatewayError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}
        self.detail = detail  # Triton's own message, for routes that reword it (never sent)

    def body(self, shape: Shape) -> dict[str, Any]:
        if shape is Shape.v2:
            return {"error": self.message, "code": self.code}
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {"message": self.message, "type": kind, "code": self.code, "param": self.param}
        }


def sanitize(text: str) -> str:
    """Internal text made fit for a client: addresses and paths replaced, length bounded."""
    cleaned = _INTERNALS.sub("<internal>", text)
    return cleaned if len(cleaned) <= _MAX_MESSAGE else cleaned[:_MAX_MESSAGE] + "..."


def bad_request(
    message: str, *, param: str | None = None, code: str = "invalid_input"
) -> GatewayError:
    return GatewayError(400, code, message, param=param)


def not_found(message: str, *, code: str = "not_found") -> GatewayError:
    return GatewayError(404, code, message)


def unavailable(
    message: str, *, code: str = "upstream_unavailable", retry_after_s: int = 1
) -> GatewayError:
    return GatewayError(503, code, message, headers={"Retry-After": str(retry_after_s)})


def unsupported_media_type() -> GatewayError:
    """415 on the JSON routes: a body sent as a form (curl -d) or with no Content-Type."""
    return GatewayError(
        415,
        "unsupported_media_type",
        "send the body as JSON with the header 'Content-Type: application/json'",
    )


# -- the error bodies, documented in the OpenAPI description --------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str
    param: str | None = None


class ErrorBody(BaseModel):
    """Errors of the OpenAI-compatible and feature routes."""

    error: ErrorDetail


class V2ErrorBody(BaseModel):
    """Errors of the Open Inference Protocol routes (what ``tritonclient.http`` reads)."""

    error: str
    code: str


_STATUSES = {
    400: "invalid request: the message says what to fix",
    401: "missing or invalid API key",
    403: "the key may not use this model",
    404: "unknown model or entity",
    413: "request body too large",
    415: "the body is not sent as JSON (Content-Type: application/json)",
    422: "request does not match the schema, or invalid feature values",
    429: "rate limited or Triton's queue full (see Retry-After)",
    502: "the model failed",
    503: "Triton, Redis or the feature store unavailable (see Retry-After)",
    504: "Triton did not answer within the deadline",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in _STATUSES.items()
}
V2_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": V2ErrorBody, "description": text} for code, text in _STATUSES.items()
}


# -- the one error map ----------------------------------------------------------------------------
_STARLETTE_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


def to_gateway_error(exc: Exception) -> GatewayError:
    """Any exception raised while serving a request, as the error the client gets."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, RequestValidationError):
        problems = []
        status = 422
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            if err.get("type") == "json_invalid":
                status = 400
            problems.append(f"{where or 'body'}: {err.get('msg')}")
        return GatewayError(status, "invalid_request", sanitize("; ".join(problems[:5])))
    if isinstance(exc, StarletteHTTPException):
        status = exc.status_code
        message = str(exc.detail) if status < 500 else "internal error"
        if status == 400:  # Starlette's "There was an error parsing the body"
            message = "the body could not be parsed: send valid JSON"
        return GatewayError(
            status,
            _STARLETTE_CODES.get(status, "invalid_request"),
            sanitize(message),
            headers=dict(exc.headers or {}),
        )
    if isinstance(exc, RecursionError):
        return GatewayError(400, "invalid_request", "the JSON body is nested too deeply")
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return GatewayError(400, "invalid_request", "a number in the body has too many digits")
    log.error("unexpected error while serving a request", exc_info=exc)
    return GatewayError(500, "internal_error", "internal error; the gateway log has details")


def error_response(exc: Exception, shape: Shape) -> JSONResponse:
    """The answer to ``exc`` in the error shape of the router that owns the path."""
    error = to_gateway_error(exc)
    return JSONResponse(error.body(shape), status_code=error.status, headers=error.headers)
