"""The OpenAI-compatible API: ``POST /v1/embeddings`` and ``GET /v1/models``.

Embeddings: the name a client sends is resolved in the alias table built at start-up
(``Services.embedding_models``), the strings go to the encoder's text pipeline (one metadata
lookup: the pipeline's, which carries its encoder's newest version), and the answer is cached
under that version.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from gateway import capturing, embeddings
from gateway.admission import allow_model, cached_call, charge, label_model
from gateway.cache import CachedResponse
from gateway.deps import JsonBody, ServicesDep, TenantDep
from gateway.errors import ERRORS, GatewayError
from gateway.models import ModelInfo
from gateway.routing import LeanRoute
from gateway.services import Services

router = APIRouter(prefix="/v1", tags=["openai"], route_class=LeanRoute)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0  # Triton does not say when a model was made
    owned_by: str = "tritonstack"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


async def _pipeline(svc: Services, requested: str) -> ModelInfo:
    """The encoder's text pipeline (503 when Triton does not serve it: it is exported with the
    encoder's tokenizer.json)."""
    settings = svc.settings
    try:
        return await svc.upstream.model(settings.embeddings_pipeline)
    except GatewayError as exc:
        if exc.status != 404:
            raise
        raise GatewayError(
            503,
            "model_unavailable",
            f"{requested!r} is served through the text pipeline "
            f"{settings.embeddings_pipeline!r} (tokenizer -> encoder), which Triton does not "
            "serve: export the model with its tokenizer.json and load it",
        ) from None


def _encoder(svc: Services, body: embeddings.EmbeddingsRequest) -> str:
    """The encoder the requested name stands for (404 for a name the table does not hold)."""
    settings = svc.settings
    encoder = svc.embedding_models.get(body.model)
    if encoder is None:
        raise GatewayError(
            404,
            "model_not_found",
            f"no embedding model {body.model!r}; use {settings.embeddings_model!r} or one of "
            f"{settings.embeddings_aliases}",
            param="model",
        )
    return encoder


@router.post(
    "/embeddings",
    response_model=embeddings.EmbeddingsResponse,
    responses=ERRORS,
    dependencies=[JsonBody],
)
async def create_embeddings(
    body: embeddings.EmbeddingsRequest, request: Request, svc: ServicesDep, tenant: TenantDep
) -> Response:
    """Embeddings of a string or a list of strings (OpenAI's request and response shape)."""
    encoder = _encoder(svc, body)
    allow_model(svc, tenant, encoder)
    limit = svc.settings.max_embedding_inputs
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not 1 <= len(texts) <= limit:
        raise GatewayError(
            400,
            "invalid_input",
            f"input must hold 1..{limit} strings, got {len(texts)}",
            param="input",
        )
    encoded = embeddings.encode_texts(texts, svc.settings.max_text_chars)
    pipeline = await _pipeline(svc, body.model)
    dimension = embeddings.check_text_model(pipeline)
    if body.dimensions is not None and body.dimensions != dimension:
        raise GatewayError(
            400,
            "invalid_input",
            f"model {body.model!r} returns {dimension} dimensions; omit 'dimensions' or set it "
            f"to {dimension}",
            param="dimensions",
        )
    # The ensemble runs the encoder's newest version but reports its own: the encoder's (read
    # with the pipeline's metadata, refreshed every metadata_ttl_s) is part of the cache key.
    routed = svc.rollouts.route(pipeline, tenant, request)  # a rollout's route, if any
    version = (
        routed.version
        or pipeline.step_versions.get(encoder)
        or (await svc.upstream.model(encoder)).version
    )
    label_model(request, encoder)
    parts = [f"{encoder}@{version}".encode(), body.model.encode(), body.encoding_format.encode()]
    captured = capturing.begin(svc, tenant, encoder)  # None: capture off or not sampled

    async def produce() -> tuple[CachedResponse, str]:
        vectors, tokens, ran = await embeddings.embed(routed, pipeline, encoded)
        if captured is not None:
            captured.keep((vectors, tokens))
        answer = embeddings.build_response(vectors, tokens, body)
        return CachedResponse(answer, "application/json"), ran

    answer = await cached_call(
        request, svc, tenant, pipeline, [*parts, *encoded], routed.produce(produce, version),
        items=len(encoded), version=routed.version,
    )  # fmt: skip
    if captured is not None:
        build = partial(capturing.v1_embeddings_record, texts=texts, version=version)
        capturing.finish(captured, answer, build)
    return answer


@router.get("/models", response_model=ModelList, responses=ERRORS)
async def list_models(request: Request, svc: ServicesDep, tenant: TenantDep) -> Response:
    """The models this API key may call on ``/v1/embeddings`` (OpenAI's list models): the
    embedding model and its aliases when the key may use it; no other tenant's."""
    decision = await charge(request, svc, tenant)
    names = [n for n, encoder in svc.embedding_models.items() if tenant.config.may_use(encoder)]
    listed = ModelList(data=[ModelCard(id=name) for name in names])
    return JSONResponse(listed.model_dump(), headers=decision.headers())
