"""Synthetic but realistic driver data: the offline parquet source and a labelled entity frame.

Hourly statistics for ``n_drivers`` drivers over ``days`` days ending at ``end`` (an hour).
Each driver has a latent quality; conv_rate, acc_rate and avg_daily_trips drift around it hour
by hour. Driver cohorts exercise the edge cases (by index, deterministic for a seed):

* ``active``  rows every hour up to ``end``;
* ``idle``    rows stop 30 h before ``end``: materialized (inside the 2-day TTL) but stale
  for the default 24 h serving max age;
* ``gone``    rows stop 4 days before ``end``: outside the TTL, never materialized -> unknown;
* ``late``    rows start half-way: label rows before their first hour have no features;
* ``nullacc`` active, but acc_rate is null for the last 6 hours (a sensor gap).

Labels (``accepted``: did the driver accept the ride offered at ``event_timestamp``) are drawn
from the features as of that instant (the latest row at or before it, within the TTL):
``logit = -0.3 + 4 (conv_rate - 0.5) + 3 (acc_rate - 0.5) + 0.08 (avg_daily_trips - 12)``.
Rows whose driver has no usable features then get a coin flip: training drops them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from features.repo import CREATED_TIMESTAMP, EVENT_TIMESTAMP, FEATURE_TTL
from features.schema import ENTITY_KEY, LABEL

FIRST_DRIVER_ID = 1001
COHORTS = ("active", "idle", "gone", "late", "nullacc")
IDLE_STOP = timedelta(hours=30)
GONE_STOP = timedelta(days=4)
NULL_HOURS = 6
LABEL_COEF = {"bias": -0.3, "conv_rate": 4.0, "acc_rate": 3.0, "avg_daily_trips": 0.08}


@dataclass(frozen=True)
class DatasetSpec:
    n_drivers: int = 100
    days: int = 14
    n_labels: int = 20_000
    seed: int = 7
    end: datetime | None = None  # default: the current hour (UTC)

    def resolved_end(self) -> datetime:
        end = self.end or datetime.now(UTC)
        end = end if end.tzinfo else end.replace(tzinfo=UTC)
        return end.astimezone(UTC).replace(minute=0, second=0, microsecond=0)

    def fingerprint(self) -> str:
        d = asdict(self) | {"end": self.resolved_end().isoformat(), "generator": 1}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Dataset:
    stats_path: Path
    labels_path: Path
    end: datetime
    drivers: dict[str, list[int]]  # cohort -> driver ids
    rows: int
    label_rows: int
    reused: bool = False


def cohort_of(index: int) -> str:
    """Cohort of the driver at ``index`` (0-based): 1 in 10 idle, gone, late; one nullacc."""
    if index == 3:
        return "nullacc"
    return {1: "idle", 5: "gone", 8: "late"}.get(index % 10, "active")


def label_logit(conv: np.ndarray, acc: np.ndarray, trips: np.ndarray) -> np.ndarray:
    c = LABEL_COEF
    return (
        c["bias"]
        + c["conv_rate"] * (conv - 0.5)
        + c["acc_rate"] * (acc - 0.5)
        + c["avg_daily_trips"] * (trips - 12.0)
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def driver_stats(spec: DatasetSpec) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    rng = np.random.default_rng(spec.seed)
    end = spec.resolved_end()
    hours = pd.date_range(end=end, periods=spec.days * 24, freq="h", tz=UTC)
    frames: list[pd.DataFrame] = []
    drivers: dict[str, list[int]] = {c: [] for c in COHORTS}
    for i in range(spec.n_drivers):
        driver_id = FIRST_DRIVER_ID + i
        cohort = cohort_of(i)
        drivers[cohort].append(driver_id)
        keep = np.ones(len(hours), dtype=bool)
        if cohort == "idle":
            keep = hours <= end - IDLE_STOP
        elif cohort == "gone":
            keep = hours <= end - GONE_STOP
        elif cohort == "late":
            keep = hours >= hours[len(hours) // 2]
        n = len(hours)
        quality = rng.normal()
        walk = np.cumsum(rng.normal(0, 0.08, n))
        walk -= walk.mean()
        daily = 0.3 * np.sin(2 * np.pi * (hours.hour.to_numpy() + rng.uniform(0, 24)) / 24)
        conv = _sigmoid(0.9 * quality + walk + daily + rng.normal(0, 0.25, n))
        acc = _sigmoid(0.6 * quality + 0.5 * walk + rng.normal(0, 0.35, n))
        lam = 4 + 16 * _sigmoid(quality + 0.5 * walk)
        trips = rng.poisson(lam)
        frame = pd.DataFrame(
            {
                ENTITY_KEY: np.full(n, driver_id, dtype=np.int64),
                EVENT_TIMESTAMP: hours,
                "conv_rate": conv.astype(np.float32),
                "acc_rate": acc.astype(np.float32),
                "avg_daily_trips": trips.astype(np.int64),
            }
        )[keep]
        if cohort == "nullacc":
            frame.loc[frame.index[-NULL_HOURS:], "acc_rate"] = np.nan
        frames.append(frame)
    stats = pd.concat(frames, ignore_index=True)
    # written a few minutes after the hour closes, as a real hourly job would
    stats[CREATED_TIMESTAMP] = stats[EVENT_TIMESTAMP] + pd.Timedelta(minutes=5)
    return stats, drivers


def labels(spec: DatasetSpec, stats: pd.DataFrame) -> pd.DataFrame:
    """Ride offers at random instants with the driver's answer, drawn point-in-time."""
    rng = np.random.default_rng(spec.seed + 1)
    end = spec.resolved_end()
    start = end - timedelta(days=spec.days) + timedelta(hours=1)
    span_s = (end - start).total_seconds()
    ids = rng.integers(FIRST_DRIVER_ID, FIRST_DRIVER_ID + spec.n_drivers, spec.n_labels)
    offsets = np.sort(rng.uniform(0, span_s, spec.n_labels))
    offers = pd.DataFrame(
        {
            ENTITY_KEY: ids.astype(np.int64),
            EVENT_TIMESTAMP: pd.Timestamp(start) + pd.to_timedelta(offsets.round(), unit="s"),
            "request_id": np.arange(spec.n_labels, dtype=np.int64),
        }
    )
    asof = pd.merge_asof(
        offers.sort_values(EVENT_TIMESTAMP),
        stats.sort_values(EVENT_TIMESTAMP),
        on=EVENT_TIMESTAMP,
        by=ENTITY_KEY,
        direction="backward",
        tolerance=pd.Timedelta(FEATURE_TTL),
    ).sort_values("request_id")
    logit = label_logit(
        asof["conv_rate"].to_numpy(np.float64),
        asof["acc_rate"].to_numpy(np.float64),
        asof["avg_daily_trips"].to_numpy(np.float64),
    )
    p = np.where(np.isnan(logit), 0.5, _sigmoid(np.nan_to_num(logit)))
    offers[LABEL] = (rng.uniform(size=len(p)) < p).astype(np.int64)
    return offers


