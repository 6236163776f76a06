"""Feature-store fixtures: one small generated dataset per store, applied and materialized once
per session, for SQLite (embedded) and a real redis-server; the trained driver_ranker and a
Triton serving it. Registered as a plugin by tests/conftest.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from deploy.local import TritonRuntime, TritonServer
from features.data import Dataset, DatasetSpec, generate
from features.online import open_online_features
from features.repo import FEATURE_TTL
from features.schema import build_model_input
from features.settings import FeatureSettings
from features.train import TrainResult, train_and_export

if TYPE_CHECKING:
    from feast import FeatureStore

# Small on purpose: the point is the edge cases (see features.data cohorts), not volume.
SPEC = DatasetSpec(n_drivers=20, days=5, n_labels=3000, seed=11, end=datetime.now(UTC))


@dataclass
class FeatureEnv:
    """A Feast repository with data, applied and materialized up to ``materialized_at``."""

    kind: str
    settings: FeatureSettings
    store: FeatureStore
    dataset: Dataset
    materialized_at: datetime


def _feature_env(kind: str, base: Path, **settings: Any) -> FeatureEnv:
    from features.store import apply, materialize, open_store

    config = FeatureSettings(state_dir=base / "features", **settings)
    dataset = generate(SPEC, config.data_dir)
    store = open_store(config)
    apply(config, store)
    # The known time: the dataset's last hour. Each driver's online row is then its latest row
    # at or before it, within the TTL: the same instant the consistency test asks the offline
    # store about.
    at = dataset.end
    materialize(config, start=at - FEATURE_TTL, end=at, store=store)
    return FeatureEnv(kind, config, store, dataset, at)


@pytest.fixture(scope="session")
def sqlite_features(tmp_path_factory: pytest.TempPathFactory) -> FeatureEnv:
    return _feature_env("sqlite", tmp_path_factory.mktemp("feast-sqlite"))


@pytest.fixture(scope="session")
def redis_features(tmp_path_factory: pytest.TempPathFactory, redis_server: Any) -> FeatureEnv:
    return _feature_env("redis", tmp_path_factory.mktemp("feast-redis"), redis_url=redis_server.url)


@pytest.fixture(params=["sqlite", "redis"])
def feature_env(request: pytest.FixtureRequest) -> FeatureEnv:
    """Each test using it runs against both online stores."""
    env: FeatureEnv = request.getfixturevalue(f"{request.param}_features")
    return env


@pytest.fixture(scope="session")
def trained(sqlite_features: FeatureEnv, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    base = tmp_path_factory.mktemp("driver-ranker")
    return train_and_export(
        sqlite_features.settings,
        base / "model_repository",
        build_dir=base / "build",
        store=sqlite_features.store,
    )


@pytest.fixture(scope="session")
def ranker_triton(
    runtime: TritonRuntime, trained: TrainResult, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    assert trained.version_dir is not None
    repository = trained.version_dir.parent.parent
    server = TritonServer(
        runtime, repository, work_dir=tmp_path_factory.mktemp("triton-ranker"),
        startup_timeout_s=120,
    )  # fmt: skip
    with server:
        yield server


def online_model_input(env: FeatureEnv, ids: list[int]) -> np.ndarray:
    """The model input the serving path builds for ``ids`` from ``env``'s online store."""

    async def read() -> np.ndarray:
        async with open_online_features(env.settings) as reader:
            rows = await reader.read(ids)
        return build_model_input(rows, max_age_s=env.settings.max_age_s).array

    return asyncio.run(read())


def triton_scores(triton: TritonServer, features: np.ndarray) -> np.ndarray:
    """driver_ranker's ``score`` [n, 1] for a feature batch, straight from Triton over gRPC."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        tensor = grpcclient.InferInput("features", list(features.shape), "FP32")
        tensor.set_data_from_numpy(features)
        return np.asarray(client.infer("driver_ranker", [tensor]).as_numpy("score"))
    finally:
        client.close()
