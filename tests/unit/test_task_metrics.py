"""Budgets in the task's own terms: neighbour recall, rank correlation, AUC, and the corpus of
real sentences they are measured on (standard-library docstrings, offline, deterministic)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from export import corpus
from export.spec import EvalSet, Task
from export.status import Status
from export.task_metrics import (
    TaskBudgets,
    check_task,
    measure,
    recall_at_k,
    roc_auc,
    similarity_spearman,
)


def _embeddings(n: int = 200, dim: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_recall_is_one_for_the_same_neighbours_and_falls_with_noise() -> None:
    ref = _embeddings()
    assert recall_at_k(ref, ref) == 1.0
    assert recall_at_k(ref, 3.0 * ref) == 1.0  # cosine: scale does not matter
    rng = np.random.default_rng(1)
    slight = recall_at_k(ref, ref + 0.01 * rng.standard_normal(ref.shape))
    heavy = recall_at_k(ref, ref + 0.3 * rng.standard_normal(ref.shape))
    unrelated = recall_at_k(ref, _embeddings(seed=9))
    assert 1.0 >= slight > heavy > unrelated
    assert unrelated < 0.2  # chance level is 10 / 199


def test_recall_counts_shared_neighbours_exactly() -> None:
    """Four points on a line: each one's nearest neighbour (k=1) is known."""
    ref = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [-0.14, 0.99]])
    swapped = ref[[0, 2, 1, 3]]  # rows 1 and 2 trade places: half the neighbours change
    assert recall_at_k(ref, ref, k=1) == 1.0
    assert recall_at_k(ref, swapped, k=1) == 0.0
    assert recall_at_k(ref, ref[[1, 0, 3, 2]], k=1) == 1.0  # pairs kept together


def test_similarity_spearman_orders_pairs() -> None:
    ref = _embeddings(60)
    assert similarity_spearman(ref, ref) == pytest.approx(1.0)
    rng = np.random.default_rng(2)
    slight = similarity_spearman(ref, ref + 0.02 * rng.standard_normal(ref.shape))
    heavy = similarity_spearman(ref, ref + 0.2 * rng.standard_normal(ref.shape))
    assert 0.99 > slight > heavy > 0.0


def test_auc_matches_its_definition() -> None:
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75  # one pair out of order
    assert roc_auc(labels, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(labels, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5  # ties: average rank
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.zeros(3), np.ones(3))


def test_a_ranker_is_judged_by_its_auc_against_fp32() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    fp32 = labels + rng.standard_normal(500)  # informative scores
    close = measure(Task.REGRESSOR, fp32[:, None], (fp32 + 1e-4)[:, None], labels)
    assert close["auc_delta"] == pytest.approx(0.0) and close["auc"] == close["auc_fp32"]
    scrambled = rng.permutation(fp32)[:, None]
    shuffled = measure(Task.REGRESSOR, fp32[:, None], scrambled, labels)
    assert shuffled["auc_delta"] > 0.1
    evaluation = EvalSet("held-out", [{}] * 500, labels=labels)
    result = check_task(
        Task.REGRESSOR, fp32[:, None], scrambled, evaluation,
        TaskBudgets(), step="task_int8",
    )  # fmt: skip
    assert result.status is Status.FAILED
    assert f"auc_delta {shuffled['auc_delta']:.4f} exceeds 0.005" in result.reason
    assert result.metrics["budgets"] == {"auc_delta": 0.005}


def test_embeddings_outside_the_recall_budget_fail_with_the_figure() -> None:
    ref = _embeddings()
    noisy = ref + 0.3 * np.random.default_rng(4).standard_normal(ref.shape)
    evaluation = EvalSet("sentences", [{}] * len(ref))
    result = check_task(Task.EMBEDDING, ref, noisy, evaluation, TaskBudgets(), step="task_x")
    recall = result.metrics["recall_at_10"]
    assert result.status is Status.FAILED and recall < 0.95
    assert f"recall_at_10 {recall:.4f} is below 0.95" in result.reason
    same = check_task(Task.EMBEDDING, ref, ref, evaluation, TaskBudgets(), step="task_fp32")
    assert same.ok and same.metrics["recall_at_10"] == 1.0


def test_the_corpus_is_real_offline_and_deterministic() -> None:
    everything = corpus.sentences()
    assert len(everything) >= 1500  # evaluation (1,200) and calibration (128) are disjoint
    evaluation, calibration = corpus.take(1200), corpus.take(128, 1200)
    assert not set(evaluation) & set(calibration)
    # the order is a function of the texts alone (their SHA-256), so every run and machine
    # with the same Python gets the same slices, whatever order the files were parsed in
    digests = [hashlib.sha256(t.encode()).hexdigest() for t in everything]
    assert digests == sorted(digests) and len(set(everything)) == len(everything)
    assert corpus.fingerprint(evaluation) == corpus.fingerprint(list(everything[:1200]))
    for text in evaluation[:50]:
        assert corpus.MIN_WORDS <= len(text.split()) <= corpus.MAX_WORDS
        assert text[0].isalpha() and text[-1] in ".!?"
    with pytest.raises(corpus.CorpusError, match="sentences"):
        corpus.take(10, len(everything))
