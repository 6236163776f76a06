"""Admission of an authenticated request: model access, the rate-limit charge, the cache.

The order, and what each step costs a tenant that is refused:

1. ``gateway.guard`` (before the body is read): the key, then the tenant's gate (known to be
   over its limit: 429 with no Redis round trip), then its in-flight bound;
2. ``allow_model``: 403 for a model the tenant may not use (no Triton call);
3. the model's metadata (cached), the body's validation;
4. ``cached_call``: the charge, weighted by the request's items (texts, rows, entities; at most
   the burst), in the same Redis round trip as the cache lookup, before any upstream work.

A request refused at 2 or 3 (403, 404, 400, 415, 422) is charged one item before its answer goes out
(``charge_refusal``), so a tenant cannot probe without limit: past its limit the refusal itself
becomes a 429.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request, Response

from gateway.cache import CachedResponse, cache_key
from gateway.errors import GatewayError
from gateway.models import ModelInfo
from gateway.ratelimit import Decision, limited
from gateway.services import Services
from gateway.tenants import Tenant

Produce = Callable[[], Awaitable[tuple[CachedResponse, str]]]
CHARGED_REFUSALS = frozenset({400, 403, 404, 405, 415, 422})


def allow_model(svc: Services, tenant: Tenant, model: str) -> None:
    """403 for a model the tenant may not use (decided before Triton is asked anything)."""
    if not tenant.config.may_use(model):
        svc.metrics.auth_failures.labels(reason="forbidden_model").inc()
        raise GatewayError(403, "forbidden", f"this API key may not use model {model!r}")


def admitted(request: Request, model: ModelInfo) -> ModelInfo:
    """Label the request's metrics with a model Triton serves and the tenant may use."""
    label_model(request, model.name)
    return model


def label_model(request: Request, name: str) -> None:
    """The ``model`` label of the request's metrics (only names Triton serves become one)."""
    request.scope["state"]["model"] = name


def weight(tenant: Tenant, items: int) -> int:
    """What a request of ``items`` costs: one per item, at most the burst (else never allowed)."""
    return max(1, min(items, tenant.config.burst))


def settle(svc: Services, tenant: Tenant, decision: Decision) -> Decision:
    """The rate decision, or 429 with ``Retry-After`` and ``RateLimit-*`` headers."""
    if not decision.allowed:
        svc.metrics.rate_limited.labels(tenant=tenant.name).inc()
        raise limited(tenant, decision.retry_after_s, decision.headers())
    return decision


async def charge(request: Request, svc: Services, tenant: Tenant, items: int = 1) -> Decision:
    """Charge ``items`` now (one Redis round trip); 429 past the limit."""
    request.scope["state"]["charged"] = True
    return settle(svc, tenant, await svc.limiter.hit(tenant, weight(tenant, items)))


async def charge_refusal(request: Request, svc: Services, error: GatewayError) -> GatewayError:
    """The refusal to send: ``error``, or a 429 when charging it one item passes the limit."""
    state = request.scope["state"]
    tenant: Tenant | None = state.get("tenant")
    if tenant is None or state.get("charged") or error.status not in CHARGED_REFUSALS:
        return error
    try:
        await charge(request, svc, tenant)
    except GatewayError as refused:  # 429, or 503 when the limiter's store is down (deny)
        return refused if refused.status == 429 else error
    return error


def _bypass_cache(request: Request) -> bool:
    directives = request.headers.get("cache-control", "").lower()
    return "no-cache" in directives or "no-store" in directives


async def cached_call(
    request: Request,
    svc: Services,
    tenant: Tenant,
    model: ModelInfo,
    parts: list[bytes],
    produce: Produce,
    *,
    items: int,
    decision: Decision | None = None,
    version: str | None = None,
) -> Response:
    """Charge ``items`` and look the answer up (one Redis round trip), or call ``produce()``
    and fill the cache. ``decision``: the request was charged already (the cache is only read).
    ``version``: the version a route or the path chose (None: the model's newest).
    """
    cache = svc.cache if svc.settings.cache_enabled else None
    key = cache_key(tenant.name, model.name, version or model.version, *parts)
    result = "bypass"
    if cache is not None and not _bypass_cache(request):
        if decision is None:
            request.scope["state"]["charged"] = True
            found, hit = await svc.limiter.hit_and_lookup(tenant, weight(tenant, items), cache, key)
            decision = settle(svc, tenant, found)
        else:
            hit = await cache.get(key)
        if hit is not None:
            svc.metrics.cache_result(cache.layer, "hit")
            return _respond(hit, decision, "HIT")
        result = "miss"
    elif decision is None:
        decision = await charge(request, svc, tenant, items)
    if cache is not None:
        svc.metrics.cache_result(cache.layer, result)
    answer, served = await produce()
    if (
        cache is not None
        and "no-store" not in request.headers.get("cache-control", "").lower()
        and len(answer.body) <= svc.settings.cache_max_entry_bytes
    ):
        if version is None and served and served != model.version:  # a new version is live
            model = await svc.upstream.model(model.name, refresh=True)
        fill = cache_key(tenant.name, model.name, version or served or model.version, *parts)
        await cache.put(fill, answer)
    return _respond(answer, decision, result.upper())


def _respond(answer: CachedResponse, decision: Decision, cache_state: str) -> Response:
    headers = {**dict(answer.headers), **decision.headers(), "X-Cache": cache_state}
    return Response(answer.body, media_type=answer.media_type, headers=headers)
