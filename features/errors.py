"""Errors of the feature store.

FeatureStoreError
 ├── FeatureValueError          a row cannot become model input (names entity and feature)
 │    ├── UnknownEntityError    the online store has no record of the entity      (HTTP 404)
 │    ├── NullFeatureError      the entity is known but a feature value is null   (HTTP 422)
 │    └── StaleFeatureError     the values are older than the configured max age  (HTTP 422)
 ├── FeatureStoreUnavailable    the online store cannot be reached in time        (HTTP 503)
 ├── DatasetError               offline data missing or malformed (generate first)
 └── TrainingError              the trained model fails its quality bar, or export fails
"""

from __future__ import annotations

from datetime import datetime


class FeatureStoreError(Exception):
    """Root of every error raised by ``features``."""


class FeatureValueError(FeatureStoreError):
    """A fetched row cannot become model input. ``feature`` is None when the whole row is."""

    status_code = 422

    def __init__(self, entity_id: int, feature: str | None, message: str) -> None:
        super().__init__(message)
        self.entity_id = entity_id
        self.feature = feature


class UnknownEntityError(FeatureValueError):
    """The online store holds no record of this entity (never materialized, or expired)."""

    status_code = 404

    def __init__(self, entity_id: int, *, entity: str = "driver_id") -> None:
        super().__init__(
            entity_id, None, f"unknown {entity} {entity_id}: no features in the online store"
        )


class NullFeatureError(FeatureValueError):
    """The entity is known but one of the model's features has no value."""

    def __init__(self, entity_id: int, feature: str, *, entity: str = "driver_id") -> None:
        super().__init__(entity_id, feature, f"{entity} {entity_id}: feature {feature!r} is null")


class StaleFeatureError(FeatureValueError):
    """The entity's feature values are older than the configured maximum age."""

    def __init__(
        self,
        entity_id: int,
        feature: str,
        *,
        event_timestamp: datetime,
        age_s: float,
        max_age_s: float,
        entity: str = "driver_id",
    ) -> None:
        super().__init__(
            entity_id,
            feature,
            f"{entity} {entity_id}: feature {feature!r} is stale: event time "
            f"{event_timestamp.isoformat()} is {age_s:.0f} s old (max age {max_age_s:.0f} s)",
        )
        self.event_timestamp = event_timestamp
        self.age_s = age_s
        self.max_age_s = max_age_s


class FeatureStoreUnavailable(FeatureStoreError):
    """The online store did not answer (connection refused, timeout)."""

    status_code = 503


class DatasetError(FeatureStoreError):
    """The offline data is missing or malformed."""


class TrainingError(FeatureStoreError):
    """Training did not reach its quality bar, or the export failed."""
