"""Feature-backed rows: entity ids in, point-in-time features from Feast's offline store.

For every entity of a shard, ``get_historical_features`` on the ``driver_ranking`` service at
``as_of`` gives the latest values at or before that instant within the view's TTL: what a
materialization up to ``as_of`` put into the online store, hence what ``/v1/score`` reads.
Feast's result carries no feature timestamps, so the event time of each entity's row (for the
staleness rule) is the newest source timestamp in ``[as_of - ttl, as_of]``, read once per
run from the view's own batch source. Then the serving rules apply unchanged
(``features.schema``): ``problems(row, max_age_s, now=as_of)`` under the ``reject`` policy
(an unknown, null or stale entity becomes a dead letter naming why, as ``/v1/score`` answers
404 / 422), ``build_model_input`` (the one feature order and cast) for the model input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from batch.errors import InputError, ModelError
from batch.inputs import Prepared, Signature
from features.errors import NullFeatureError, StaleFeatureError, UnknownEntityError
from features.repo import EVENT_TIMESTAMP
from features.schema import (
    ENTITY_KEY,
    FEATURE_SERVICE,
    FEATURE_VIEW,
    MODEL_FEATURES,
    FeatureRow,
    build_model_input,
    problems,
)
from features.settings import FeatureSettings

if TYPE_CHECKING:
    from feast import FeatureStore

FEATURE_INPUT = "features"
FEATURE_TIME = "feature_timestamp"
_CODES = {UnknownEntityError: "unknown_entity", NullFeatureError: "null_feature",
          StaleFeatureError: "stale_feature"}  # fmt: skip
_ROW = "__batch_row"


def as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass
class FeatureSource:
    """Builds ``driver_ranker``'s input for entity rows, as of one instant."""

    settings: FeatureSettings
    as_of: datetime
    entity_column: str = ENTITY_KEY
    store: FeatureStore | None = None

    def __post_init__(self) -> None:
        self.as_of = as_utc(self.as_of)
        self._times: dict[int, datetime] | None = None

    # -- what the run depends on ----------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "feature_service": FEATURE_SERVICE,
            "features": list(MODEL_FEATURES),
            "missing_policy": self.settings.missing_policy,
            "max_age_s": self.settings.max_age_s,
            "project": self.settings.project,
        }

    def check(self, signature: Signature) -> None:
        spec = signature.input(FEATURE_INPUT)
        if spec is None or spec.dims != (len(MODEL_FEATURES),) or len(signature.inputs) != 1:
            raise ModelError(
                f"model {signature.model!r} is not a feature-backed scorer: it needs one input "
                f"{FEATURE_INPUT!r} of dims [{len(MODEL_FEATURES)}] ({', '.join(MODEL_FEATURES)})"
            )

    def check_schema(self, schema: pa.Schema) -> None:
        if self.entity_column not in schema.names:
            raise InputError(
                f"the entities file has no {self.entity_column!r} column (columns: {schema.names})"
            )
        if not pa.types.is_integer(schema.field(self.entity_column).type):
            raise InputError(
                f"column {self.entity_column!r} must hold integer ids, it is "
                f"{schema.field(self.entity_column).type}"
            )

    # -- Feast ----------------------------------------------------------------------------
    def _store(self) -> FeatureStore:
        if self.store is None:
            from features.store import open_store  # imports feast (5-8 s): only when used

            self.store = open_store(self.settings)
        return self.store

    def _event_times(self) -> dict[int, datetime]:
        """Entity -> newest source event time in ``[as_of - ttl, as_of]`` (one scan per run)."""
        if self._times is None:
            view = self._store().get_feature_view(FEATURE_VIEW)
            source = view.batch_source
            path = getattr(source, "path", None)
            if source is None or not path:
                raise InputError(f"feature view {FEATURE_VIEW!r} has no file source to read")
            stamp = source.timestamp_field or EVENT_TIMESTAMP
            table = pq.read_table(path, columns=[ENTITY_KEY, stamp]).to_pandas()
            times = pd.to_datetime(table[stamp], utc=True)
            lower = self.as_of - view.ttl if view.ttl else pd.Timestamp.min.tz_localize(UTC)
            inside = table[(times <= self.as_of) & (times >= lower)]
            newest = inside.assign(**{stamp: times}).groupby(ENTITY_KEY)[stamp].max()
            self._times = {int(k): v.to_pydatetime() for k, v in newest.items()}
        return self._times

    def _ttl_text(self) -> str:
        ttl = self._store().get_feature_view(FEATURE_VIEW).ttl
        return f"view's TTL ({ttl})" if ttl else "offline store"

    def rows(self, ids: Sequence[int]) -> list[FeatureRow]:
        """The point-in-time row of each id (``found`` False when none lies within the TTL)."""
        unique = sorted(set(ids))
        if not unique:
            return []
        entity_df = pd.DataFrame(
            {
                ENTITY_KEY: unique,
                EVENT_TIMESTAMP: [self.as_of] * len(unique),
                _ROW: range(len(unique)),
            }
        )
        store = self._store()
        service = store.get_feature_service(FEATURE_SERVICE)
        joined = store.get_historical_features(entity_df=entity_df, features=service).to_df()
        back = entity_df.merge(joined[[_ROW, *MODEL_FEATURES]], on=_ROW, how="left")
        times = self._event_times()
        by_id: dict[int, FeatureRow] = {}
        for record in back.to_dict("records"):
            entity = int(record[ENTITY_KEY])
            values = {n: _value(record[n]) for n in MODEL_FEATURES}
            by_id[entity] = FeatureRow(entity, values, times.get(entity))
        return [by_id[int(i)] for i in ids]

    # -- shard rows -> tensors --------------------------------------------------------------
    def prepare(self, table: pa.Table) -> Prepared:
        prepared = Prepared(table.num_rows)
        column = table.column(self.entity_column).combine_chunks()
        ids: list[int | None] = column.to_pylist()
        for position, entity in enumerate(ids):
            if entity is None:
                prepared.reject(position, "null", f"column {self.entity_column!r} is null")
        present = [(p, int(e)) for p, e in enumerate(ids) if e is not None]
        rows = self.rows([e for _, e in present])
        policy, max_age = self.settings.missing_policy, self.settings.max_age_s
        usable: list[tuple[int, FeatureRow]] = []
        for (position, _), row in zip(present, rows, strict=True):
            issues = problems(row, max_age_s=max_age, now=self.as_of)
            if issues and policy == "reject":
                worst = issues[0]
                reason = str(worst)
                if isinstance(worst, UnknownEntityError):  # its message speaks of the online store
                    reason = (
                        f"unknown {self.entity_column} {row.entity_id}: no feature values in "
                        f"the {self._ttl_text()} up to {self.as_of.isoformat()}"
                    )
                prepared.reject(position, _CODES.get(type(worst), "invalid_features"), reason)
            else:
                usable.append((position, row))
        matrix = np.zeros((table.num_rows, len(MODEL_FEATURES)), dtype=np.float32)
        stamps: list[datetime | None] = [None] * table.num_rows
        notes: list[str | None] = [None] * table.num_rows
        if usable:
            built = build_model_input(
                [r for _, r in usable], policy=policy, max_age_s=max_age, now=self.as_of
            )
            where = [p for p, _ in usable]
            matrix[where] = built.array
            for p, stamp in zip(where, built.event_timestamps, strict=True):
                stamps[p] = stamp
            by_entity: dict[int, list[str]] = {}
            for d in built.defaults:
                by_entity.setdefault(d.entity_id, []).append(f"{d.feature}:{d.reason}")
            for p, row in usable:
                notes[p] = ",".join(by_entity.get(row.entity_id, [])) or None
        prepared.fixed[FEATURE_INPUT] = matrix
        for i, name in enumerate(MODEL_FEATURES):
            prepared.extra[name] = pa.array(matrix[:, i])
        prepared.extra[FEATURE_TIME] = pa.array(stamps, type=pa.timestamp("us", tz="UTC"))
        if policy == "default":
            prepared.extra["defaults_applied"] = pa.array(notes, type=pa.string())
        return prepared


def _value(value: Any) -> float | int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value
