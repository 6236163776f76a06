"""Settings of the feature store, read from ``FEATURES_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MissingPolicy = Literal["reject", "default"]
OnlineStoreKind = Literal["sqlite", "redis"]
ReaderKind = Literal["auto", "direct", "sdk"]


class FeatureSettings(BaseSettings):
    """Where the Feast repository keeps its state, which online store, and the serving policy.

    * ``online_store``: ``sqlite`` (embedded, no server) unless ``redis_url`` is set, then
      ``redis``; set it explicitly to override.
    * ``reader`` (Redis only): ``direct`` reads Feast's Redis hashes itself (the default, faster:
      see benchmarks/README.md), ``sdk`` calls ``get_online_features_async``. SQLite always
      uses the SDK, in a worker thread.
    * ``missing_policy``: ``reject`` raises (404 unknown, 422 null or stale); ``default`` fills
      the documented defaults of ``features.schema.MODEL_FEATURES`` and reports each one.
    """

    model_config = SettingsConfigDict(env_prefix="FEATURES_", extra="ignore")

    state_dir: Path = Field(
        Path(".tritonstack/features"), description="feature_store.yaml, registry, data, online db"
    )
    project: str = Field("tritonstack", pattern=r"^[a-z][a-z0-9_]*$")
    online_store: OnlineStoreKind | None = Field(
        None, description="sqlite or redis; default: redis when redis_url is set, else sqlite"
    )
    redis_url: str | None = Field(
        None, description="redis://[:password@]host:port/db, or Feast's 'host:port,db=0'"
    )
    reader: ReaderKind = "auto"
    max_age_s: float = Field(
        24 * 3600.0, gt=0, description="feature values older than this are stale at serving"
    )
    missing_policy: MissingPolicy = "reject"
    lookup_timeout_s: float = Field(1.0, gt=0, description="deadline of one online lookup")
    connect_timeout_s: float = Field(2.0, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    # -- derived --------------------------------------------------------------------------
    @property
    def store_kind(self) -> OnlineStoreKind:
        if self.online_store is not None:
            return self.online_store
        return "redis" if self.redis_url else "sqlite"

    @property
    def root(self) -> Path:
        return self.state_dir.absolute()

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def offline_path(self) -> Path:
        return self.data_dir / "driver_stats.parquet"

    @property
    def entity_df_path(self) -> Path:
        return self.data_dir / "driver_labels.parquet"

    @property
    def registry_path(self) -> Path:
        return self.root / "registry.db"

    @property
    def sqlite_path(self) -> Path:
        return self.root / "online_store.db"

    @property
    def redis_connection_string(self) -> str:
        """Feast's ``host:port,db=N[,password=...]`` form of ``redis_url``."""
        if not self.redis_url:
            raise ValueError("no redis_url configured (FEATURES_REDIS_URL)")
        return to_feast_connection_string(self.redis_url)


def to_feast_connection_string(url: str) -> str:
    """``redis://[:pw@]host:port/db`` -> ``host:port,db=db[,password=pw]``; Feast's form as is."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r} in {url!r}")
    host = parts.hostname or "localhost"
    out = [f"{host}:{parts.port or 6379}"]
    db = parts.path.lstrip("/")
    out.append(f"db={int(db) if db else 0}")
    if parts.password:
        out.append(f"password={unquote(parts.password)}")
    if parts.username:
        out.append(f"username={unquote(parts.username)}")
    if parts.scheme == "rediss":
        out.append("ssl=true")
    return ",".join(out)
