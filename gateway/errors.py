"""Errors the gateway answers with: a status, a stable code and a message that says what to fix.

Two body shapes, by route family:
- Open Inference Protocol routes (``/v2/...``): ``{"error": "<message>", "code": "<code>"}``,
  the shape ``tritonclient.http`` reads;
- everything else (OpenAI-compatible and our own): ``{"error": {"message", "type", "code",
  "param"}}``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


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

    def body(self, v2: bool) -> dict[str, Any]:
        if v2:
            return {"error": self.message, "code": self.code}
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {"message": self.message, "type": kind, "code": self.code, "param": self.param}
        }


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_input"):
    return GatewayError(400, code, message, param=param)


def unprocessable(message: str, *, param: str | None = None, code: str = "invalid_input"):
    return GatewayError(422, code, message, param=param)


def not_found(message: str, *, code: str = "not_found"):
    return GatewayError(404, code, message)


def unavailable(message: str, *, code: str = "upstream_unavailable", retry_after_s: int = 1):
    return GatewayError(503, code, message, headers={"Retry-After": str(retry_after_s)})


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
