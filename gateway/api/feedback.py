"""``POST /v1/feedback``: a client's outcome for one of its own captured answers.

The caller was authenticated by ``gateway.guard`` before anything ran; the body is validated
(422) and the request charged one unit of the tenant's rate limit before Redis is asked. The
logic (whose request, which item, onto the stream) is ``gateway.feedback``'s.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from gateway import feedback
from gateway.admission import charge
from gateway.deps import JsonBody, ServicesDep, TenantDep
from gateway.errors import ERRORS
from gateway.routing import LeanRoute

router = APIRouter(prefix="/v1", tags=["monitoring"], route_class=LeanRoute)


@router.post(
    "/feedback",
    status_code=202,
    response_model=feedback.FeedbackResponse,
    responses=ERRORS,
    dependencies=[JsonBody],
)
async def post_feedback(
    body: feedback.FeedbackRequest, request: Request, svc: ServicesDep, tenant: TenantDep
) -> Response:
    """The outcome of an answered request (its ``X-Request-Id``; the driver ranker: 1 when the
    offer was accepted), for the requests of this API key that were captured, within
    ``GATEWAY_CAPTURE_FEEDBACK_TTL_S``. A request that scored several entities names the one
    with ``entity_id`` (or ``item``)."""
    decision = await charge(request, svc, tenant)
    settings, capture = svc.settings, svc.capture
    answer = await feedback.record(
        svc.redis if capture is not None else None,
        body,
        tenant.name,
        stream=settings.capture_stream,
        maxlen=settings.capture_stream_maxlen,
        settle=capture.writer.settle if capture is not None else None,
    )
    return JSONResponse(answer.model_dump(), status_code=202, headers=decision.headers())
