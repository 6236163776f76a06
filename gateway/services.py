"""What one gateway process holds: its clients, limiter, cache, health, routing and route
tables."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from features.online import OnlineFeatures, open_online_features
from features.settings import FeatureSettings
from gateway.cache import ResponseCache
from gateway.errors import GatewayError, Shapes
from gateway.metrics import Metrics
from gateway.ratelimit import ResilientRateLimiter
from gateway.redis_pipe import RedisPipe
from gateway.settings import GatewaySettings
from gateway.tenants import Authenticator
from gateway.upstream import Upstream

if TYPE_CHECKING:
    from gateway.capturing import Capture
    from gateway.health import Health
    from gateway.rollouts import Rollouts

log = logging.getLogger("gateway")


@dataclass
class Services:
    settings: GatewaySettings
    metrics: Metrics
    upstream: Upstream
    auth: Authenticator
    limiter: ResilientRateLimiter
    cache: ResponseCache | None
    shapes: Shapes  # each router's error shape, by path prefix
    embedding_models: dict[str, str]  # /v1/embeddings: the name a client sends -> the encoder
    rollouts: Rollouts  # the route table: which version answers (gateway/rollouts.py)
    health: Health | None = None
    redis: Redis | None = None
    redis_pipe: RedisPipe | None = None  # the hot path's commands on one pipelined connection
    features: OnlineFeatures | None = None
    feature_settings: FeatureSettings | None = None
    in_flight: dict[str, int] = field(default_factory=dict)  # per tenant, this process
    capture: Capture | None = None  # gateway.capturing: None when capture is off


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
