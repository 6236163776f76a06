"""driver_ranker: a small MLP scoring how likely a driver accepts a ride, from online features.

Input ``features`` FP32 ``[batch, k]`` in the order of ``features.schema.MODEL_FEATURES`` (the
caller passes the names: ``export`` does not import ``features``); output ``score`` FP32
``[batch, 1]``, a probability. Feature scaling (the training set's mean and std) is inside
the module, so the served graph takes raw feature values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from export.spec import EvalSet, ModelSpec, SampleFn, TensorSpec

NAME = "driver_ranker"


class DriverRanker(torch.nn.Module):
    """Standardise, two hidden ReLU layers, sigmoid."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_features: int, hidden: int = 16) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_features, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, 1),
        )

    def set_scaling(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(np.maximum(std, 1e-6), dtype=torch.float32))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net((features - self.mean) / self.std)
        return logits

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(features))


def feature_sampler(feature_names: Sequence[str]) -> SampleFn:
    """Plausible raw feature rows: rates in [0, 1], counts 0..30 (as float32)."""

    def sample(rng: np.random.Generator, batch: int, length: int) -> dict[str, np.ndarray]:
        del length  # no sequence axis
        columns = [
            rng.integers(0, 31, batch).astype(np.float32)
            if "trips" in name
            else rng.uniform(0, 1, batch).astype(np.float32)
            for name in feature_names
        ]
        return {"features": np.stack(columns, axis=1)}

    return sample


def feature_rows(x: np.ndarray, labels: np.ndarray | None, description: str) -> EvalSet:
    """Feature rows (raw values, model order) as an evaluation or calibration set."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return EvalSet(
        description,
        [{"features": x[i : i + 1]} for i in range(len(x))],
        labels=labels,
        fingerprint=hashlib.sha256(x.tobytes()).hexdigest()[:16],
    )


def load(module: DriverRanker | None, feature_names: Sequence[str]) -> ModelSpec:
    """The export spec; ``module`` None gives an untrained one (config generation, tests)."""
    k = len(feature_names)
    if module is None:
        module = DriverRanker(k)
    module.eval()
    return ModelSpec(
        name=NAME,
        module=module,
        inputs=[TensorSpec("features", "float32", (k,))],
        outputs=[TensorSpec("score", "float32", (1,))],
        sample_inputs=feature_sampler(feature_names),
        parameters={"feature_names": ",".join(feature_names)},
        description=f"driver acceptance probability from {', '.join(feature_names)}",
    )
