"""The FastAPI application: guard (auth, limits) → admission → validate → cache → Triton (gRPC).

The routes are thin: ``gateway.guard`` has authenticated the caller and bounded the body before
any route runs, ``gateway.admission`` decides model access and charges the rate limit,
``gateway.errors`` turns every failure into the one error shape, ``gateway.health`` keeps the
readiness that ``/readyz`` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import start_http_server
from redis.asyncio import Redis
from starlette.exceptions import HTTPException as StarletteHTTPException

from features.settings import FeatureSettings
from gateway import embeddings, errors, scoring, v2
from gateway.admission import (
    admitted,
    allow_model,
    cached_call,
    charge,
    charge_refusal,
)
from gateway.cache import CachedResponse, LocalCache, RedisCache
from gateway.errors import GatewayError, error_response, to_gateway_error
from gateway.guard import Guard
from gateway.health import Health
from gateway.metrics import Metrics
from gateway.ratelimit import RedisRateLimiter, ResilientRateLimiter
from gateway.services import Services, ServicesDep, TenantDep, open_features
from gateway.settings import Environment, GatewaySettings
from gateway.tenants import Authenticator
from gateway.upstream import Upstream

log = logging.getLogger("gateway")
VERSION = "0.1.0"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open each client once (inside the serving loop), start /metrics and the health loop."""
    svc: Services = app.state.services
    settings = svc.settings
    await svc.upstream.open()
    if settings.redis_url:
        password = settings.redis_password
        svc.redis = Redis.from_url(
            settings.redis_url,
            username=settings.redis_username,
            password=password.get_secret_value() if password else None,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
        )
        svc.limiter.primary = RedisRateLimiter(svc.redis)
        if settings.cache_enabled:
            key = settings.cache_signing_key
            if key is None and settings.environment is not Environment.development:
                log.warning(
                    "GATEWAY_CACHE_SIGNING_KEY is not set: this replica signs its cache entries "
                    "with a key of its own, so replicas do not share the Redis cache"
                )
            signing = key.get_secret_value().encode() if key else secrets.token_bytes(32)
            svc.cache = RedisCache(svc.redis, settings.cache_ttl_s, signing_key=signing)
    if settings.scoring_enabled:  # a store not set up yet answers 503 on /v1/score only
        svc.feature_settings = FeatureSettings()
        with contextlib.suppress(GatewayError):
            await open_features(svc)
    metrics_server, _ = start_http_server(
        settings.metrics_port,
        settings.metrics_host or settings.host,
        registry=svc.metrics.registry,
    )
    health = svc.health = Health(
        settings, svc.upstream, svc.auth, redis=lambda: svc.redis,
        extra_checks=(lambda: _feature_checks(svc)) if settings.ready_requires_features else None,
    )  # fmt: skip
    try:  # the first round before serving: /readyz is true only once it has looked
        await asyncio.wait_for(health.check(), settings.metadata_timeout_s * 3)
    except TimeoutError:
        log.warning("the first health check did not finish; /readyz stays false until it does")
    monitor = asyncio.create_task(health.run())
    try:
        yield
    finally:
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
        metrics_server.shutdown()
        if isinstance(svc.cache, RedisCache):
            await svc.cache.drain(timeout_s=1.0)
        await svc.upstream.close()
        if svc.features is not None:
            await svc.features.close()
        if svc.redis is not None:
            await svc.redis.aclose()


