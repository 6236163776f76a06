"""Drift of captured traffic against a reference, computed with Evidently.

Per tabular feature and for the prediction: the population stability index (PSI, the alerting
score: past ``psi_threshold`` is drift) and the two-sample Kolmogorov-Smirnov test (its p-value
beside it), both Evidently's ``ValueDrift`` in one report. For an embedding: Evidently's domain
classifier (``ModelDriftMethod``: the ROC AUC of a classifier telling current from reference
vectors; 0.5 = indistinguishable, the alerting score) and its MMD. Why Evidently (measured
against alibi-detect, NannyML and whylogs): docs/architecture.md, "Monitoring".

Each side is sampled to ``sample_rows`` rows (seeded), so one evaluation costs about the same
whatever the traffic.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from monitoring.errors import NotEnoughData
from monitoring.reference import Spec, frame
from monitoring.settings import MonitorSettings


@dataclass(frozen=True)
class Score:
    feature: str  # a tabular feature, "prediction" or "embedding"
    method: str  # psi | ks | domain_classifier_auc | mmd
    value: float
    threshold: float
    drifted: bool


@dataclass
class DriftResult:
    model: str
    version: str
    start: datetime
    end: datetime
    current_rows: int
    reference_rows: int
    reference: Spec
    scores: list[Score] = field(default_factory=list)
    snapshot: Any = None  # Evidently's snapshot of the tabular report (for the HTML report)
    samples: dict[str, Any] = field(default_factory=dict)  # what the plots draw

    @property
    def drifted(self) -> bool:
        return any(s.drifted for s in self.scores if s.method != "ks")

    def alerting(self) -> list[Score]:
        """The scores the alert compares with their thresholds (not the KS p-values)."""
        return [s for s in self.scores if s.method in ("psi", "domain_classifier_auc")]


@contextmanager
def _quiet_import() -> Iterator[None]:
    """Evidently's import warns about its own dependencies' deprecations (numpy.core,
    litestar): nothing a user of the report can act on, printed into `make demo`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _sample(data: pd.DataFrame, rows: int, seed: int = 0) -> pd.DataFrame:
    return data if len(data) <= rows else data.sample(rows, random_state=seed)


def tabular(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], settings: MonitorSettings
) -> tuple[list[Score], Any]:
    # deferred on purpose: Evidently takes ~3 s to import; only drift evaluations need it
    with _quiet_import():
        from evidently import DataDefinition, Dataset, Report
        from evidently.metrics import ValueDrift

    definition = DataDefinition(numerical_columns=columns)
    metrics = [
        ValueDrift(column=c, method="psi", threshold=settings.psi_threshold) for c in columns
    ]
    metrics += [ValueDrift(column=c, method="ks", threshold=settings.ks_alpha) for c in columns]
    snapshot = Report(metrics).run(
        Dataset.from_pandas(current[columns], data_definition=definition),
        Dataset.from_pandas(reference[columns], data_definition=definition),
    )
    scores = []
    for result in snapshot.dict()["metrics"]:
        config, value = result["config"], float(result["value"])
        if config["method"] == "psi":
            scores.append(Score(config["column"], "psi", value, settings.psi_threshold,
                                value >= settings.psi_threshold))  # fmt: skip
        else:
            scores.append(Score(config["column"], "ks", value, settings.ks_alpha,
                                value < settings.ks_alpha))  # fmt: skip
    return scores, snapshot


def embedding(reference: np.ndarray, current: np.ndarray, settings: MonitorSettings) -> list[Score]:
    # deferred on purpose (see tabular)
    with _quiet_import():
        from evidently.metrics.embeddings import MMDDriftMethod, ModelDriftMethod

    rng = np.random.default_rng(0)
    sides = []
    for side in (reference, current):
        if len(side) > settings.sample_rows:
            side = side[rng.choice(len(side), settings.sample_rows, replace=False)]
        sides.append(pd.DataFrame(side.astype(np.float64)))
    ref, cur = sides
    auc, _, _ = ModelDriftMethod(threshold=settings.embedding_auc_threshold)(cur.copy(), ref.copy())
    mmd, _, _ = MMDDriftMethod()(cur.copy(), ref.copy())
    threshold = settings.embedding_auc_threshold
    return [
        Score("embedding", "domain_classifier_auc", float(auc), threshold, auc >= threshold),
        Score("embedding", "mmd", float(mmd), float("nan"), False),
    ]


def compare(
    spec: Spec,
    reference: Any,
    current: Any,
    *,
    start: datetime,
    end: datetime,
    version: str,
    settings: MonitorSettings,
) -> DriftResult:
    """Drift of ``current`` (captured rows, Arrow) against ``reference`` (its Arrow table)."""
    ref_tab, ref_emb = frame(reference, spec)
    cur_tab, cur_emb = frame(current, spec)
    rows = len(cur_tab) if spec.columns else len(cur_emb if cur_emb is not None else [])
    if rows < settings.min_rows:
        raise NotEnoughData(
            f"{spec.model} v{version}: {rows} captured rows in the window, "
            f"{settings.min_rows} needed (MONITOR_MIN_ROWS)"
        )
    result = DriftResult(spec.model, version, start, end, rows, len(reference), spec)
    if spec.columns:
        ref_s = _sample(ref_tab, settings.sample_rows)
        cur_s = _sample(cur_tab, settings.sample_rows)
        result.scores, result.snapshot = tabular(ref_s, cur_s, spec.columns, settings)
        result.samples.update(reference=ref_s, current=cur_s)
    if spec.embedding and ref_emb is not None and cur_emb is not None:
        result.scores += embedding(ref_emb, cur_emb, settings)
        result.samples.update(reference_embedding=ref_emb, current_embedding=cur_emb)
    return result
