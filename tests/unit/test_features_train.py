"""Training metrics and the data generator's promises (no Feast, no servers)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from features.data import IDLE_STOP, DatasetSpec, generate
from features.errors import TrainingError
from features.train import log_loss, roc_auc


def test_auc_and_log_loss_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    p = np.round(np.clip(0.3 * y + rng.uniform(0, 0.7, 500), 0, 1), 2)  # with ties
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), rel=1e-9)
    with pytest.raises(TrainingError):
        roc_auc(np.ones(4), np.arange(4))


def test_generator_cohorts_and_reuse(tmp_path: Path) -> None:
    spec = DatasetSpec(n_drivers=20, days=5, n_labels=500, end=datetime(2026, 11, 25, 10, 17,
                                                                         tzinfo=UTC))  # fmt: skip
    first = generate(spec, tmp_path)
    assert first.end == datetime(2026, 11, 25, 10, tzinfo=UTC) and not first.reused
    import pandas as pd

    stats = pd.read_parquet(first.stats_path)
    last = stats.groupby("driver_id")["event_timestamp"].max()
    for driver in first.drivers["active"]:
        assert last[driver] == first.end
    for driver in first.drivers["idle"]:
        assert last[driver] == first.end - IDLE_STOP
    nullacc = stats[stats.driver_id == first.drivers["nullacc"][0]]
    assert nullacc.acc_rate.tail(6).isna().all() and nullacc.acc_rate.head(10).notna().all()
    labels = pd.read_parquet(first.labels_path)
    assert set(labels.accepted) == {0, 1} and labels.request_id.is_unique
    assert generate(spec, tmp_path).reused
