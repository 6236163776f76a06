"""How Triton's failures are answered: the error a client gets, and a circuit breaker per model.

Upstream failures become :class:`GatewayError` with a clear status (unavailable → 503, deadline →
504, queue full → 429). A breaker answers 503 at once after consecutive failures that say the
model cannot be reached (connection lost, not ready, its python backend stub dead), instead of
letting requests pile up on it. A deadline does not count: it says that this request took too
long, not that the model is gone, so one tenant's oversized requests cannot open the breaker for
everybody else.
"""

from __future__ import annotations

import logging
import re
import time

from tritonclient.utils import InferenceServerException

from gateway.errors import GatewayError, not_found, sanitize, unavailable

log = logging.getLogger("gateway")
# "Stub process 'minilm_tokenizer_cpu_0' is not healthy." (a dead python-backend stub)
_DEAD_STUB = re.compile(r"stub process '([^']+)' is not healthy", re.I)


def map_triton_error(exc: InferenceServerException, model: str | None = None) -> GatewayError:
    """Triton/gRPC failure → a gateway error with a status a client can act on.

    Only INVALID_ARGUMENT carries Triton's text (what to fix in the input), sanitized; every
    other failure is logged here and answered without it (addresses, internal names).
    """
    status = str(exc.status() or "")
    message = str(exc.message() or exc)
    lowered = message.lower()
    subject = f"model {model!r}" if model else "Triton"
    if "maximum queue size" in lowered:
        return GatewayError(
            429,
            "queue_full",
            f"{subject} is overloaded (queue full); retry later",
            headers={"Retry-After": "1"},
        )
    if "DEADLINE_EXCEEDED" in status or "deadline" in lowered:
        return GatewayError(
            504, "upstream_timeout", f"{subject} did not answer within the deadline"
        )
    if "unknown model" in lowered or "NOT_FOUND" in status:
        return not_found(f"{subject} is not served by Triton", code="model_not_found")
    if "timeout expired" in lowered:  # Triton's own queue timeout
        return unavailable(f"{subject} timed out in Triton's queue; retry later")
    dead = _DEAD_STUB.search(message)
    if dead:
        log.warning("%s: a python backend stub died: %s", subject, message)
        return GatewayError(
            503,
            "model_restarting",
            f"{subject} is restarting; retry shortly",
            headers={"Retry-After": "1"},
            detail=dead.group(1),
        )
    if "UNAVAILABLE" in status or "not ready" in lowered:
        log.warning("%s unavailable: %s", subject, message)
        return unavailable(f"{subject} is unavailable: Triton cannot be reached or is not ready")
    if "INVALID_ARGUMENT" in status:
        text = sanitize(message)
        return GatewayError(
            400, "invalid_input", f"{subject} rejected the input: {text}", detail=text
        )
    if "RESOURCE_EXHAUSTED" in status:
        return GatewayError(413, "too_large", f"{subject}: request or response too large")
    log.warning("%s failed: %s %s", subject, status, message)
    return GatewayError(502, "upstream_error", f"{subject} failed; the gateway log has details")


class CircuitBreaker:
    """Closed → (``failures`` in a row) → open for ``cooldown_s`` → one trial call → closed."""

    def __init__(self, failures: int, cooldown_s: float) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._count = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if time.monotonic() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """May a call go now? In half-open, the one caller that gets True holds the trial and
        must end it with ``success``, ``failure`` or ``cancel``."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial:
            self._trial = True
            return True
        return False

    def cancel(self) -> None:
        """The call that held the trial never reached Triton (e.g. no slot): free the trial."""
        self._trial = False

    def success(self) -> None:
        self._count, self._opened_at, self._trial = 0, None, False

    def failure(self) -> None:
        self._count += 1
        self._trial = False
        if self._count >= self.failures or self._opened_at is not None:
            self._opened_at = time.monotonic()


def restarting_error(name: str) -> GatewayError:
    return GatewayError(
        503,
        "model_restarting",
        f"model {name!r} is restarting; retry shortly",
        headers={"Retry-After": "1"},
    )


def is_unreachable(error: GatewayError) -> bool:
    """Failures that say the model cannot be reached (a deadline does not: see the docstring)."""
    return error.code in ("upstream_unavailable", "model_restarting")
