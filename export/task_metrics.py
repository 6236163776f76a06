"""Step: each variant judged in the task's own terms, against fp32, on real inputs.

A min cosine against PyTorch says little about what users of an embedding model see; what they
see is which items come back as nearest neighbours. So next to the parity budgets
(``export/verify.py``) every variant is run on an evaluation set (``ModelSpec.evaluation``:
real inputs, e.g. 1,200 standard-library sentences for MiniLM, or the held-out offers of the
driver ranker) and compared with the fp32 export on the same rows:

- embeddings: **recall@10** (of each row's 10 nearest neighbours by cosine under fp32, the
  share the variant also ranks in its 10 nearest; averaged over rows) and the **Spearman rank
  correlation** of all pairwise cosine similarities (does the variant order pairs as fp32 does);
- classifiers: the share of rows whose top-1 class equals fp32's; with labels, accuracy within
  ``accuracy_delta`` of fp32's;
- regressors/rankers: with binary labels, **AUC** within ``auc_delta`` of fp32's AUC; without,
  the Spearman correlation of the scores with fp32's.

A variant outside a budget is FAILED with the figure, so it is never served.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata, spearmanr

from export.spec import EvalSet, Task
from export.status import Status, StepResult

K = 10


@dataclass(frozen=True)
class TaskBudgets:
    """Thresholds in the task's terms, each against the fp32 export on the evaluation set."""

    recall_at_10: float = 0.95  # embeddings: neighbour agreement (higher is better)
    spearman: float = 0.99  # embeddings: pairwise similarities; rankers without labels: scores
    auc_delta: float = 0.005  # rankers with binary labels: |AUC - AUC(fp32)|
    accuracy_delta: float = 0.01  # classifiers with labels: accuracy(fp32) - accuracy
    top1_agreement: float = 0.95  # classifiers: top-1 class equals fp32's

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.reshape(x.shape[0], -1).astype(np.float64)
    unit: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return unit


def neighbours(embeddings: np.ndarray, k: int = K) -> np.ndarray:
    """Each row's ``k`` nearest other rows by cosine similarity."""
    unit = _unit(embeddings)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def recall_at_k(reference: np.ndarray, got: np.ndarray, k: int = K) -> float:
    """Mean share of each row's ``k`` nearest neighbours under ``reference`` found by ``got``."""
    k = min(k, reference.shape[0] - 1)
    want, have = neighbours(reference, k), neighbours(got, k)
    return float(np.mean([len(set(w) & set(h)) / k for w, h in zip(want, have, strict=True)]))


def similarity_spearman(reference: np.ndarray, got: np.ndarray) -> float:
    """Spearman correlation of all pairwise cosine similarities (upper triangle)."""
    upper = np.triu_indices(reference.shape[0], 1)
    a, b = _unit(reference), _unit(got)
    return float(spearmanr((a @ a.T)[upper], (b @ b.T)[upper]).statistic)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties get average ranks)."""
    positive = np.asarray(labels).astype(bool).ravel()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both classes among the labels")
    ranks = rankdata(np.asarray(scores, dtype=np.float64).ravel())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _binary(labels: np.ndarray | None) -> bool:
    return labels is not None and set(np.unique(labels).tolist()) <= {0, 1}


def measure(
    task: Task, reference: np.ndarray, got: np.ndarray, labels: np.ndarray | None
) -> dict[str, float]:
    """The task metrics of ``got`` against fp32's ``reference`` (first output, row per input)."""
    if task is Task.EMBEDDING:
        return {
            "recall_at_10": recall_at_k(reference, got),
            "spearman": similarity_spearman(reference, got),
        }
    if task is Task.CLASSIFIER:
        want, have = reference.argmax(axis=-1), got.argmax(axis=-1)
        found = {"top1_agreement": float(np.mean(want == have))}
        if labels is not None:
            found["accuracy_fp32"] = float(np.mean(want == labels))
            found["accuracy"] = float(np.mean(have == labels))
            found["accuracy_delta"] = found["accuracy_fp32"] - found["accuracy"]
        return found
    scores, fp32 = got.reshape(len(got), -1)[:, 0], reference.reshape(len(reference), -1)[:, 0]
    if _binary(labels):
        assert labels is not None
        auc, auc_fp32 = roc_auc(labels, scores), roc_auc(labels, fp32)
        return {"auc": auc, "auc_fp32": auc_fp32, "auc_delta": abs(auc - auc_fp32)}
    return {"spearman": float(spearmanr(fp32, scores).statistic)}


def misses(metrics: dict[str, float], budgets: TaskBudgets) -> list[str]:
    """Each budget the metrics miss, in words (empty: within every budget)."""
    found = []
    for name, value in metrics.items():
        if name in ("recall_at_10", "spearman", "top1_agreement"):
            floor = getattr(budgets, name)
            if not value >= floor:
                found.append(f"{name} {value:.4f} is below {floor} (missed by {floor - value:.4f})")
        elif name in ("auc_delta", "accuracy_delta"):
            ceiling = getattr(budgets, name)
            if not value <= ceiling:
                found.append(f"{name} {value:.4f} exceeds {ceiling}")
    return found


def check_task(
    task: Task,
    reference: np.ndarray,
    got: np.ndarray,
    evaluation: EvalSet,
    budgets: TaskBudgets,
    *,
    step: str,
    started: float | None = None,
) -> StepResult:
    """The step record: metrics, the budgets they were held to, FAILED with every miss."""
    started = time.perf_counter() if started is None else started
    values = measure(task, reference, got, evaluation.labels)
    missed = misses(values, budgets)
    metrics: dict[str, Any] = {
        **values,
        "budgets": {k: v for k, v in budgets.as_dict().items() if k in values},
        "against": "fp32 export on the same rows",
        "evaluation": evaluation.description,
        "rows": len(evaluation.rows),
        "fingerprint": evaluation.fingerprint,
        "passed": not missed,
    }
    return StepResult(
        step,
        Status.FAILED if missed else Status.OK,
        "; ".join(missed),
        metrics=metrics,
        duration_s=time.perf_counter() - started,
    )
