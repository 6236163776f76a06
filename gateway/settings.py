"""The gateway's one settings class, read from ``GATEWAY_*`` environment variables.

Validated at start-up: a gateway that would run with placeholder secrets outside development,
or with no tenants at all, refuses to start instead of serving unauthenticated traffic.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.tenants import TenantConfig, load_tenants, placeholder_problems


class Environment(StrEnum):
    development = "development"
    production = "production"


class RedisFailurePolicy(StrEnum):
    """What the rate limiter does while Redis is unreachable."""

    fallback = "fallback"  # fail open to the in-process limiter (per replica, not shared)
    deny = "deny"  # fail closed: 503 until Redis is back


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    environment: Environment = Environment.development
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)

    # -- upstream Triton (gRPC) -----------------------------------------------------------------
    triton_grpc_url: str = "127.0.0.1:8001"
    upstream_timeout_s: float = Field(10.0, gt=0, description="deadline of each inference call")
    metadata_timeout_s: float = Field(2.0, gt=0, description="deadline of metadata/health calls")
    metadata_ttl_s: float = Field(30.0, ge=0, description="how long model metadata is reused")
    max_inflight: int = Field(256, ge=1, description="concurrent upstream calls per replica")
    inflight_wait_s: float = Field(
        0.5, ge=0, description="how long a request waits for an upstream slot before a 503"
    )
    breaker_failures: int = Field(5, ge=1, description="consecutive failures that open it")
    breaker_cooldown_s: float = Field(2.0, gt=0, description="open time before a trial call")

    # -- Redis (rate limits, response cache); None = in-process defaults ----------------------
    redis_url: str | None = None
    redis_timeout_s: float = Field(0.25, gt=0)
    rate_limit_on_redis_error: RedisFailurePolicy = RedisFailurePolicy.fallback

    # -- auth -------------------------------------------------------------------------------------
    tenants_file: Path | None = Field(None, description="TOML file of tenants (hashed keys)")
    tenants: dict[str, TenantConfig] = Field(
        default_factory=dict, description="tenants as JSON (GATEWAY_TENANTS), merged over file"
    )

    # -- response cache ---------------------------------------------------------------------------
    cache_enabled: bool = True
    cache_ttl_s: int = Field(300, ge=1)
    cache_max_entries: int = Field(10_000, ge=1, description="in-process LRU entries")
    cache_max_bytes: int = Field(64 * 2**20, ge=1, description="in-process LRU size bound")
    cache_max_entry_bytes: int = Field(1 * 2**20, ge=1, description="larger answers not cached")

    # -- request limits ---------------------------------------------------------------------------
    max_body_bytes: int = Field(8 * 2**20, ge=1024)
    max_text_chars: int = Field(20_000, ge=1, description="per input string")
    max_embedding_inputs: int = Field(256, ge=1, description="strings per /v1/embeddings call")

    # -- models -----------------------------------------------------------------------------------
    embeddings_model: str = Field("minilm", description="Triton model behind /v1/embeddings")
    embeddings_aliases: list[str] = Field(
        default_factory=lambda: ["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"]
    )
    embeddings_text_model: str | None = Field(
        None,
        description="the Triton ensemble /v1/embeddings sends raw strings to (tokenizer -> "
        "encoder); default '<embeddings_model>_text'",
    )
    scoring_model: str = Field("driver_ranker", description="Triton model behind /v1/score")
    scoring_enabled: bool = Field(True, description="open the feature store (FEATURES_*)")
    ready_requires_features: bool = Field(
        False, description="/readyz also needs the scoring model and the online store"
    )

    event_loop: Literal["asyncio", "uvloop", "auto"] = Field(
        "asyncio", description="uvicorn's loop; grpc.aio measured slower under uvloop"
    )

    # -- shutdown ---------------------------------------------------------------------------------
    drain_timeout_s: float = Field(20.0, ge=0, description="in-flight requests finish within")

    @model_validator(mode="after")
    def _load_tenants(self) -> Self:
        merged = load_tenants(self.tenants_file) if self.tenants_file else {}
        merged.update(self.tenants)
        self.tenants = merged
        if not self.tenants:
            raise ValueError(
                "no tenants configured: set GATEWAY_TENANTS_FILE (TOML) or GATEWAY_TENANTS (JSON); "
                "`tritonstack up` writes a development tenant"
            )
        if self.environment is not Environment.development:
            problems = placeholder_problems(self.tenants)
            if problems:
                raise ValueError(
                    f"refusing to start in {self.environment.value}: " + "; ".join(problems)
                )
        return self

    @property
    def embeddings_pipeline(self) -> str:
        """The Triton model behind /v1/embeddings: the encoder's text pipeline, an ensemble
        named as ``export.ensemble.text_model_name`` names it."""
        return self.embeddings_text_model or f"{self.embeddings_model}_text"

    def embedding_model_for(self, requested: str) -> str | None:
        """The Triton model serving ``requested`` on /v1/embeddings, or None when unknown."""
        if requested == self.embeddings_model or requested in self.embeddings_aliases:
            return self.embeddings_model
        return None
