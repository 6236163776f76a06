"""Errors the gateway answers with: a status, a stable code and a message that says what to fix.

Two body shapes, by route family:
- Open Inference Protocol routes (``/v2/...``): ``{"error": "<message>", "code": "<code>"}``,
  the shape ``tritonclient.http`` reads;
- everything else (OpenAI-compatible and our own): ``{"error": {"message", "type", "code",
  "param"}}``.
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}

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
