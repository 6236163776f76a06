"""Settings of batch scoring, read from ``BATCH_*`` environment variables when a run starts.

The run itself (model, input, output, columns) is given per invocation (``BatchJob``); these
are the knobs of how it talks to Triton and splits the work. In a Kubernetes Indexed Job the
pod's ``JOB_COMPLETION_INDEX`` is its ``worker_index`` and ``BATCH_WORKERS`` the completions.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SharedMemory = Literal["auto", "system", "none"]


class BatchSettings(BaseSettings):
    """How a batch run talks to Triton and splits its work."""

    model_config = SettingsConfigDict(env_prefix="BATCH_", extra="ignore", populate_by_name=True)

    triton_url: str | None = Field(
        None, description="Triton gRPC host:port (default: the local stack of `tritonstack up`)"
    )
    batch_size: int | None = Field(
        None, ge=1, description="rows per request (default and ceiling: the model's max_batch_size)"
    )
    concurrency: int = Field(4, ge=1, le=256, description="requests in flight")
    shard_rows: int = Field(
        8192, ge=1, description="rows per shard (whole row groups; a larger group is one shard)"
    )
    request_timeout_s: float = Field(120.0, gt=0, description="deadline of one infer request")
    ready_timeout_s: float = Field(60.0, gt=0, description="wait for Triton and the model")
    retries: int = Field(
        6, ge=0, description="retries of one request on unavailable / overload / deadline"
    )
    retry_backoff_s: float = Field(0.5, gt=0, description="first backoff, doubled up to 10 s")
    sort_by_length: bool = Field(
        True,
        description="text rows go to requests by length within a shard (less padding in the "
        "model; outputs are written in row order all the same)",
    )
    shared_memory: SharedMemory = Field(
        "auto", description="system: POSIX shm for tensors; auto: when Triton is on loopback"
    )
    max_rejected_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="a shard whose rows Triton refuses beyond this share stops the run",
    )
    workers: int = Field(1, ge=1, description="workers sharing the shards (Job completions)")
    worker_index: int = Field(
        0,
        ge=0,
        validation_alias=AliasChoices("BATCH_WORKER_INDEX", "JOB_COMPLETION_INDEX", "worker_index"),
        description="this worker's index in [0, workers): a contiguous range of shards",
    )

    @model_validator(mode="after")
    def _index_in_range(self) -> BatchSettings:
        if self.worker_index >= self.workers:
            raise ValueError(
                f"worker_index {self.worker_index} is outside [0, {self.workers}): set "
                "BATCH_WORKERS to the Job's completions"
            )
        return self
