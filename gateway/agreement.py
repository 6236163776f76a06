"""How far a shadow version's answer is from the primary's, in the model's task metric.

The rollout controller reads the metric and its budget from the two versions' export reports
and puts them into the route table (``gateway.traffic.Shadow``): ``cosine`` for embeddings
(each row's cosine similarity, at least the budget), ``top1`` for classifiers (each row's
arg-max equal: 1 or 0; the share of agreeing rows at least the budget) and ``rel_l2`` for
regressors and rankers (each row's relative L2 distance, at most the budget). Every
floating-point output both answers carry is compared row by row (the batch dimension first);
a row's figure is its worst output's.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from gateway.traffic import Metric

_TINY = 1e-12


def _rows(array: np.ndarray, batched: bool) -> np.ndarray:
    data = np.asarray(array, dtype=np.float64)
    if not batched or data.ndim == 0:
        return data.reshape(1, -1)
    return data.reshape(data.shape[0], -1)


def row_agreement(metric: Metric, primary: np.ndarray, shadow: np.ndarray) -> np.ndarray:
    """One figure per row of two same-shaped [rows, features] arrays."""
    if metric == "cosine":
        dot = np.einsum("ij,ij->i", primary, shadow)
        norms = np.linalg.norm(primary, axis=1) * np.linalg.norm(shadow, axis=1)
        return np.asarray(dot / np.maximum(norms, _TINY))
    if metric == "top1":
        return np.asarray(np.argmax(primary, axis=1) == np.argmax(shadow, axis=1), dtype=float)
    distance = np.linalg.norm(shadow - primary, axis=1)
    return np.asarray(distance / np.maximum(np.linalg.norm(primary, axis=1), _TINY))


def worse(metric: Metric, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The worse of two per-row figures (rel_l2: the larger; the others: the smaller)."""
    return np.asarray(np.maximum(a, b) if metric == "rel_l2" else np.minimum(a, b))


def within(metric: Metric, figures: np.ndarray, budget: float) -> np.ndarray:
    """Which rows meet the budget (top1 rows are judged together: see ``passes``)."""
    if metric == "rel_l2":
        return np.asarray(figures <= budget)
    if metric == "top1":
        return np.asarray(figures >= 1.0)
    return np.asarray(figures >= budget)


def compare(
    metric: Metric,
    primary: Mapping[str, np.ndarray],
    shadow: Mapping[str, np.ndarray],
    *,
    batched: bool,
) -> np.ndarray | None:
    """Per-row figures over every floating-point output both carry, or None when there is
    nothing to compare (no such output, or shapes that differ: counted as a disagreement by
    the caller)."""
    result: np.ndarray | None = None
    for name, ours in primary.items():
        theirs = shadow.get(name)
        if theirs is None or ours.dtype.kind != "f":
            continue
        if theirs.shape != ours.shape:
            return None
        figures = row_agreement(metric, _rows(ours, batched), _rows(theirs, batched))
        result = figures if result is None else worse(metric, result, figures)
    return result


def passes(
    metric: Metric, budget: float, compared: int, rows_within: int, min_within: float
) -> bool:
    """A shadow step's verdict: top1 needs the share of agreeing rows >= budget; cosine and
    rel_l2 need the share of rows within the budget >= ``min_within``."""
    if compared <= 0:
        return False
    share = rows_within / compared
    return share >= (budget if metric == "top1" else min_within)
