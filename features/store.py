"""The Feast side: ``feature_store.yaml`` from settings, apply, materialize.

``import feast`` costs 5-8 s: it happens inside these functions, never at import time.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.errors import DatasetError
from features.settings import FeatureSettings

if TYPE_CHECKING:
    from feast import FeatureStore


def store_config(settings: FeatureSettings) -> dict[str, Any]:
    """The content of ``feature_store.yaml``: local provider, file offline store, and SQLite
    (default) or Redis online store."""
    online: dict[str, Any]
    if settings.store_kind == "redis":
        online = {"type": "redis", "connection_string": settings.redis_connection_string}
    else:
        online = {"type": "sqlite", "path": str(settings.sqlite_path)}
    return {
        "project": settings.project,
        "provider": "local",
        "registry": {"registry_type": "file", "path": str(settings.registry_path)},
        "offline_store": {"type": "file"},
        "online_store": online,
        "entity_key_serialization_version": 3,
    }


def write_feature_store_yaml(settings: FeatureSettings) -> Path:
    """Write ``STATE_DIR/feature_store.yaml`` (JSON is valid YAML); only when it changes."""
    root = settings.root
    root.mkdir(parents=True, exist_ok=True)
    path = root / "feature_store.yaml"
    text = "# generated from FEATURES_* settings by features.store; do not edit\n"
    text += json.dumps(store_config(settings), indent=2) + "\n"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def open_store(settings: FeatureSettings) -> FeatureStore:
    """A ``FeatureStore`` on the generated ``feature_store.yaml``."""
    from feast import FeatureStore

    write_feature_store_yaml(settings)
    return FeatureStore(repo_path=str(settings.root))


@dataclass(frozen=True)
class StepReport:
    step: str
    detail: dict[str, Any]
    duration_s: float


def apply(settings: FeatureSettings, store: FeatureStore | None = None) -> StepReport:
    """Register the entity, view and service (idempotent: Feast diffs against the registry)."""
    from features.repo import definitions

    start = time.perf_counter()
    if not settings.offline_path.exists():
        raise DatasetError(
            f"{settings.offline_path} does not exist: run `tritonstack features generate` first"
        )
    store = store or open_store(settings)
    objects = definitions(settings)
    store.apply(list(objects))
    return StepReport(
        "apply",
        {
            "project": settings.project,
            "online_store": settings.store_kind,
            "registry": str(settings.registry_path),
            "objects": [f"{type(o).__name__}:{o.name}" for o in objects],
        },
        time.perf_counter() - start,
    )


def materialize(
    settings: FeatureSettings,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    store: FeatureStore | None = None,
) -> StepReport:
    """Load the offline rows into the online store.

    Without ``start``: incremental up to ``end`` (default now) from the last materialization,
    or from ``end - ttl`` the first time. With ``start``: exactly ``[start, end]``.
    """
    began = time.perf_counter()
    store = store or open_store(settings)
    end = end or datetime.now(UTC)
    if start is None:
        store.materialize_incremental(end_date=end)
    else:
        store.materialize(start_date=start, end_date=end)
    return StepReport(
        "materialize",
        {
            "online_store": settings.store_kind,
            "mode": "incremental" if start is None else "range",
            "start": start.isoformat() if start else None,
            "end": end.isoformat(),
        },
        time.perf_counter() - began,
    )
