"""The Open Inference Protocol (KServe v2) over REST: server and model metadata, readiness and
inference, JSON or binary tensors, errors as ``tritonclient.http`` reads them."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from gateway import capturing, v2
from gateway.admission import cached_call, charge
from gateway.cache import CachedResponse
from gateway.deps import ModelDep, ServicesDep, TenantDep
from gateway.errors import V2_ERRORS
from gateway.models import ModelInfo
from gateway.routing import LeanRoute
from gateway.services import Services
from gateway.tenants import Tenant

VERSION = "0.1.0"
router = APIRouter(prefix="/v2", tags=["v2"], route_class=LeanRoute)
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object", "required": ["inputs"]}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post("/models/{model_name}/infer", openapi_extra=INFER_BODY, responses=V2_ERRORS)
async def infer(model: ModelDep, request: Request, svc: ServicesDep, tenant: TenantDep) -> Response:
    """Inference in the Open Inference Protocol (JSON or binary tensor data), answered by the
    version the model's route picks for the caller (sticky by ``X-Routing-Key``, else the API
    key's tenant) or, without a route, the newest Triton serves; ``X-Model-Version`` and
    ``model_version`` say which."""
    return await _infer(model, request, svc, tenant)


@router.post(
    "/models/{model_name}/versions/{model_version}/infer",
    openapi_extra=INFER_BODY,
    responses=V2_ERRORS,
)
async def infer_version(
    model: ModelDep, model_version: str, request: Request, svc: ServicesDep, tenant: TenantDep
) -> Response:
    """Inference by one version of the model, whatever its route says."""
    return await _infer(model, request, svc, tenant, model_version)


async def _infer(
    model: ModelInfo, request: Request, svc: Services, tenant: Tenant, pinned: str | None = None
) -> Response:
    settings = svc.settings
    parsed = v2.parse_infer_request(
        await request.body(),
        v2.header_length(request.headers.get(v2.HEADER_LENGTH)),
        model,
        max_text_chars=settings.max_text_chars,
        max_elements=settings.max_tensor_elements,
    )
    captured = capturing.begin(svc, tenant, model.name)  # None: capture off or not sampled

    routed = svc.rollouts.route(model, tenant, request, pinned)  # which version answers

    async def produce() -> tuple[CachedResponse, str]:
        inputs = [t.to_grpc() for t in parsed.inputs]
        result = await routed.infer(model, inputs, parsed.requested_outputs(), request_id=parsed.id)
        response = result.get_response()
        if captured is not None:
            captured.keep(response, response.model_version)
        payload, head = v2.encode_infer_response(response, parsed)
        if head is None:
            return CachedResponse(payload, "application/json"), response.model_version
        headers = ((v2.HEADER_LENGTH, str(head)),)
        return CachedResponse(payload, "application/octet-stream", headers), response.model_version

    answer = await cached_call(
        request, svc, tenant, model, parsed.cache_parts(), routed.produce(produce),
        items=parsed.batch_size(), version=routed.version,
    )  # fmt: skip
    if captured is not None:
        capturing.finish(captured, answer, partial(capturing.v2_record, parsed=parsed, model=model))
    return answer


# the routes below are rare: the hot one is matched first
@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {"name": "tritonstack-gateway", "version": VERSION, "extensions": ["binary_tensor_data"]}


@router.get("/health/live")
async def v2_live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", responses=V2_ERRORS)
async def v2_ready(svc: ServicesDep) -> JSONResponse:
    ready = bool(svc.health and svc.health.checks.get("triton"))
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@router.get("/models/{model_name}", responses=V2_ERRORS)
async def model_metadata(
    model: ModelDep, request: Request, svc: ServicesDep, tenant: TenantDep
) -> JSONResponse:
    decision = await charge(request, svc, tenant)
    return JSONResponse(model.metadata(), headers=decision.headers())


@router.get("/models/{model_name}/ready", responses=V2_ERRORS)
async def model_ready(
    model: ModelDep, request: Request, svc: ServicesDep, tenant: TenantDep
) -> Response:
    decision = await charge(request, svc, tenant)  # 404 came first: Triton does not know it
    ok = (await svc.upstream.ready([model.name]))[f"model:{model.name}"]
    return JSONResponse(
        {"name": model.name, "ready": ok},
        status_code=200 if ok else 503,
        headers=decision.headers(),
    )
