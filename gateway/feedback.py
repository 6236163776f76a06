"""``POST /v1/feedback``: a client's outcome for one of its answered requests.

The request id is the gateway's (the ``X-Request-Id`` of the answer). Feedback is taken for the
requests the capture indexed (models in ``GATEWAY_CAPTURE_FEEDBACK_MODELS``, for
``GATEWAY_CAPTURE_FEEDBACK_TTL_S``), and only from the tenant that sent the request: another
tenant's id is as unknown as a made-up one (404), so ids reveal nothing. A request that scored
several entities names the one the outcome is about (``entity_id``, or ``item``). The outcome
goes onto the capture stream as a :class:`gateway.capture.FeedbackRecord` before the answer
(202): once the client has its answer, the sink will store it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.capture import FeedbackRecord, index_key, parse_index_value
from gateway.errors import GatewayError

REQUEST_ID = r"^[A-Za-z0-9._:-]{1,128}$"


class FeedbackRequest(BaseModel):
    request_id: str = Field(pattern=REQUEST_ID, description="the X-Request-Id of the answer")
    outcome: float = Field(
        ge=0.0, le=1.0, description="what happened: 1 or 0 (driver_ranker: the offer accepted)"
    )
    entity_id: int | None = Field(
        None, description="the scored entity the outcome is about (a request scored several)"
    )
    item: int | None = Field(None, ge=0, description="or its position in the request (0-based)")


class FeedbackResponse(BaseModel):
    request_id: str
    model: str
    model_version: str
    item: int
    status: str = "recorded"


def _unknown(request_id: str) -> GatewayError:
    return GatewayError(
        404,
        "unknown_request",
        f"no answered request {request_id!r} of this API key takes feedback: use the "
        "X-Request-Id of an answer of a model that takes feedback, sent within the feedback "
        "window",
        param="request_id",
    )


def choose_item(body: FeedbackRequest, items: int, entities: list[int]) -> int:
    """The item of the request the outcome is about, or a 422 saying how to name it."""
    if body.entity_id is not None:
        if body.entity_id not in entities:
            raise GatewayError(
                422, "unknown_entity",
                f"request {body.request_id!r} did not score entity {body.entity_id}"
                + (f"; it scored {entities[:20]}" if entities else ""),
                param="entity_id",
            )  # fmt: skip
        if body.item is not None and entities.index(body.entity_id) != body.item:
            raise GatewayError(422, "invalid_input", "item and entity_id name different items",
                               param="item")  # fmt: skip
        return entities.index(body.entity_id)
    if body.item is not None:
        if body.item >= items:
            raise GatewayError(
                422, "invalid_input",
                f"request {body.request_id!r} has {items} items: item must be < {items}",
                param="item",
            )  # fmt: skip
        return body.item
    if items == 1:
        return 0
    raise GatewayError(
        422, "invalid_input",
        f"request {body.request_id!r} scored {items} items: say which with entity_id or item",
        param="entity_id",
    )  # fmt: skip


async def record(
    redis: Redis | None,
    body: FeedbackRequest,
    tenant: str,
    *,
    stream: str,
    maxlen: int,
    settle: Callable[[], Awaitable[bool]] | None = None,
) -> FeedbackResponse:
    """Check the request id belongs to ``tenant`` and append the outcome to the stream.
    ``settle``: on an unknown id, wait for this replica's queued captures (its index may be
    among them: feedback sent right after its answer) and look once more."""
    if redis is None:
        raise GatewayError(  # 404: this gateway has no feedback to take (a 5xx would say retry)
            404, "feedback_disabled",
            "feedback is off on this gateway: it needs capture (GATEWAY_CAPTURE_ENABLED) and Redis "
            "(GATEWAY_REDIS_URL)",
        )  # fmt: skip
    try:
        raw = await redis.get(index_key(body.request_id))
        if raw is None and settle is not None and await settle():
            raw = await redis.get(index_key(body.request_id))
    except (RedisError, OSError, TimeoutError):
        raise _unavailable() from None
    if raw is None:
        raise _unknown(body.request_id)
    owner, model, version, items, entities = parse_index_value(raw)
    if owner != tenant:
        raise _unknown(body.request_id)
    item = choose_item(body, items, entities)
    feedback = FeedbackRecord(body.request_id, time.time(), tenant, model, version, item,
                              body.outcome)  # fmt: skip
    fields: dict[Any, Any] = feedback.fields()
    try:
        await redis.xadd(stream, fields, maxlen=maxlen, approximate=True)
    except (RedisError, OSError, TimeoutError):
        raise _unavailable() from None
    return FeedbackResponse(request_id=body.request_id, model=model, model_version=version,
                            item=item)  # fmt: skip


def _unavailable() -> GatewayError:
    return GatewayError(
        503, "feedback_unavailable", "feedback could not be recorded; retry later",
        headers={"Retry-After": "1"},
    )  # fmt: skip
