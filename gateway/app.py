"""The FastAPI application: auth → rate limit → validate → cache → Triton (gRPC) → cache fill."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from features.online import OnlineFeatures, open_online_features
from features.settings import FeatureSettings
from gateway import embeddings, errors, scoring, v2
from gateway.cache import CachedResponse, LocalCache, RedisCache, ResponseCache, cache_key
from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.ratelimit import Decision, LocalRateLimiter, RateLimiter, RedisRateLimiter
from gateway.settings import GatewaySettings, RedisFailurePolicy
from gateway.tenants import Authenticator, Tenant
from gateway.upstream import ModelInfo, Upstream

log = logging.getLogger("gateway")
VERSION = "0.1.0"


# -- per-process state ----------------------------------------------------------------------------
@dataclass
class Services:
    settings: GatewaySettings
    metrics: Metrics
    upstream: Upstream
    auth: Authenticator
    limiter: ResilientRateLimiter
    cache: ResponseCache | None
    redis: Redis | None = None
    features: OnlineFeatures | None = None
    feature_settings: FeatureSettings | None = None


class ResilientRateLimiter:
    """Redis-backed when configured; on a Redis error, the configured policy decides."""

    def __init__(
        self, primary: RateLimiter | None, policy: RedisFailurePolicy, metrics: Metrics
    ) -> None:
        self.primary = primary
        self.local = LocalRateLimiter()
        self.policy = policy
        self.metrics = metrics

    async def hit(self, tenant: Tenant) -> Decision:
        rate, burst = tenant.config.rate_per_s, tenant.config.burst
        if self.primary is None:
            return await self.local.hit(tenant.name, rate, burst)
        try:
            return await self.primary.hit(tenant.name, rate, burst)
        except (RedisError, OSError) as exc:
            return await self._redis_failed(tenant, exc)

    async def hit_and_lookup(
        self, tenant: Tenant, cache: ResponseCache, key: str
    ) -> tuple[Decision, CachedResponse | None]:
        """The rate decision and the cache lookup; one Redis round trip when both live there."""
        primary = self.primary
        if not (
            isinstance(primary, RedisRateLimiter)
            and isinstance(cache, RedisCache)
            and cache.redis is primary.redis
        ):
            decision, hit = await asyncio.gather(self.hit(tenant), cache.get(key))
            return decision, hit
        waiting = cache.pending(key)  # written by this process a moment ago, still in flight
        if waiting is not None:
            return await self.hit(tenant), waiting
        rate, burst = tenant.config.rate_per_s, tenant.config.burst
        try:
            decision, blob = await primary.hit_and_get(
                tenant.name, rate, burst, cache.full_key(key)
            )
        except (RedisError, OSError) as exc:
            self.metrics.redis_errors.labels(use="cache").inc()
            return await self._redis_failed(tenant, exc), None  # and a cache miss
        return decision, CachedResponse.decode(blob) if blob else None

    async def _redis_failed(self, tenant: Tenant, exc: Exception) -> Decision:
        self.metrics.redis_errors.labels(use="rate_limit").inc()
        if self.policy is RedisFailurePolicy.deny:
            raise GatewayError(
                503, "rate_limiter_unavailable",
                "the rate limiter's store is unreachable; retry later",
                headers={"Retry-After": "1"},
            ) from exc  # fmt: skip
        log.warning("rate limiter: Redis unreachable, using the in-process limiter: %s", exc)
        return await self.local.hit(tenant.name, tenant.config.rate_per_s, tenant.config.burst)


async def open_features(svc: Services) -> OnlineFeatures:
    """The online store reader, opened on first use (and again after a failed open)."""
    if svc.features is not None:
        return svc.features
    if svc.feature_settings is None:
        raise GatewayError(
            503, "features_disabled", "feature-backed scoring is off (GATEWAY_SCORING_ENABLED)"
        )
    try:
        svc.features = await asyncio.to_thread(open_online_features, svc.feature_settings)
    except Exception as exc:  # Feast raises many kinds; all mean "not usable"
        log.warning("feature store not available: %s", exc)
        raise GatewayError(
            503,
            "features_unavailable",
            f"the feature store is not available ({type(exc).__name__}); set it up with "
            "`tritonstack features apply` and `tritonstack features materialize`",
            headers={"Retry-After": "5"},
        ) from None
    return svc.features


async def services(request: Request) -> Services:
    # async on purpose: FastAPI runs a sync dependency in its thread pool (measured: ~6% of
    # the gateway's CPU per request went to that hop)
    svc: Services = request.app.state.services
    return svc


ServicesDep = Annotated[Services, Depends(services)]


# -- middleware: body size bound, latency histogram, in-flight gauge -------------------------------
class _BodyTooLarge(Exception):
    pass


class GatewayMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        svc: Services = scope["app"].state.services
        limit = svc.settings.max_body_bytes
        started = time.perf_counter()
        status_holder = {"status": 500}
        svc.metrics.inflight.inc()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        try:
            declared = dict(scope["headers"]).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await _too_large(scope, send_wrapper, limit)
                return
            received = 0

            async def receive_bounded() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise _BodyTooLarge
                return message

            try:
                await self.app(scope, receive_bounded, send_wrapper)
            except _BodyTooLarge:
                await _too_large(scope, send_wrapper, limit)
        finally:
            svc.metrics.inflight.dec()
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            model = scope.get("state", {}).get("model", "")
            status = str(status_holder["status"])
            svc.metrics.request_latency.labels(template, model, status).observe(
                time.perf_counter() - started
            )
            svc.metrics.responses.labels(template, status).inc()


async def _too_large(scope: Scope, send: Send, limit: int) -> None:
    error = GatewayError(413, "body_too_large", f"the request body exceeds {limit} bytes")
    response = JSONResponse(error.body(scope["path"].startswith("/v2")), status_code=413)
    await response(scope, _empty_receive, send)


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}


# -- auth, access, rate limit ----------------------------------------------------------------------
def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    return request.headers.get("x-api-key")


async def authenticated(request: Request, svc: ServicesDep) -> Tenant:
    key = _presented_key(request)
    tenant = svc.auth.authenticate(key)
    if tenant is None:
        reason = "missing" if not key else "invalid"
        svc.metrics.auth_failures.labels(reason=reason).inc()
        raise GatewayError(
            401,
            "unauthorized",
            "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            if reason == "missing"
            else "invalid API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.tenant = tenant.name
    return tenant


TenantDep = Annotated[Tenant, Depends(authenticated)]


@dataclass
class Admission:
    """A tenant allowed to use a model; its rate-limit check is still to be made."""

    svc: Services
    tenant: Tenant

    async def decide(self) -> Decision:
        return settle(self.svc, self.tenant, await self.svc.limiter.hit(self.tenant))

    async def decide_and_lookup(
        self, cache: ResponseCache, key: str
    ) -> tuple[Decision, CachedResponse | None]:
        decision, hit = await self.svc.limiter.hit_and_lookup(self.tenant, cache, key)
        return settle(self.svc, self.tenant, decision), hit


def start_admission(request: Request, svc: Services, tenant: Tenant, model: str) -> Admission:
    """403 now for a model the tenant may not use; the rate check comes with the cache lookup."""
    request.state.model = model
    if not tenant.config.may_use(model):
        svc.metrics.auth_failures.labels(reason="forbidden_model").inc()
        raise GatewayError(403, "forbidden", f"this API key may not use model {model!r}")
    return Admission(svc, tenant)


async def admit(request: Request, svc: Services, tenant: Tenant, model: str) -> Decision:
    """403 for a model the tenant may not use, 429 past its rate; returns the rate decision."""
    return await start_admission(request, svc, tenant, model).decide()


def settle(svc: Services, tenant: Tenant, decision: Decision) -> Decision:
    """The rate decision, or 429 with ``Retry-After`` and ``RateLimit-*`` headers."""
    if not decision.allowed:
        svc.metrics.rate_limited.labels(tenant=tenant.name).inc()
        raise GatewayError(
            429,
            "rate_limited",
            f"rate limit of {tenant.config.rate_per_s:g} requests/s (burst "
            f"{tenant.config.burst}) exceeded; retry after {decision.headers()['Retry-After']} s",
            headers=decision.headers(),
        )
    return decision


def _bypass_cache(request: Request) -> bool:
    directives = request.headers.get("cache-control", "").lower()
    return "no-cache" in directives or "no-store" in directives


async def cached_call(
    request: Request,
    svc: Services,
    model: ModelInfo,
    parts: list[bytes],
    produce: Any,
    admission: Admission,
) -> Response:
    """Serve from the response cache, or call ``produce()`` and fill the cache."""
    cache = svc.cache if svc.settings.cache_enabled else None
    key = cache_key(model.name, model.version, *parts)
    result = "bypass"
    if cache is not None and not _bypass_cache(request):
        decision, hit = await admission.decide_and_lookup(cache, key)
        if hit is not None:
            svc.metrics.cache.labels(layer=cache.layer, result="hit").inc()
            return _respond(hit, decision, "HIT")
        result = "miss"
    else:
        decision = await admission.decide()
    if cache is not None:
        svc.metrics.cache.labels(layer=cache.layer, result=result).inc()
    answer, version = await produce()
    if (
        cache is not None
        and "no-store" not in request.headers.get("cache-control", "").lower()
        and len(answer.body) <= svc.settings.cache_max_entry_bytes
    ):
        if version and version != model.version:  # a new version is live: learn it
            model = await svc.upstream.model(model.name, refresh=True)
        await cache.put(cache_key(model.name, version or model.version, *parts), answer)
    return _respond(answer, decision, result.upper())


def _respond(answer: CachedResponse, decision: Decision, cache_state: str) -> Response:
    headers = {**dict(answer.headers), **decision.headers(), "X-Cache": cache_state}
    return Response(answer.body, media_type=answer.media_type, headers=headers)


# -- the application -------------------------------------------------------------------------------
def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc: Services = app.state.services
        await svc.upstream.open()
        if settings.redis_url:
            svc.redis = Redis.from_url(
                settings.redis_url,
                socket_timeout=settings.redis_timeout_s,
                socket_connect_timeout=settings.redis_timeout_s,
            )
            svc.limiter.primary = RedisRateLimiter(svc.redis)
            if settings.cache_enabled:
                svc.cache = RedisCache(svc.redis, settings.cache_ttl_s)
        if settings.scoring_enabled:  # a store not set up yet answers 503 on /v1/score only
            svc.feature_settings = FeatureSettings()
            with contextlib.suppress(GatewayError):
                await open_features(svc)
        try:  # learn the main model's signature now; a Triton still starting is not fatal
            await svc.upstream.model(settings.embeddings_pipeline)
        except GatewayError as exc:
            log.warning("model metadata not available yet: %s", exc.message)
        try:
            yield
        finally:
            if isinstance(svc.cache, RedisCache):
                await svc.cache.drain(timeout_s=1.0)
            await svc.upstream.close()
            if svc.features is not None:
                await svc.features.close()
            if svc.redis is not None:
                await svc.redis.aclose()

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
        limiter=ResilientRateLimiter(None, settings.rate_limit_on_redis_error, metrics),
        cache=LocalCache(settings.cache_max_entries, settings.cache_max_bytes, settings.cache_ttl_s)
        if settings.cache_enabled
        else None,
    )
    app.add_middleware(GatewayMiddleware)

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        v2_route = request.url.path.startswith("/v2")
        return JSONResponse(exc.body(v2_route), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        status = 422
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            if err.get("type") == "json_invalid":
                status = 400
            problems.append(f"{where or 'body'}: {err.get('msg')}")
        error = GatewayError(status, "invalid_request", "; ".join(problems[:5]))
        return JSONResponse(error.body(request.url.path.startswith("/v2")), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own errors (unknown route, wrong method, unparsable body) in our shape."""
        codes = {404: "not_found", 405: "method_not_allowed"}
        error = GatewayError(
            exc.status_code,
            codes.get(exc.status_code, "invalid_request"),
            str(exc.detail),
            headers=dict(exc.headers or {}),
        )
        return JSONResponse(
            error.body(request.url.path.startswith("/v2")),
            status_code=exc.status_code,
            headers=error.headers,
        )

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        error = GatewayError(400, "invalid_request", "the JSON body is nested too deeply")
        return JSONResponse(error.body(request.url.path.startswith("/v2")), status_code=400)

    # -- health, metrics -----------------------------------------------------------------------
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is alive (no upstream checks: restarts cure nothing upstream)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "not ready"}})
    async def readyz(svc: ServicesDep) -> JSONResponse:
        """Triton ready, the served models ready, Redis reachable when configured."""
        models = [settings.embeddings_model, settings.embeddings_pipeline]
        if settings.ready_requires_features:
            models.append(settings.scoring_model)
        checks = await svc.upstream.ready(models)
        if settings.ready_requires_features:
            try:
                checks["features"] = await (await open_features(svc)).ping()
            except GatewayError:
                checks["features"] = False
        if svc.redis is not None:
            try:
                checks["redis"] = bool(await svc.redis.ping())  # type: ignore[misc]
            except (RedisError, OSError):
                checks["redis"] = False
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def prometheus(svc: ServicesDep) -> Response:
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

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
        checks = await svc.upstream.ready([])
        ready = checks["triton"]
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/v2/models/{model_name}", tags=["v2"], responses=errors.V2_ERRORS)
    async def model_metadata(
        model_name: str, request: Request, svc: ServicesDep, tenant: TenantDep
    ) -> JSONResponse:
        decision = await admit(request, svc, tenant, model_name)
        info = await svc.upstream.model(model_name)
        return JSONResponse(info.metadata(), headers=decision.headers())

    @app.get("/v2/models/{model_name}/ready", tags=["v2"], responses=errors.V2_ERRORS)
    async def model_ready(
        model_name: str, request: Request, svc: ServicesDep, tenant: TenantDep
    ) -> Response:
        decision = await admit(request, svc, tenant, model_name)
        await svc.upstream.model(model_name)  # 404 for a model Triton does not know
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
        admission = start_admission(request, svc, tenant, model_name)
        model = await svc.upstream.model(model_name)
        body = await request.body()
        parsed = v2.parse_infer_request(
            body,
            v2.header_length(request.headers.get(v2.HEADER_LENGTH)),
            model,
            max_text_chars=settings.max_text_chars,
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

        parts = parsed.cache_parts()
        return await cached_call(request, svc, model, parts, produce, admission)

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
        admission = start_admission(request, svc, tenant, target)
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
        encoder = await svc.upstream.model(target)
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

        return await cached_call(request, svc, model, parts, produce, admission)

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
        admission = start_admission(request, svc, tenant, settings.scoring_model)
        reader = await open_features(svc)
        assert svc.feature_settings is not None
        model = await svc.upstream.model(settings.scoring_model)
        features = await scoring.model_input(reader, svc.feature_settings, body)

        async def produce() -> tuple[CachedResponse, str]:
            scores, version = await scoring.score(svc.upstream, model, features)
            answer = scoring.build_response(model.name, version, features, scores, body)
            return CachedResponse(answer.model_dump_json().encode(), "application/json"), version

        parts = scoring.cache_parts(features, body)
        return await cached_call(request, svc, model, parts, produce, admission)

    return app
