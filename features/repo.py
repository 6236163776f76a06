"""The Feast repository: entity ``driver``, feature view ``driver_hourly_stats`` and feature
service ``driver_ranking`` (exactly ``schema.MODEL_FEATURES``, in that order), on a parquet
``FileSource``.

Built as objects from settings (the parquet path lives under the state directory) and applied
with ``FeatureStore.apply`` by ``tritonstack features apply``; no ``feast apply`` scan of a
folder is involved, so the definitions exist once, here. ``import feast`` costs seconds: it
happens inside the builders, never at import time.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from features.schema import (
    ENTITY,
    ENTITY_KEY,
    FEATURE_SERVICE,
    FEATURE_SPECS,
    FEATURE_VIEW,
    MODEL_FEATURES,
)
from features.settings import FeatureSettings

if TYPE_CHECKING:
    from feast import FeatureService, FeatureView

# How far back the point-in-time join (and the first incremental materialization) looks for a
# driver's latest statistics. Serving staleness is a separate, tighter setting (max_age_s).
FEATURE_TTL = timedelta(days=2)
EVENT_TIMESTAMP = "event_timestamp"
CREATED_TIMESTAMP = "created"
SOURCE_NAME = "driver_hourly_stats_source"


def _feast_type(dtype: str) -> Any:
    from feast.types import Float32, Int64

    return {"float32": Float32, "int64": Int64}[dtype]


def definitions(settings: FeatureSettings) -> tuple[Any, FeatureView, FeatureService]:
    """The entity, the feature view and the feature service, in that order."""
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType

    driver = Entity(
        name=ENTITY,
        join_keys=[ENTITY_KEY],
        value_type=ValueType.INT64,
        description="a driver, by driver_id (int64)",
    )
    source = FileSource(
        name=SOURCE_NAME,
        path=str(settings.offline_path),
        timestamp_field=EVENT_TIMESTAMP,
        created_timestamp_column=CREATED_TIMESTAMP,
        description="hourly driver statistics (features.data writes it)",
    )
    view = FeatureView(
        name=FEATURE_VIEW,
        entities=[driver],
        ttl=FEATURE_TTL,
        schema=[
            Field(name=f.name, dtype=_feast_type(f.dtype), description=f.description)
            for f in FEATURE_SPECS
        ],
        online=True,
        source=source,
        description="hourly driver statistics",
    )
    service = FeatureService(
        name=FEATURE_SERVICE,
        features=[view[list(MODEL_FEATURES)]],  # exactly what the model consumes, in order
        description="what the driver_ranker model consumes (features.schema.MODEL_FEATURES)",
    )
    return driver, view, service