async def _feature_checks(svc: Services) -> dict[str, bool]:
    try:
        return {"features": await (await open_features(svc)).ping()}
    except GatewayError:
        return {"features": False}


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    app = FastAPI(
        title="tritonstack gateway",
        version=VERSION,
        description="Authenticated, rate-limited, cached front door to Triton Inference Server.",
        lifespan=lifespan,
    )
    metrics = Metrics()
    app.state.services = Services(
        settings=settings,
        metrics=metrics,
        upstream=Upstream(settings, metrics),
        auth=Authenticator(settings.tenants),
        limiter=ResilientRateLimiter(None, settings.redis_failure_policy, metrics),
        cache=LocalCache(settings.cache_max_entries, settings.cache_max_bytes, settings.cache_ttl_s)
        if settings.cache_enabled
        else None,
    )
    app.add_middleware(Guard)

    async def refuse(request: Request, exc: Exception) -> JSONResponse:
        """Every failure, through the one error map; a refused tenant is charged for it."""
        error = to_gateway_error(exc)
        error = await charge_refusal(request, app.state.services, error)
        return error_response(error, request.url.path)

    for kind in (GatewayError, RequestValidationError, StarletteHTTPException, RecursionError,
                 ValueError, Exception):  # fmt: skip
        app.add_exception_handler(kind, refuse)

    # -- health --------------------------------------------------------------------------------
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is alive (no upstream checks: restarts cure nothing upstream)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "not ready"}})
    async def readyz(svc: ServicesDep) -> JSONResponse:
        """Triton and the served models ready (a real inference through the pipelines), Redis
        reachable when configured: the health monitor's last round."""
        checks = dict(svc.health.checks) if svc.health else {"started": False}
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    # -- Open Inference Protocol (KServe v2) ----------------------------------------------------
    @app.get("/v2", tags=["v2"])
    async def server_metadata() -> dict[str, Any]:
        return {
            "name": "tritonstack-gateway",
            "version": VERSION,
            "extensions": ["binary_tensor_data"],
        }

    @app.get("/v2/health/live", tags=["v2"])
    async def v2_live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["v2"], responses=errors.V2_ERRORS)
    async def v2_ready(svc: ServicesDep) -> JSONResponse:
        ready = bool(svc.health and svc.health.checks.get("triton"))
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/v2/models/{model_name}", tags=["v2"], responses=errors.V2_ERRORS)
    async def model_metadata(
        model_name: str, request: Request, svc: ServicesDep, tenant: TenantDep
    ) -> JSONResponse:
        allow_model(svc, tenant, model_name)
        info = admitted(request, await svc.upstream.model(model_name))
        decision = await charge(request, svc, tenant)
        return JSONResponse(info.metadata(), headers=decision.headers())

    @app.get("/v2/models/{model_name}/ready", tags=["v2"], responses=errors.V2_ERRORS)
    async def model_ready(
        model_name: str, request: Request, svc: ServicesDep, tenant: TenantDep
    ) -> Response:
        allow_model(svc, tenant, model_name)
        admitted(request, await svc.upstream.model(model_name))  # 404: Triton does not know it
        decision = await charge(request, svc, tenant)
        checks = await svc.upstream.ready([model_name])
        ok = checks[f"model:{model_name}"]
        return JSONResponse(
            {"name": model_name, "ready": ok},
            status_code=200 if ok else 503,
            headers=decision.headers(),
        )

    infer_body = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "object", "required": ["inputs"]}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }

    @app.post(
        "/v2/models/{model_name}/infer",
        tags=["v2"],
        openapi_extra=infer_body,
        responses=errors.V2_ERRORS,
    )
    async def infer(
        model_name: str, request: Request, svc: ServicesDep, tenant: TenantDep
    ) -> Response:
        """Inference in the Open Inference Protocol (JSON or binary tensor data)."""
        allow_model(svc, tenant, model_name)
        model = admitted(request, await svc.upstream.model(model_name))
        body = await request.body()
        parsed = v2.parse_infer_request(
            body,
            v2.header_length(request.headers.get(v2.HEADER_LENGTH)),
            model,
            max_text_chars=settings.max_text_chars,
            max_elements=settings.max_tensor_elements,
        )

        async def produce() -> tuple[CachedResponse, str]:
            result = await svc.upstream.infer(
                model,
                [t.to_grpc() for t in parsed.inputs],
                v2.requested_outputs(parsed),
                request_id=parsed.id,
            )
            payload, head = v2.encode_infer_response(result, parsed)
            version = result.get_response().model_version
            if head is None:
                return CachedResponse(payload, "application/json"), version
            binary = CachedResponse(
                payload, "application/octet-stream", ((v2.HEADER_LENGTH, str(head)),)
            )
            return binary, version

        return await cached_call(
            request, svc, tenant, model, parsed.cache_parts(), produce, items=parsed.batch_size()
        )

    # -- OpenAI-compatible embeddings ----------------------------------------------------------
    @app.post(
        "/v1/embeddings",
        tags=["openai"],
        response_model=embeddings.EmbeddingsResponse,
        responses=errors.ERRORS,
    )
    async def create_embeddings(
        body: embeddings.EmbeddingsRequest, request: Request, svc: ServicesDep, tenant: TenantDep
    ) -> Response:
        """Embeddings of a string or a list of strings (OpenAI's request and response shape)."""
        target = settings.embedding_model_for(body.model)
        if target is None:
            raise GatewayError(
                404,
                "model_not_found",
                f"no embedding model {body.model!r}; use {settings.embeddings_model!r} or one of "
                f"{settings.embeddings_aliases}",
                param="model",
            )
        allow_model(svc, tenant, target)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not 1 <= len(texts) <= settings.max_embedding_inputs:
            raise GatewayError(
                400, "invalid_input",
                f"input must hold 1..{settings.max_embedding_inputs} strings, got {len(texts)}",
                param="input",
            )  # fmt: skip
        encoded = embeddings.encode_texts(texts, settings.max_text_chars)
        try:
            model = await svc.upstream.model(settings.embeddings_pipeline)
        except GatewayError as exc:
            if exc.status != 404:
                raise
            raise GatewayError(
                503, "model_unavailable",
                f"{body.model!r} is served through the text pipeline "
                f"{settings.embeddings_pipeline!r} (tokenizer -> encoder), which Triton does not "
                "serve: export the model with its tokenizer.json and load it",
            ) from None  # fmt: skip
        dimension = embeddings.check_text_model(model)
        if body.dimensions is not None and body.dimensions != dimension:
            raise GatewayError(
                400, "invalid_input",
                f"model {body.model!r} returns {dimension} dimensions; omit 'dimensions' or "
                f"set it to {dimension}",
                param="dimensions",
            )  # fmt: skip
        # The ensemble runs the encoder's newest version but reports its own version: the
        # encoder's (from metadata, refreshed every metadata_ttl_s) is part of the cache key,
        # so a new encoder version is not answered from the old one's entries for long.
        encoder = admitted(request, await svc.upstream.model(target))
        parts = [
            f"{encoder.name}@{encoder.version}".encode(),
            body.model.encode(),
            body.encoding_format.encode(),
            *encoded,
        ]

        async def produce() -> tuple[CachedResponse, str]:
            vectors, tokens, version = await embeddings.embed(svc.upstream, model, encoded)
            answer = embeddings.build_response(vectors, tokens, body)
            return CachedResponse(answer.model_dump_json().encode(), "application/json"), version

        return await cached_call(request, svc, tenant, model, parts, produce, items=len(encoded))

    # -- feature-backed scoring ---------------------------------------------------------------
    @app.post(
        "/v1/score",
        tags=["features"],
        response_model=scoring.ScoreResponse,
        responses=errors.ERRORS,
    )
    async def score(
        body: scoring.ScoreRequest, request: Request, svc: ServicesDep, tenant: TenantDep
    ) -> Response:
        """Scores of entities (drivers) from their online features, in request order."""
        allow_model(svc, tenant, settings.scoring_model)
        reader = await open_features(svc)
        assert svc.feature_settings is not None
        model = admitted(request, await svc.upstream.model(settings.scoring_model))
        # charged before the features are read: a refused tenant costs the store nothing
        decision = await charge(request, svc, tenant, len(body.entity_ids))
        features = await scoring.model_input(reader, svc.feature_settings, body)

        async def produce() -> tuple[CachedResponse, str]:
            scores, version = await scoring.score(svc.upstream, model, features)
            answer = scoring.build_response(model.name, version, features, scores, body)
            return CachedResponse(answer.model_dump_json().encode(), "application/json"), version

        parts = scoring.cache_parts(features, body)
        return await cached_call(
            request, svc, tenant, model, parts, produce, items=len(body.entity_ids),
            decision=decision,
        )  # fmt: skip

    return app
