"""driver_ranker: trained on point-in-time features, beats the baseline, served by Triton with
the same scores as PyTorch for features read from the online store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from deploy.local import TritonServer
from export.verify import FP32_BUDGET
from features.schema import MODEL_FEATURES
from features.train import TrainResult, predict, train_and_export
from tests.fixtures_features import FeatureEnv, online_model_input, triton_scores

pytestmark = pytest.mark.integration


def test_model_beats_the_base_rate(trained: TrainResult, sqlite_features: FeatureEnv) -> None:
    report = trained.report
    v = report.validation
    assert v["auc"] >= 0.6 > v["baseline_auc"]
    assert v["logloss"] < v["baseline_logloss"]
    # every offer is accounted for: trained on, or dropped for a named cause
    assert report.training_rows + sum(report.dropped.values()) == report.entity_rows == 3000
    # gone and late drivers have offers with no statistics inside the TTL, nullacc a null
    assert report.dropped["not_returned"] + report.dropped["no_value_within_ttl"] > 0
    assert report.dropped["null_feature"] > 0
    assert trained.version_dir is not None
    saved = json.loads((trained.version_dir / "training.json").read_text())
    assert saved["validation"] == v and saved["features"] == list(MODEL_FEATURES)
    export = json.loads((trained.version_dir / "report.json").read_text())
    assert export["status"] == "OK"


def test_training_is_reused_for_the_same_data(
    trained: TrainResult, sqlite_features: FeatureEnv
) -> None:
    assert trained.version_dir is not None
    again = train_and_export(
        sqlite_features.settings,
        trained.version_dir.parent.parent,
        build_dir=trained.version_dir.parent.parent.parent / "build2",
    )
    assert again.reused and again.report.validation == trained.report.validation


def test_tracked_config_is_what_training_writes(trained: TrainResult) -> None:
    assert trained.version_dir is not None
    written = (trained.version_dir.parent / "config.pbtxt").read_text()
    tracked = Path(__file__).resolve().parents[2] / "model_repository" / "driver_ranker"
    assert written == (tracked / "config.pbtxt").read_text()


def test_triton_scores_online_features_like_pytorch(
    ranker_triton: TritonServer, trained: TrainResult, redis_features: FeatureEnv
) -> None:
    """Features from the (Redis) online store -> model input -> Triton == PyTorch."""
    ids = redis_features.dataset.drivers["active"][:8]

    features = online_model_input(redis_features, ids)
    scores = triton_scores(ranker_triton, features)
    assert scores.shape == (len(ids), 1)
    assert trained.model is not None
    reference = predict(trained.model, features)
    rel = np.linalg.norm(scores[:, 0] - reference) / np.linalg.norm(reference)
    assert rel <= FP32_BUDGET, rel
    assert np.ptp(scores) > 0.01  # different drivers, different scores


def test_triton_refuses_nan_features(ranker_triton: TritonServer) -> None:
    client = grpcclient.InferenceServerClient(ranker_triton.grpc_url)
    try:
        bad = np.array([[0.5, np.nan, 10.0]], dtype=np.float32)
        tensor = grpcclient.InferInput("features", list(bad.shape), "FP32")
        tensor.set_data_from_numpy(bad)
        with pytest.raises(InferenceServerException, match="NaN or infinite"):
            client.infer("driver_ranker", [tensor])
    finally:
        client.close()
