"""Train driver_ranker on point-in-time correct features and export it to the model repository.

1. ``get_historical_features(entity_df, features=<driver_ranking service>)``: for each ride
   offer (driver_id, event_timestamp) the latest statistics at or before that instant, within
   the view's TTL. Rows may come back without values (no row inside the TTL, or a null
   value): the result is joined back to the entity frame on ``request_id`` and every lost row
   is counted by cause.
2. A time split (the latest ``validation_fraction`` of offers validate), a small MLP
   (``export.models.driver_ranker``), AUC and log-loss against the base-rate baseline; the
   model must beat it or ``TrainingError`` is raised and nothing is exported.
3. ``export.pipeline.export_model``: ONNX, the parity budget, ``model_repository/driver_ranker``.
   fp32 and a static int8 variant (calibrated on the training rows) are checked; the held-out
   offers are the evaluation set, so int8 must keep its AUC within 0.005 of fp32's to be
   served (and be clearly faster: on this 3-feature MLP it is not, and fp32 is served).

torch is imported inside the functions that need it: ``features`` stays importable without it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.errors import DatasetError, TrainingError
from features.repo import EVENT_TIMESTAMP
from features.schema import ENTITY_KEY, FEATURE_SERVICE, LABEL, MODEL_FEATURES, to_model_array
from features.settings import FeatureSettings

if TYPE_CHECKING:
    from feast import FeatureStore

    from export.models.driver_ranker import DriverRanker


@dataclass(frozen=True)
class TrainConfig:
    validation_fraction: float = 0.2
    hidden: int = 16
    epochs: int = 300
    learning_rate: float = 0.01
    weight_decay: float = 1e-4
    seed: int = 0
    min_auc_gain: float = 0.05  # over the baseline's 0.5


@dataclass
class TrainingSet:
    frame: pd.DataFrame  # usable rows: request_id, driver_id, event_timestamp, features, label
    entity_rows: int
    dropped: dict[str, int]  # cause -> rows

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


@dataclass
class TrainingReport:
    entity_rows: int
    training_rows: int
    dropped: dict[str, int]
    train_rows: int
    validation_rows: int
    base_rate: float
    validation: dict[str, float]  # auc, logloss, baseline_auc, baseline_logloss
    features: list[str] = field(default_factory=lambda: list(MODEL_FEATURES))
    config: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def training_set(
    settings: FeatureSettings,
    *,
    store: FeatureStore | None = None,
    entity_df: pd.DataFrame | None = None,
) -> TrainingSet:
    """Point-in-time features for each labelled offer, lost rows counted by cause."""
    from features.store import open_store

    if entity_df is None:
        if not settings.entity_df_path.exists():
            raise DatasetError(
                f"{settings.entity_df_path} does not exist: run `tritonstack features generate`"
            )
        entity_df = pd.read_parquet(settings.entity_df_path)
    store = store or open_store(settings)
    service = store.get_feature_service(FEATURE_SERVICE)
    keys = entity_df[["request_id", ENTITY_KEY, EVENT_TIMESTAMP]]
    joined = store.get_historical_features(entity_df=keys, features=service).to_df()
    back = entity_df.merge(
        joined[["request_id", *MODEL_FEATURES]], on="request_id", how="left", indicator=True
    )
    if back["request_id"].duplicated().any():
        raise DatasetError("get_historical_features returned duplicate request_id rows")
    missing_row = back["_merge"] == "left_only"
    nulls = back[list(MODEL_FEATURES)].isna()
    all_null = nulls.all(axis=1) & ~missing_row
    some_null = nulls.any(axis=1) & ~all_null & ~missing_row
    usable = ~(missing_row | all_null | some_null)
    frame = back.loc[usable].drop(columns="_merge").sort_values(EVENT_TIMESTAMP)
    return TrainingSet(
        frame=frame.reset_index(drop=True),
        entity_rows=len(entity_df),
        dropped={
            "not_returned": int(missing_row.sum()),
            "no_value_within_ttl": int(all_null.sum()),
            "null_feature": int(some_null.sum()),
        },
    )


def features_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The model input of training rows: the same order and cast as serving."""
    return to_model_array(frame[list(MODEL_FEATURES)].to_numpy(dtype=np.float64))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties get average ranks)."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise TrainingError("AUC needs both classes in the validation set")
    ranks = pd.Series(np.asarray(scores, dtype=np.float64)).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fit(x: np.ndarray, y: np.ndarray, config: TrainConfig) -> DriverRanker:
    import torch

    from export.models.driver_ranker import DriverRanker

    torch.manual_seed(config.seed)
    model = DriverRanker(x.shape[1], hidden=config.hidden)
    model.set_scaling(x.mean(axis=0), x.std(axis=0))
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32)).unsqueeze(1)
    optimiser = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(config.epochs):  # full batch: a few thousand rows, 3 features
        optimiser.zero_grad()
        loss = loss_fn(model.logits(inputs), targets)
        loss.backward()
        optimiser.step()
    model.eval()
    return model


