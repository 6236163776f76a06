"""Live accuracy: the outcomes clients reported (``POST /v1/feedback``) joined to the answers
they were about, over a sliding window.

The window is over the feedback's time: the outcomes received in the last ``window_s``, each
joined on (request id, item) to its captured answer, which may be up to ``feedback_delay_s``
older. A request reported twice counts once (its last report). Per served version: ROC AUC
(``features.train.roc_auc``, ties averaged, as the training report computes it), log-loss and
how many labels, and positives, it rests on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.train import log_loss, roc_auc
from monitoring.reference import Spec
from monitoring.store import Store


@dataclass(frozen=True)
class Accuracy:
    model: str
    version: str
    labels: int
    positives: int
    auc: float | None  # None while only one class was reported
    logloss: float


def predictions(table: pa.Table, spec: Spec | None) -> pd.DataFrame:
    """request_id, item, version, prediction of captured rows (the spec's prediction, else the
    first floating-point output)."""
    column, index = spec.prediction if spec and spec.prediction else (None, 0)
    if column is None:
        for name in table.column_names:
            kind = table.column(name).type
            if name.startswith("out.") and (
                pa.types.is_floating(kind)
                or (pa.types.is_list(kind) and pa.types.is_floating(kind.value_type))
            ):
                column = name
                break
    if column is None or column not in table.column_names:
        return pd.DataFrame(columns=["request_id", "item", "version", "prediction"])
    values = table.column(column)
    if pa.types.is_list(values.type):
        values = pc.list_element(values, index)
    return pd.DataFrame(
        {
            "request_id": table.column("request_id").to_pylist(),
            "item": table.column("item").to_numpy(),
            "version": table.column("version").to_pylist(),
            "prediction": np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64),
        }
    )


def live_accuracy(
    store: Store,
    model: str,
    now: datetime,
    *,
    window_s: float,
    delay_s: float,
    spec: Spec | None = None,
) -> list[Accuracy]:
    start = now - timedelta(seconds=window_s)
    feedback = store.read("feedback", model, start, now)
    if feedback is None:
        return []
    answers = store.read("inferences", model, start - timedelta(seconds=delay_s), now)
    if answers is None:
        return []
    outcomes = (
        feedback.select(["request_id", "item", "outcome", "time"])
        .to_pandas()
        .sort_values("time")
        .drop_duplicates(["request_id", "item"], keep="last")
    )
    joined = predictions(answers, spec).drop_duplicates(["request_id", "item"])
    joined = joined.merge(outcomes, on=["request_id", "item"], how="inner")
    found = []
    for version, rows in joined.groupby("version"):
        labels = (rows["outcome"].to_numpy() >= 0.5).astype(np.int64)
        scores = rows["prediction"].to_numpy()
        positives = int(labels.sum())
        auc = roc_auc(labels, scores) if 0 < positives < len(labels) else None
        found.append(
            Accuracy(model, str(version), len(labels), positives, auc, log_loss(labels, scores))
        )
    return found