def generate(spec: DatasetSpec, data_dir: Path, *, force: bool = False) -> Dataset:
    """Write ``driver_stats.parquet`` and ``driver_labels.parquet``; reuse them when the
    manifest says the same spec (same end hour) made them."""
    data_dir.mkdir(parents=True, exist_ok=True)
    stats_path = data_dir / "driver_stats.parquet"
    labels_path = data_dir / "driver_labels.parquet"
    manifest_path = data_dir / "manifest.json"
    fingerprint = spec.fingerprint()
    if not force and stats_path.exists() and labels_path.exists() and manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") == fingerprint:
            return Dataset(
                stats_path,
                labels_path,
                spec.resolved_end(),
                manifest["drivers"],
                manifest["rows"],
                manifest["label_rows"],
                reused=True,
            )
    stats, drivers = driver_stats(spec)
    offers = labels(spec, stats)
    for frame, path in ((stats, stats_path), (offers, labels_path)):
        tmp = path.with_suffix(".tmp")
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)
    manifest = {
        "fingerprint": fingerprint,
        "spec": asdict(spec) | {"end": spec.resolved_end().isoformat()},
        "drivers": drivers,
        "rows": len(stats),
        "label_rows": len(offers),
        "label_logit": LABEL_COEF,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return Dataset(stats_path, labels_path, spec.resolved_end(), drivers, len(stats), len(offers))
