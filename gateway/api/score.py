"""``POST /v1/score``: entity ids in, online features read, the scoring model called."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from gateway import scoring
from gateway.admission import admitted, allow_model, cached_call, charge
from gateway.cache import CachedResponse
from gateway.deps import JsonBody, ServicesDep, TenantDep
from gateway.errors import ERRORS
from gateway.routing import LeanRoute
from gateway.services import open_features

router = APIRouter(prefix="/v1", tags=["features"], route_class=LeanRoute)


@router.post(
    "/score", response_model=scoring.ScoreResponse, responses=ERRORS, dependencies=[JsonBody]
)
async def score(
    body: scoring.ScoreRequest, request: Request, svc: ServicesDep, tenant: TenantDep
) -> Response:
    """Scores of entities (drivers) from their online features, in request order."""
    name = svc.settings.scoring_model
    allow_model(svc, tenant, name)
    reader = await open_features(svc)
    assert svc.feature_settings is not None
    model = admitted(request, await svc.upstream.model(name))
    # charged before the features are read: a refused tenant costs the store nothing
    decision = await charge(request, svc, tenant, len(body.entity_ids))
    features = await scoring.model_input(reader, svc.feature_settings, body)

    async def produce() -> tuple[CachedResponse, str]:
        scores, version = await scoring.score(svc.upstream, model, features)
        answer = scoring.build_response(model.name, version, features, scores, body)
        return CachedResponse(answer.model_dump_json().encode(), "application/json"), version

    parts = scoring.cache_parts(features, body)
    items = len(body.entity_ids)
    return await cached_call(
        request, svc, tenant, model, parts, produce, items=items, decision=decision
    )
