"""The routes' dependencies, as ``Annotated`` aliases: the services, the tenant, the model.

All are ``async`` on purpose: FastAPI runs a sync dependency in its thread pool, a hop that cost
a measurable share of the gateway's CPU per request. None reads the body: the guard
(``gateway.guard``) authenticated the caller and bounded the body before any route runs, and
``Tenant`` is the tenant it found.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.admission import admitted, allow_model
from gateway.errors import unsupported_media_type
from gateway.models import ModelInfo
from gateway.services import Services
from gateway.tenants import Tenant


async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def authenticated(request: Request) -> Tenant:
    """The tenant ``gateway.guard`` authenticated before the request reached the app."""
    tenant: Tenant = request.scope["state"]["tenant"]
    return tenant


ServicesDep = Annotated[Services, Depends(services)]
TenantDep = Annotated[Tenant, Depends(authenticated)]


async def path_model(
    model_name: str, request: Request, svc: ServicesDep, tenant: TenantDep
) -> ModelInfo:
    """The model of a ``/v2/models/{model_name}`` path: 403 when the tenant may not use it
    (before Triton is asked anything), 404/503 when Triton does not serve it; once found, the
    request's metrics are labelled with it."""
    allow_model(svc, tenant, model_name)
    return admitted(request, await svc.upstream.model(model_name))


ModelDep = Annotated[ModelInfo, Depends(path_model)]


async def json_body(request: Request) -> None:
    """415 unless the body is declared JSON (a form body from ``curl -d`` or none at all would
    otherwise meet a validation error about a dictionary)."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise unsupported_media_type()


JsonBody = Depends(json_body)
