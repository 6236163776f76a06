"""``POST /v1/score``: feature-backed scoring. Entity ids in, online features fetched, model called.

The feature order and dtypes come from ``features.schema`` (the one definition training used);
missing, null and stale values follow ``FEATURES_MISSING_POLICY`` (404 / 422, or documented
defaults that the answer lists). The answer is cached under the model input's own bytes, so a
changed feature value can never be answered from an old score.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from pydantic import BaseModel, Field

from features.errors import FeatureStoreError
from features.online import OnlineFeatures
from features.schema import MODEL_FEATURES, ModelInput, build_model_input
from features.settings import FeatureSettings
from gateway.errors import GatewayError, bad_request, sanitize
from gateway.upstream import ModelInfo, Upstream

log = logging.getLogger("gateway")
_INT64 = (-(2**63), 2**63 - 1)


class ScoreRequest(BaseModel):
    entity_ids: list[int] = Field(
        min_length=1, max_length=256, description="driver ids to score (int64)"
    )
    include_features: bool = Field(False, description="echo the feature values the model saw")
    include_timestamps: bool = Field(False, description="the feature values' event timestamps")


class Score(BaseModel):
    entity_id: int
    score: float
    event_timestamp: datetime | None = None
    features: dict[str, float] | None = None


class DefaultUsed(BaseModel):
    entity_id: int
    feature: str
    reason: str
    value: float


class ScoreResponse(BaseModel):
    model: str
    model_version: str
    feature_names: list[str]
    scores: list[Score]
    defaults_applied: list[DefaultUsed] = Field(default_factory=list)


async def model_input(
    reader: OnlineFeatures, settings: FeatureSettings, request: ScoreRequest
) -> ModelInput:
    for entity in request.entity_ids:
        if not _INT64[0] <= entity <= _INT64[1]:
            raise bad_request(f"entity id {entity} is outside int64", param="entity_ids")
    try:
        rows = await reader.read(request.entity_ids)
        return build_model_input(rows, policy=settings.missing_policy, max_age_s=settings.max_age_s)
    except FeatureStoreError as exc:
        status = int(getattr(exc, "status_code", 503))
        code = {404: "unknown_entity", 422: "invalid_features"}.get(status, "features_unavailable")
        if status == 503:  # the store's own text names hosts and ports: logged, not sent
            log.warning("online store unavailable: %s", exc)
            raise GatewayError(
                503,
                code,
                "the online feature store is unavailable; retry later",
                param="entity_ids",
                headers={"Retry-After": "1"},
            ) from None
        raise GatewayError(status, code, sanitize(str(exc)), param="entity_ids") from None


async def score(
    upstream: Upstream, model: ModelInfo, features: ModelInput
) -> tuple[np.ndarray, str]:
    if model.input("features") is None or len(model.outputs) != 1:
        raise bad_request(f"model {model.name!r} is not a feature-backed scorer")
    step = model.max_batch_size or len(features.array)
    chunks = [features.array[i : i + step] for i in range(0, len(features.array), step)]

    async def one(chunk: np.ndarray) -> grpcclient.InferResult:
        tensor = grpcclient.InferInput("features", list(chunk.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))
        return await upstream.infer(model, [tensor])

    results = await asyncio.gather(*(one(c) for c in chunks))
    output = model.outputs[0].name
    scores = np.concatenate(
        [r.as_numpy(output).reshape(len(c)) for r, c in zip(results, chunks, strict=True)]
    )
    return scores, results[0].get_response().model_version


def build_response(
    model: str, version: str, features: ModelInput, scores: np.ndarray, request: ScoreRequest
) -> ScoreResponse:
    rows = []
    for i, entity in enumerate(features.entity_ids):
        row: dict[str, Any] = {"entity_id": entity, "score": float(scores[i])}
        if request.include_timestamps:
            row["event_timestamp"] = features.event_timestamps[i]
        if request.include_features:
            row["features"] = dict(zip(MODEL_FEATURES, map(float, features.array[i]), strict=True))
        rows.append(Score(**row))
    return ScoreResponse(
        model=model,
        model_version=version,
        feature_names=list(MODEL_FEATURES),
        scores=rows,
        defaults_applied=[
            DefaultUsed(
                entity_id=d.entity_id, feature=d.feature, reason=str(d.reason), value=d.value
            )
            for d in features.defaults
        ],
    )


def cache_parts(features: ModelInput, request: ScoreRequest) -> list[bytes]:
    stamps = ",".join(t.isoformat() if t else "-" for t in features.event_timestamps)
    return [
        np.asarray(features.entity_ids, dtype=np.int64).tobytes(),
        np.ascontiguousarray(features.array, dtype="<f4").tobytes(),
        stamps.encode(),
        repr(features.defaults).encode(),
        f"{request.include_features}:{request.include_timestamps}".encode(),
    ]
