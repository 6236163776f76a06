"""The rollout controller's settings, read from ``ROLLOUT_*`` environment variables.

The thresholds are the defaults a careful operator would pick for a canary: a candidate may
fail at most 1 point more of its requests than the stable version, its p99 latency may be at
most 1.5x the stable one's (differences under 5 ms are noise), and in shadow 99 % of the rows
must agree with the stable answer within the accuracy budget of the two export reports.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RolloutSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROLLOUT_", extra="ignore")

    # -- where things are ------------------------------------------------------------------
    redis_url: str | None = Field(None, description="the Redis the gateways read routes from")
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_timeout_s: float = Field(2.0, gt=0)
    triton_http_urls: list[str] = Field(
        default_factory=list,
        description="host:port of Triton's HTTP API; a name with several addresses (a headless "
        "Service) is every Triton pod",
    )
    triton_admin_header: str = "tritonstack-admin-key"
    triton_admin_key: SecretStr | None = Field(None, description="for the repository API")
    triton_timeout_s: float = Field(5.0, gt=0, description="deadline of a metadata call")
    load_timeout_s: float = Field(300.0, gt=0, description="deadline of a model (re)load")
    repository: Path | None = Field(
        None, description="the model repository: export reports, the served-version policy"
    )
    repository_writes: bool = Field(
        True,
        description="pin what is served in the repository's configs and record rollouts in its "
        "reports (off: a read-only copy, e.g. the models image in a Kubernetes Job)",
    )
    state_dir: Path | None = Field(None, description="a copy of each rollout's state on disk")

    # -- the plan ----------------------------------------------------------------------------
    steps: list[int] = Field(default_factory=lambda: [10, 50, 100])
    step_seconds: float = Field(60.0, gt=0, description="how long each step is observed")
    shadow_sample: float = Field(
        0.05, gt=0, le=1, description="share of the stable version's uncached requests copied"
    )
    check_interval_s: float = Field(1.0, gt=0, description="how often a step is judged")

    # -- the thresholds ------------------------------------------------------------------------
    min_requests: int = Field(50, ge=1, description="per version and step before it may pass")
    min_errors: int = Field(5, ge=1, description="errors before a candidate can fail on them")
    max_error_rate_increase: float = Field(0.01, ge=0, description="points over the stable's")
    max_p99_ratio: float = Field(1.5, ge=1, description="candidate p99 / stable p99")
    min_latency_samples: int = Field(
        100, ge=1, description="calls before a p99 alone can fail a step (at its end)"
    )
    p99_slack_ms: float = Field(5.0, ge=0, description="p99 differences below this pass")
    min_shadow_rows: int = Field(50, ge=1, description="rows compared before shadow may pass")
    shadow_min_within: float = Field(
        0.99, gt=0, le=1, description="share of rows within the accuracy budget (cosine, rel_l2)"
    )
    max_shadow_errors: float = Field(0.05, ge=0, le=1, description="share of failed copies")
    step_timeout_factor: float = Field(
        3.0, ge=1, description="a step without enough traffic fails after this x step_seconds"
    )
    replica_wait_s: float = Field(5.0, gt=0, description="for every replica to use a table")
    replica_fresh_s: float = Field(3.0, gt=0, description="a replica heard from within is live")
    lease_s: float = Field(10.0, gt=0, description="a controller's claim on a rollout")

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[int]) -> list[int]:
        if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise ValueError("steps: rising percentages in (0, 100], e.g. 10,50,100")
        return steps