def predict(model: DriverRanker, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()[:, 0]


def time_split(
    frame: pd.DataFrame, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x_train, y_train, x_val, y_val: the latest ``validation_fraction`` of offers validate."""
    if len(frame) < 100:
        raise TrainingError(f"only {len(frame)} usable training rows: generate more data")
    split = int(len(frame) * (1 - config.validation_fraction))
    x, y = features_matrix(frame), frame[LABEL].to_numpy(dtype=np.int64)
    return x[:split], y[:split], x[split:], y[split:]


def train(data: TrainingSet, config: TrainConfig | None = None) -> tuple[Any, TrainingReport]:
    """Fit on the earlier offers, validate on the latest; raise unless it beats the baseline."""
    config = config or TrainConfig()
    start = time.perf_counter()
    frame = data.frame
    x_train, y_train, x_val, y_val = time_split(frame, config)
    split = len(x_train)
    model = fit(x_train, y_train, config)
    scores = predict(model, x_val)
    base_rate = float(y_train.mean())
    validation = {
        "auc": roc_auc(y_val, scores),
        "logloss": log_loss(y_val, scores),
        "baseline_auc": 0.5,  # a constant score ranks nothing
        "baseline_logloss": log_loss(y_val, np.full(len(y_val), base_rate)),
        "accuracy": float(((scores >= 0.5) == y_val).mean()),
        "baseline_accuracy": float(max(y_val.mean(), 1 - y_val.mean())),
    }
    report = TrainingReport(
        entity_rows=data.entity_rows,
        training_rows=len(frame),
        dropped=dict(data.dropped),
        train_rows=split,
        validation_rows=len(frame) - split,
        base_rate=base_rate,
        validation=validation,
        config=asdict(config),
        duration_s=time.perf_counter() - start,
    )
    if not (
        validation["auc"] >= validation["baseline_auc"] + config.min_auc_gain
        and validation["logloss"] < validation["baseline_logloss"]
    ):
        raise TrainingError(
            f"driver_ranker does not beat the base-rate baseline: AUC {validation['auc']:.3f} "
            f"(needs >= {0.5 + config.min_auc_gain:.2f}), log-loss {validation['logloss']:.4f} "
            f"vs {validation['baseline_logloss']:.4f}"
        )
    return model, report


def fingerprint(settings: FeatureSettings, config: TrainConfig) -> str:
    """What the trained model depends on: the dataset manifest, features, training config."""
    manifest = settings.data_dir / "manifest.json"
    data = json.loads(manifest.read_text()).get("fingerprint", "") if manifest.exists() else ""
    blob = json.dumps([data, MODEL_FEATURES, asdict(config)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    report: TrainingReport
    version_dir: Path | None
    export_report: Path | None
    reused: bool = False
    model: Any = None  # the trained DriverRanker (None when an earlier export was reused)


def train_and_export(
    settings: FeatureSettings,
    repository: Path,
    *,
    build_dir: Path,
    version: int = 1,
    config: TrainConfig | None = None,
    force: bool = False,
    store: FeatureStore | None = None,
) -> TrainResult:
    """Train, check quality, export with the parity check; reuse an export of the same data."""
    from export.models import driver_ranker
    from export.pipeline import export_model
    from export.variants import Variant

    config = config or TrainConfig()
    print_ = fingerprint(settings, config)
    version_dir = repository / driver_ranker.NAME / str(version)
    previous = version_dir / "training.json"
    if not force and previous.exists() and (version_dir / "model.onnx").exists():
        old = json.loads(previous.read_text())
        if old.get("fingerprint") == print_:
            fields = {k: old[k] for k in TrainingReport.__dataclass_fields__ if k in old}
            return TrainResult(TrainingReport(**fields), version_dir, None, reused=True)

    data = training_set(settings, store=store)
    model, report = train(data, config)
    report.fingerprint = print_
    spec = driver_ranker.load(model, MODEL_FEATURES)
    x_train, _, x_val, y_val = time_split(data.frame, config)
    spec.evaluation = lambda: driver_ranker.feature_rows(
        x_val, y_val, f"the {len(x_val)} held-out offers (the latest, with accept labels)"
    )
    spec.calibration = lambda: driver_ranker.feature_rows(
        x_train, None, f"{len(x_train)} training offers"
    )
    with tempfile.TemporaryDirectory() as tmp:
        training_json = Path(tmp) / "training.json"
        training_json.write_text(json.dumps(report.as_dict(), indent=2, default=str) + "\n")
        spec.extra_files = {"training.json": training_json}
        # static int8 is checked (AUC on the held-out offers within 0.005 of fp32's), and
        # served only if it is also >= 1.10x faster than fp32
        result = export_model(
            spec,
            repository,
            build_dir=build_dir,
            version=version,
            seed=config.seed,
            variants=(Variant.FP32, Variant.INT8),
        )
    if not result.ok:
        failure = result.failure
        raise TrainingError(
            f"export of driver_ranker failed at {failure.step if failure else '?'}: "
            f"{failure.reason if failure else 'unknown'} (report: {result.report_path})"
        )
    (settings.root / "training_report.json").write_text(
        json.dumps(report.as_dict(), indent=2, default=str) + "\n"
    )
    return TrainResult(report, result.version_dir, result.report_path, model=model)
