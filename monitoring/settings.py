"""Settings of the two monitoring services, each read from its own environment prefix.

``CaptureSettings`` (``CAPTURE_*``): the sink, `tritonstack capture run`. ``MonitorSettings``
(``MONITOR_*``): the drift and live-accuracy exporter, `tritonstack monitor run`, and the
``tritonstack drift`` report. Both name the store by URL: a local folder by default, any fsspec
URL (``s3://bucket/prefix``, ``memory://``) by configuration.
"""

from __future__ import annotations

import socket

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_STORE = ".tritonstack/capture"
DEFAULT_STREAM = "tritonstack:capture"


class CaptureSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAPTURE_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_username: str | None = Field(None, description="the Redis ACL user (with password)")
    redis_password: SecretStr | None = None
    redis_timeout_s: float = Field(5.0, gt=0, description="deadline of one Redis command")
    stream: str = DEFAULT_STREAM
    group: str = Field("sink", description="the consumer group every sink replica joins")
    consumer: str = Field(
        default_factory=socket.gethostname,
        description="this replica's name in the group (stable across restarts: it takes its own "
        "pending entries back first)",
    )
    store_url: str = Field(DEFAULT_STORE, description="where the Parquet parts go (fsspec URL)")
    batch_max: int = Field(2000, ge=1, description="entries per part write (and acknowledgement)")
    batch_max_bytes: int = Field(64 << 20, ge=1 << 16, description="bytes per part write")
    linger_s: float = Field(
        10.0, ge=0, description="a partial batch waits this long for more entries (fewer files)"
    )
    block_ms: int = Field(500, ge=1, description="how long one XREADGROUP waits for entries")
    claim_idle_s: float = Field(
        60.0, gt=0, description="entries another consumer left pending this long are taken over"
    )
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9103, ge=0, le=65535)


class MonitorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MONITOR_", extra="ignore")

    store_url: str = Field(DEFAULT_STORE, description="the capture sink's store (fsspec URL)")
    interval_s: float = Field(60.0, gt=0, description="between two evaluations")
    window_s: float = Field(3600.0, gt=0, description="captured traffic compared (sliding)")
    feedback_delay_s: float = Field(
        3600.0, ge=0, description="how long after its answer feedback may arrive"
    )
    models: list[str] = Field(
        default_factory=list, description="models to evaluate (empty: every model with a reference)"
    )
    min_rows: int = Field(100, ge=1, description="fewer captured rows: no drift figure")
    min_labels: int = Field(50, ge=2, description="fewer labelled answers: no live accuracy")
    sample_rows: int = Field(2000, ge=100, description="rows per side given to the tests")
    psi_threshold: float = Field(0.2, gt=0, description="a feature's PSI past this is drift")
    embedding_auc_threshold: float = Field(
        0.65, gt=0.5, le=1.0, description="domain classifier ROC AUC past this is drift"
    )
    ks_alpha: float = Field(0.01, gt=0, lt=1, description="KS p-value under this: differs")
    live_auc_floor: float = Field(0.6, ge=0, le=1, description="live AUC under this alerts")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9104, ge=0, le=65535)
