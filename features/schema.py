"""The model's features: ONE definition of their order, types and defaults, for training and
serving, and the pure function that turns fetched rows into the model's input.

Imported by the gateway: numpy and the standard library only (never torch, never feast).

Missing and stale data (``policy``):

============================  =================================  ==============================
case                          ``reject`` (default)               ``default``
============================  =================================  ==============================
unknown entity (no record)    ``UnknownEntityError`` -> 404      every feature = its default
null feature value            ``NullFeatureError`` -> 422        that feature = its default
value older than max age      ``StaleFeatureError`` -> 422       every feature = its default
============================  =================================  ==============================

Under ``default`` each substituted value is reported in ``ModelInput.defaults`` (entity,
feature, reason, value): never a silent zero. Under ``reject`` the first problem found is
raised, unknown entities before null values before stale ones, in request order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import numpy as np

from features.errors import (
    FeatureValueError,
    NullFeatureError,
    StaleFeatureError,
    UnknownEntityError,
)

ENTITY = "driver"
ENTITY_KEY = "driver_id"
FEATURE_VIEW = "driver_hourly_stats"
FEATURE_SERVICE = "driver_ranking"
LABEL = "accepted"

Value = float | int | None
Policy = Literal["reject", "default"]
Reason = Literal["unknown", "null", "stale"]


@dataclass(frozen=True)
class FeatureSpec:
    """One model input feature: its Feast dtype, a documented default and what it means."""

    name: str
    dtype: Literal["float32", "int64"]
    default: float
    description: str


# The order is the model's input order. Changing it changes the model: retrain and re-export.
FEATURE_SPECS: tuple[FeatureSpec, ...] = (
    FeatureSpec("conv_rate", "float32", 0.5, "share of offers converted, last hour [0, 1]"),
    FeatureSpec("acc_rate", "float32", 0.5, "share of offers accepted, last hour [0, 1]"),
    FeatureSpec("avg_daily_trips", "int64", 10.0, "trips per day, trailing average"),
)
MODEL_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURE_SPECS)
FEATURE_DEFAULTS: dict[str, float] = {f.name: f.default for f in FEATURE_SPECS}
FEATURE_REFS: tuple[str, ...] = tuple(f"{FEATURE_VIEW}:{name}" for name in MODEL_FEATURES)
INPUT_DTYPE = np.float32


@dataclass(frozen=True, slots=True)
class FeatureRow:
    """What the online store holds for one entity. ``values[name]`` is None when missing;
    ``event_timestamp`` is None when the store has no record of the entity at all."""

    entity_id: int
    values: Mapping[str, Value]
    event_timestamp: datetime | None

    @property
    def found(self) -> bool:
        return self.event_timestamp is not None


@dataclass(frozen=True, slots=True)
class DefaultApplied:
    """A value the ``default`` policy substituted, and why."""

    entity_id: int
    feature: str
    reason: Reason
    value: float


@dataclass(frozen=True)
class ModelInput:
    """The model's input ``[n, len(MODEL_FEATURES)]`` float32, row i for ``entity_ids[i]``."""

    array: np.ndarray
    entity_ids: tuple[int, ...]
    event_timestamps: tuple[datetime | None, ...]
    defaults: tuple[DefaultApplied, ...] = field(default=())

    @property
    def feature_names(self) -> tuple[str, ...]:
        return MODEL_FEATURES


def is_null(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def age_s(event_timestamp: datetime, now: datetime) -> float:
    ts = event_timestamp if event_timestamp.tzinfo else event_timestamp.replace(tzinfo=UTC)
    return (now - ts).total_seconds()


def problems(row: FeatureRow, *, max_age_s: float | None, now: datetime) -> list[FeatureValueError]:
    """Everything wrong with one row, most severe first (empty when it is usable)."""
    if not row.found:
        return [UnknownEntityError(row.entity_id, entity=ENTITY_KEY)]
    found: list[FeatureValueError] = [
        NullFeatureError(row.entity_id, name, entity=ENTITY_KEY)
        for name in MODEL_FEATURES
        if is_null(row.values.get(name))
    ]
    assert row.event_timestamp is not None
    if max_age_s is not None:
        age = age_s(row.event_timestamp, now)
        if age > max_age_s:
            found.append(
                StaleFeatureError(
                    row.entity_id,
                    MODEL_FEATURES[0],
                    event_timestamp=row.event_timestamp,
                    age_s=age,
                    max_age_s=max_age_s,
                    entity=ENTITY_KEY,
                )
            )
    return found


def _severity(error: FeatureValueError) -> int:
    return {UnknownEntityError: 0, NullFeatureError: 1, StaleFeatureError: 2}[type(error)]


def to_model_array(matrix: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Columns already in ``MODEL_FEATURES`` order -> the model's float32 input.

    The one cast shared by training (``features.train``) and serving (``build_model_input``):
    values go through float64 (exact for float32 and for integers below 2**53) to float32.
    """
    array = np.asarray(matrix, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != len(MODEL_FEATURES):
        raise ValueError(f"expected [n, {len(MODEL_FEATURES)}] features, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("model input holds NaN or infinite values: resolve nulls first")
    return array.astype(INPUT_DTYPE)


def build_model_input(
    rows: Sequence[FeatureRow],
    *,
    policy: Policy = "reject",
    max_age_s: float | None = None,
    now: datetime | None = None,
) -> ModelInput:
    """Rows in request order -> ``ModelInput`` for the model, under ``policy``.

    ``max_age_s`` None turns the staleness check off. Raises ``UnknownEntityError``,
    ``NullFeatureError`` or ``StaleFeatureError`` under ``reject`` (see the module's table).
    """
    if policy not in ("reject", "default"):
        raise ValueError(f"policy must be 'reject' or 'default', got {policy!r}")
    now = now or datetime.now(UTC)
    issues = [problems(row, max_age_s=max_age_s, now=now) for row in rows]
    if policy == "reject":
        flat = [p for row_issues in issues for p in row_issues]
        if flat:
            raise min(flat, key=_severity)  # min is stable: first in request order wins
    matrix: list[list[float]] = []
    defaults: list[DefaultApplied] = []
    for row, row_issues in zip(rows, issues, strict=True):
        replace: dict[str, Reason] = {}
        for issue in row_issues:
            if isinstance(issue, UnknownEntityError | StaleFeatureError):
                reason: Reason = "unknown" if isinstance(issue, UnknownEntityError) else "stale"
                replace = dict.fromkeys(MODEL_FEATURES, reason)
                break
            assert issue.feature is not None
            replace[issue.feature] = "null"
        values: list[float] = []
        for name in MODEL_FEATURES:
            if name in replace:
                value = FEATURE_DEFAULTS[name]
                defaults.append(DefaultApplied(row.entity_id, name, replace[name], value))
            else:
                value = float(row.values[name])  # type: ignore[arg-type]
            values.append(value)
        matrix.append(values)
    array = (
        to_model_array(matrix) if matrix else np.zeros((0, len(MODEL_FEATURES)), dtype=INPUT_DTYPE)
    )
    return ModelInput(
        array=array,
        entity_ids=tuple(row.entity_id for row in rows),
        event_timestamps=tuple(row.event_timestamp for row in rows),
        defaults=tuple(defaults),
    )
