"""Liveness and readiness of the gateway (public: probes carry no key)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.deps import ServicesDep
from gateway.routing import LeanRoute

router = APIRouter(tags=["health"], route_class=LeanRoute)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (no upstream checks: restarts cure nothing upstream)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready"}})
async def readyz(svc: ServicesDep) -> JSONResponse:
    """Triton and the served models ready (a real inference through the pipelines), Redis
    reachable when configured: the health monitor's last round."""
    checks = dict(svc.health.checks) if svc.health else {"started": False}
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)
