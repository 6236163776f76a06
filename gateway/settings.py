"""The gateway's one settings class, read from ``GATEWAY_*`` environment variables.

Validated at start-up: a gateway that would run with placeholder secrets outside development,
or with no tenants at all, refuses to start instead of serving unauthenticated traffic. The
defaults are the production ones (fail closed); `tritonstack up` and the tests ask for
``GATEWAY_ENVIRONMENT=development`` explicitly.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.tenants import TenantConfig, load_tenants, placeholder_problems

# A text encoder E's pipeline (tokenizer -> E, a Triton ensemble) is named E + this suffix: the
# rule export/naming.py writes models by (the gateway may not import export/; the test
# tests/unit/test_gateway_routes.py::test_the_pipeline_name_rule_is_exports fails if the two
# ever differ).
TEXT_PIPELINE_SUFFIX = "_text"


def text_pipeline(encoder: str) -> str:
    """The text pipeline of ``encoder`` (the ensemble /v1/embeddings sends strings to)."""
    return encoder + TEXT_PIPELINE_SUFFIX


class Environment(StrEnum):
    development = "development"
    production = "production"


class RedisFailurePolicy(StrEnum):
    """What the rate limiter does while Redis is unreachable."""

    fallback = "fallback"  # fail open to the in-process limiter (per replica, not shared)
    deny = "deny"  # fail closed: 503 until Redis is back


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    environment: Environment = Environment.production
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    metrics_host: str | None = Field(None, description="the metrics listener (default: host)")
    metrics_port: int = Field(
        9102, ge=0, le=65535, description="/metrics on its own port, never on the API port"
    )

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
    triton_admin_header: str = Field(
        "tritonstack-admin-key",
        description="the header Triton's --grpc-restricted-protocol/--http-restricted-api expect "
        "on the model-repository API (gRPC adds the 'triton-grpc-protocol-' prefix itself)",
    )
    triton_admin_key: SecretStr | None = Field(
        None, description="its value: lets the gateway reload a model whose python stub died"
    )
    model_load_timeout_s: float = Field(120.0, gt=0, description="deadline of a model reload")

    # -- health ---------------------------------------------------------------------------------
    health_interval_s: float = Field(
        1.0, gt=0, description="readiness, unloaded models, tenants file and revocations"
    )
    probe_interval_s: float = Field(
        10.0,
        ge=0,
        description="a real inference through each served pipeline (0: only after a request "
        "failed because a model's backend died)",
    )

    # -- Redis (rate limits, response cache, revocations); None = in-process defaults ----------
    redis_url: str | None = None
    redis_username: str | None = Field(None, description="the Redis ACL user (with password)")
    redis_password: SecretStr | None = None
    redis_timeout_s: float = Field(0.25, gt=0)
    rate_limit_on_redis_error: RedisFailurePolicy | None = Field(
        None, description="default: fallback in development, deny elsewhere"
    )

    # -- auth -------------------------------------------------------------------------------------
    tenants_file: Path | None = Field(None, description="TOML file of tenants (hashed keys)")
    tenants: dict[str, TenantConfig] = Field(
        default_factory=dict, description="tenants as JSON (GATEWAY_TENANTS), merged over file"
    )
    tenant_max_inflight: int = Field(
        64, ge=1, description="requests one tenant may have in flight per replica (429 past it)"
    )

    # -- response cache ---------------------------------------------------------------------------
    cache_enabled: bool = True
    cache_ttl_s: int = Field(300, ge=1)
    cache_max_entries: int = Field(10_000, ge=1, description="in-process LRU entries")
    cache_max_bytes: int = Field(64 * 2**20, ge=1, description="in-process LRU size bound")
    cache_max_entry_bytes: int = Field(1 * 2**20, ge=1, description="larger answers not cached")
    cache_signing_key: SecretStr | None = Field(
        None,
        description="HMAC key of Redis cache entries, shared by the replicas (unset: a random key "
        "per process, so replicas do not share entries)",
    )

    # -- request limits ---------------------------------------------------------------------------
    max_body_bytes: int = Field(8 * 2**20, ge=1024)
    max_text_chars: int = Field(20_000, ge=1, description="per input string")
    max_embedding_inputs: int = Field(256, ge=1, description="strings per /v1/embeddings call")
    max_tensor_elements: int = Field(2**20, ge=1, description="elements per /v2 infer request")
    header_timeout_s: float = Field(10.0, gt=0, description="to receive a request's headers")
    body_timeout_s: float = Field(30.0, gt=0, description="to receive a request's body")
    keep_alive_timeout_s: int = Field(5, ge=1, description="idle keep-alive connections")
    max_connections: int = Field(
        2048, ge=1, description="open connections + requests per replica (uvicorn answers 503)"
    )

    # -- models -----------------------------------------------------------------------------------
    embeddings_model: str = Field("minilm", description="Triton model behind /v1/embeddings")
    embeddings_aliases: list[str] = Field(
        default_factory=lambda: ["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"]
    )
    embeddings_text_model: str | None = Field(
        None,
        description="the Triton ensemble /v1/embeddings sends raw strings to (tokenizer -> "
        "encoder); default: the encoder's name + TEXT_PIPELINE_SUFFIX",
    )
    scoring_model: str = Field("driver_ranker", description="Triton model behind /v1/score")
    scoring_enabled: bool = Field(True, description="open the feature store (FEATURES_*)")
    ready_requires_features: bool = Field(
        False, description="/readyz also needs the scoring model and the online store"
    )

    # -- rollouts (gateway/rollouts.py): the route table, per-version figures, shadow copies ---
    routes_file: Path | None = Field(
        None, description="the route table used until Redis has one (JSON; none: no routes)"
    )
    routes_poll_s: float = Field(
        0.5, gt=0, le=1.0, description="how often Redis' route table is read (a change is used "
        "within this and a request's time)",
    )  # fmt: skip
    stats_flush_s: float = Field(
        1.0, gt=0, description="how often a rollout's per-version figures are added to Redis"
    )
    shadow_queue: int = Field(256, ge=1, description="shadow copies waiting (past it: dropped)")
    shadow_workers: int = Field(4, ge=1, description="shadow calls in flight per replica")
    shadow_timeout_s: float = Field(5.0, gt=0, description="deadline of one shadow call")
    replica_id: str | None = Field(
        None, description="this replica's name in the route table's replica records "
        "(default: host name and process id)",
    )  # fmt: skip

    event_loop: Literal["asyncio", "uvloop", "auto"] = Field(
        "asyncio", description="uvicorn's loop; grpc.aio measured slower under uvloop"
    )

    # -- shutdown ---------------------------------------------------------------------------------
    drain_timeout_s: float = Field(20.0, ge=0, description="in-flight requests finish within")

    # -- inference capture (gateway/capturing.py) and feedback ----------------------------------
    capture_enabled: bool = Field(False, description="sampled records to a Redis Stream")
    capture_sample_rates: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: {"*": 0.1},
        description='per "tenant/model", "model", "tenant/*" or "*" (the most specific wins)',
    )
    capture_stream: str = "tritonstack:capture"
    capture_stream_maxlen: int = Field(100_000, ge=1, description="entries Redis keeps (~)")
    capture_queue_max: int = Field(10_000, ge=1, description="records waiting in a replica")
    capture_queue_max_bytes: int = Field(64 << 20, ge=1, description="their tensors' bytes")
    capture_max_record_bytes: int = Field(1 << 20, ge=1, description="larger: dropped, counted")
    capture_text: bool = Field(False, description="keep the texts themselves (else a hash)")
    capture_feedback_models: list[str] = Field(
        default_factory=lambda: ["driver_ranker"], description="models POST /v1/feedback takes"
    )
    capture_feedback_ttl_s: int = Field(3600, ge=1, description="feedback follows within")

    _json_tenants: dict[str, TenantConfig] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _load_tenants(self) -> Self:
        self._json_tenants = dict(self.tenants)
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
    def redis_failure_policy(self) -> RedisFailurePolicy:
        if self.rate_limit_on_redis_error is not None:
            return self.rate_limit_on_redis_error
        if self.environment is Environment.development:
            return RedisFailurePolicy.fallback
        return RedisFailurePolicy.deny

    @property
    def embeddings_pipeline(self) -> str:
        """The Triton model behind /v1/embeddings: the encoder's text pipeline, an ensemble
        named by the gateway's one rule, ``text_pipeline``."""
        return self.embeddings_text_model or text_pipeline(self.embeddings_model)

    def embedding_models(self) -> dict[str, str]:
        """The alias table of /v1/embeddings: every name a client may send → the encoder."""
        return {
            name: self.embeddings_model
            for name in (self.embeddings_model, *self.embeddings_aliases)
        }

    def embedding_model_for(self, requested: str) -> str | None:
        """The Triton model serving ``requested`` on /v1/embeddings, or None when unknown."""
        return self.embedding_models().get(requested)

    @property
    def json_tenants(self) -> dict[str, TenantConfig]:
        """The tenants from GATEWAY_TENANTS (fixed for the process' life; a reloaded tenants
        file is merged under them)."""
        return dict(self._json_tenants)
