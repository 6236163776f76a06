"""The FastAPI application: guard (auth, limits) → a router per API → admission → Triton (gRPC).

``create_app`` builds it from the settings and whatever clients it is given: a Triton client
(``upstream``: the gRPC client, or the route tests' fake), a response ``cache``, the rate
limiter's store (``limiter``) and an online feature reader (``features``); what is not given is
built from the settings in the lifespan (Redis, the gRPC channel, Feast). ``gateway.guard`` has
authenticated the caller and bounded the body before any route runs, ``gateway.admission``
decides model access and charges the rate limit, ``gateway.errors`` turns every failure into the
error shape of the router that owns the path, ``gateway.health`` keeps the readiness that
``/readyz`` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig
from prometheus_client import start_http_server
from redis.asyncio import Redis
from starlette.exceptions import HTTPException as StarletteHTTPException

from features.online import OnlineFeatures
from features.settings import FeatureSettings
from gateway.admission import charge_refusal
from gateway.api import ROUTERS, docs
from gateway.api.v2 import VERSION
from gateway.cache import LocalCache, RedisCache, ResponseCache
from gateway.capturing import open_capture
from gateway.errors import GatewayError, Shapes, error_response, to_gateway_error
from gateway.guard import Guard
from gateway.health import Health
from gateway.metrics import Metrics
from gateway.ratelimit import RateLimiter, RedisRateLimiter, ResilientRateLimiter
from gateway.redis_pipe import RedisPipe
from gateway.rollouts import Rollouts
from gateway.routing import add_routes
from gateway.services import Services, open_features
from gateway.settings import Environment, GatewaySettings
from gateway.tenants import Authenticator
from gateway.triton import TritonClient
from gateway.upstream import Upstream

log = logging.getLogger("gateway")
# FastAPI's own OpenTelemetry: off (the gateway's metrics are Prometheus, on their own port; a
# tracer provider some library installs must not start tracing every request)
_NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def _open_redis(svc: Services, injected: set[str]) -> None:
    """Redis for the rate limits and the response cache, unless those were injected."""
    settings = svc.settings
    if not settings.redis_url:
        return
    password = settings.redis_password
    svc.redis = Redis.from_url(
        settings.redis_url,
        username=settings.redis_username,
        password=password.get_secret_value() if password else None,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    svc.redis_pipe = pipe = RedisPipe.of(svc.redis)  # the hot path's commands
    if "limiter" not in injected:
        svc.limiter.primary = RedisRateLimiter(svc.redis, pipe=pipe)
    if settings.cache_enabled and "cache" not in injected:
        key = settings.cache_signing_key
        if key is None and settings.environment is not Environment.development:
            log.warning(
                "GATEWAY_CACHE_SIGNING_KEY is not set: this replica signs its cache entries "
                "with a key of its own, so replicas do not share the Redis cache"
            )
        signing = key.get_secret_value().encode() if key else secrets.token_bytes(32)
        svc.cache = RedisCache(svc.redis, settings.cache_ttl_s, signing_key=signing, pipe=pipe)


async def _feature_checks(svc: Services) -> dict[str, bool]:
    try:
        return {"features": await (await open_features(svc)).ping()}
    except GatewayError:
        return {"features": False}


async def _start_health(svc: Services) -> Health:
    settings = svc.settings
    extra = (lambda: _feature_checks(svc)) if settings.ready_requires_features else None
    health = svc.health = Health(
        settings, svc.upstream, svc.auth, redis=lambda: svc.redis, extra_checks=extra
    )
    try:  # the first round before serving: /readyz is true only once it has looked
        await asyncio.wait_for(health.check(), settings.metadata_timeout_s * 3)
    except TimeoutError:
        log.warning("the first health check did not finish; /readyz stays false until it does")
    return health


async def _close(svc: Services) -> None:
    if isinstance(svc.cache, RedisCache):
        await svc.cache.drain(timeout_s=1.0)
    await svc.upstream.close()
    if svc.features is not None:
        await svc.features.close()
    if svc.capture is not None:  # what it queued, within a second; the rest dropped, counted
        await svc.capture.writer.close(timeout_s=1.0)
    if svc.redis_pipe is not None:
        await svc.redis_pipe.close()
    if svc.redis is not None:
        await svc.redis.aclose()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open each client once (inside the serving loop), start /metrics and the health loop."""
    svc: Services = app.state.services
    settings = svc.settings
    await svc.upstream.open()
    _open_redis(svc, app.state.injected)
    svc.capture = open_capture(svc)
    if settings.scoring_enabled and svc.features is None:  # a store not set up: 503 on /v1/score
        with contextlib.suppress(GatewayError):
            await open_features(svc)
    metrics_server, _ = start_http_server(
        settings.metrics_port, settings.metrics_host or settings.host, registry=svc.metrics.registry
    )
    await svc.rollouts.start(lambda: svc.redis)  # the route table from Redis before serving
    health = await _start_health(svc)
    monitor = asyncio.create_task(health.run())
    try:
        yield
    finally:
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
        await svc.rollouts.stop()
        metrics_server.shutdown()
        metrics_server.server_close()
        await _close(svc)


def _services(
    settings: GatewaySettings,
    upstream: TritonClient | None,
    cache: ResponseCache | None,
    limiter: RateLimiter | None,
    features: OnlineFeatures | None,
) -> Services:
    metrics = Metrics()
    upstream_ = Upstream(settings, metrics, client=upstream)
    if cache is None and settings.cache_enabled:
        cache = LocalCache(
            settings.cache_max_entries, settings.cache_max_bytes, settings.cache_ttl_s
        )
    svc = Services(
        settings=settings,
        metrics=metrics,
        upstream=upstream_,
        auth=Authenticator(settings.tenants),
        limiter=ResilientRateLimiter(limiter, settings.redis_failure_policy, metrics),
        cache=cache,
        shapes=Shapes((router.prefix, shape) for router, shape in ROUTERS),
        embedding_models=settings.embedding_models(),
        rollouts=Rollouts(settings, metrics, upstream_),
        features=features,
    )
    if settings.scoring_enabled or features is not None:
        svc.feature_settings = FeatureSettings()
    return svc


def create_app(
    settings: GatewaySettings | None = None,
    upstream: TritonClient | None = None,
    cache: ResponseCache | None = None,
    limiter: RateLimiter | None = None,
    features: OnlineFeatures | None = None,
) -> FastAPI:
    """The gateway. Each client not given is built from ``settings`` (in the lifespan)."""
    settings = settings or GatewaySettings()
    app = FastAPI(
        title=docs.TITLE,
        version=VERSION,
        description="Authenticated, rate-limited, cached front door to Triton Inference Server.",
        lifespan=lifespan,
        docs_url=None,  # served offline by gateway.api.docs
        redoc_url=None,
        telemetry=_NO_TELEMETRY,
    )
    app.state.services = svc = _services(settings, upstream, cache, limiter, features)
    app.state.injected = {
        name for name, given in (("cache", cache), ("limiter", limiter)) if given is not None
    }
    app.add_middleware(Guard)

    async def refuse(request: Request, exc: Exception) -> JSONResponse:
        """Every failure, through the one error map; a refused tenant is charged for it."""
        error = await charge_refusal(request, svc, to_gateway_error(exc))
        return error_response(error, svc.shapes.of(request.scope["path"]))

    for kind in (
        GatewayError,
        RequestValidationError,
        StarletteHTTPException,
        RecursionError,
        ValueError,
        Exception,
    ):
        app.add_exception_handler(kind, refuse)
    for router, _ in ROUTERS:
        add_routes(app, router)
    app.openapi = lambda: docs.openapi_schema(app)  # type: ignore[method-assign]
    return app
