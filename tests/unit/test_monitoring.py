"""Monitoring without servers: the capture record, sampling, Arrow rows, the store's parts,
references, Evidently drift on synthetic data, live accuracy, the gauges and the report."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from features.train import log_loss, roc_auc
from gateway.capture import (
    CaptureRecord,
    FeedbackRecord,
    RecordError,
    Sampler,
    Tensor,
    decode,
    index_value,
    parse_index_value,
    text_hash,
    text_tensors,
)
from gateway.capturing import embeddings_record, new_request_id, score_record, tensors_record
from monitoring import reference, report
from monitoring.accuracy import live_accuracy
from monitoring.drift import compare
from monitoring.exporter import Monitor, evaluate
from monitoring.settings import MonitorSettings
from monitoring.store import Store, id_key
from monitoring.tables import feedback_table, inference_table

RNG = np.random.default_rng(0)
NOW = datetime.now(UTC)


def ranker_record(i: int, features: np.ndarray, scores: np.ndarray, t: float) -> CaptureRecord:
    n = len(features)
    return CaptureRecord(
        f"req-{i}", t, "alpha", "driver_ranker", "1", "/v1/score", 1.25, n,
        (Tensor("features", "input", features.astype(np.float32)),
         Tensor("score", "output", scores.reshape(n, 1).astype(np.float32))),
        entity_ids=tuple(range(1000, 1000 + n)),
    )  # fmt: skip


def test_a_record_round_trips_through_its_stream_entry() -> None:
    vectors = RNG.random((2, 384), dtype=np.float32)
    record = CaptureRecord(
        "abc", 1.5, "alpha", "minilm", "3", "/v1/embeddings", 2.0, 2,
        (*text_tensors(["hello", "wörld"], np.array([3, 4]), keep_text=False),
         Tensor("sentence_embedding", "output", vectors)),
        cache="hit",
    )  # fmt: skip
    back = decode(record.fields())
    assert isinstance(back, CaptureRecord)
    assert (back.request_id, back.model, back.version, back.items, back.cache) == (
        "abc", "minilm", "3", 2, "hit"
    )  # fmt: skip
    named = {t.name: t for t in back.tensors}
    assert named["text_sha"].array == [text_hash("hello"), text_hash("wörld")]
    assert "text" not in named  # text stays in the gateway unless asked for
    np.testing.assert_array_equal(named["sentence_embedding"].array, vectors)
    np.testing.assert_array_equal(named["token_count"].array, [3, 4])
    kept = text_tensors(["hello"], None, keep_text=True)
    assert [t.name for t in kept] == ["text_sha", "text_chars", "text"]
    feedback = decode(FeedbackRecord("abc", 2.0, "alpha", "m", "1", 1, 1.0).fields())
    assert feedback == FeedbackRecord("abc", 2.0, "alpha", "m", "1", 1, 1.0)
    for bad in ({}, {b"h": b"{"}, {b"h": b'{"kind": "x", "id": 1, "t": 1, "tenant": "a", '
                                            b'"model": "m", "version": "1"}'}):  # fmt: skip
        with pytest.raises(RecordError):
            decode(bad)
    ranker = ranker_record(0, np.ones((2, 3)), np.ones(2), 1.0)
    assert parse_index_value(index_value(ranker)) == (
        "alpha",
        "driver_ranker",
        "1",
        2,
        [1000, 1001],
    )


def test_sampling_follows_the_most_specific_rate() -> None:
    sampler = Sampler({"*": 0.0, "minilm": 0.25, "alpha/*": 1.0, "beta/minilm": 1.0},
                      random.Random(1))  # fmt: skip
    assert sampler.rate("alpha", "driver_ranker") == 1.0
    assert sampler.rate("beta", "minilm") == 1.0
    assert sampler.rate("gamma", "minilm") == 0.25
    assert sampler.rate("gamma", "other") == 0.0
    share = sum(sampler.sampled("gamma", "minilm") for _ in range(20_000)) / 20_000
    assert 0.23 < share < 0.27
    assert not any(sampler.sampled("gamma", "other") for _ in range(1000))
    assert Sampler({}).rate("a", "b") == 0.0
    with pytest.raises(ValueError, match="within"):
        Sampler({"*": 1.5})


def test_rows_are_items_with_scalar_and_list_columns() -> None:
    a = ranker_record(0, RNG.random((3, 3)), RNG.random(3), NOW.timestamp())
    b = CaptureRecord("req-1", NOW.timestamp(), "beta", "driver_ranker", "1", "/v2", 1.0, 1,
                      (Tensor("features", "input", np.ones((1, 3), np.float32)),))  # fmt: skip
    table = inference_table([("1-0", a), ("1-1", b)])
    assert table.num_rows == 4
    assert table.column("item").to_pylist() == [0, 1, 2, 0]
    assert table.column("entity_id").to_pylist() == [1000, 1001, 1002, None]
    assert pa.types.is_list(table.column("in.features").type)
    assert table.column("out.score").to_pylist()[3] is None  # b had no output
    assert table.column("out.score").type == pa.float32()
    fb = feedback_table([("2-0", FeedbackRecord("req-0", 1.0, "alpha", "m", "1", 2, 1.0))])
    assert fb.column("item").to_pylist() == [2]


def test_parts_are_named_by_stream_ids_and_read_by_window(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))
    day = NOW.strftime("%Y-%m-%d")
    folder = store.partition("inferences", day, "driver_ranker", "1")
    ms = int(NOW.timestamp() * 1000)
    old = ranker_record(0, RNG.random((2, 3)), RNG.random(2), NOW.timestamp() - 7200)
    new = ranker_record(1, RNG.random((2, 3)), RNG.random(2), NOW.timestamp())
    path = store.write_part(folder, inference_table([(f"{ms}-0", old), (f"{ms}-1", new)]),
                            f"{ms}-0", f"{ms}-1")  # fmt: skip
    assert path.endswith(f"part-{ms}-0_{ms}-1.parquet")
    assert not list(Path(folder).glob(".tmp-*"))  # durable: the temporary name is gone
    assert store.written_ids(folder, f"{ms}-1", f"{ms + 5}-0") == {f"{ms}-0", f"{ms}-1"}
    assert store.written_ids(folder, f"{ms + 1}-0", f"{ms + 5}-0") == set()
    window = store.read("inferences", "driver_ranker", NOW - timedelta(hours=1), NOW)
    assert window is not None and set(window.column("request_id").to_pylist()) == {"req-1"}
    assert window.column("version").to_pylist() == ["1", "1"]
    assert store.models("inferences", [NOW.date()]) == {"driver_ranker"}
    assert id_key("12-3") < id_key("12-10") < id_key("13-0")
    memory = Store("memory://tritonstack-test-store")  # any fsspec URL
    memory.write_part(
        memory.partition("feedback", day, "m", "1"), pa.table({"x": [1]}), "1-0", "1-0"
    )
    assert [p.first for p in memory.parts(memory.partition("feedback", day, "m", "1"))] == ["1-0"]


def _write(store: Store, records: list[CaptureRecord], base_ms: int) -> None:
    by_version: dict[str, list[tuple[str, CaptureRecord]]] = {}
    for i, r in enumerate(records):
        by_version.setdefault(r.version, []).append((f"{base_ms}-{i}", r))
    for version, items in by_version.items():
        folder = store.partition("inferences", NOW.strftime("%Y-%m-%d"), records[0].model, version)
        store.write_part(folder, inference_table(items), items[0][0], items[-1][0])


def ranker_traffic(n: int, shift: float = 0.0, start: int = 0) -> list[CaptureRecord]:
    records = []
    for i in range(n):
        x = np.column_stack([np.clip(RNG.beta(2, 2, 4) + shift, 0, 1), RNG.beta(3, 2, 4),
                             RNG.poisson(12, 4)])  # fmt: skip
        records.append(ranker_record(start + i, x, 1 / (1 + np.exp(-4 * (x[:, 0] - 0.5))),
                                     NOW.timestamp() - 60))  # fmt: skip
    return records


@pytest.fixture(scope="module")
def drift_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A reference from a 'good' window of ranker captures and a same-distribution window."""
    store = Store(str(tmp_path_factory.mktemp("drift") / "store"))
    _write(store, ranker_traffic(400), int(NOW.timestamp() * 1000) - 5000)
    spec, table = reference.from_captures(store, "driver_ranker", None, NOW - timedelta(hours=1),
                                          NOW)  # fmt: skip
    assert spec.tabular == {f"features[{i}]": ("in.features", i) for i in range(3)}
    assert spec.prediction == ("out.score", 0)
    reference.save(store, spec, table)
    return store


def test_drift_is_quiet_on_the_reference_distribution_and_loud_on_a_shift(
    drift_store: Store,
) -> None:
    settings = MonitorSettings(min_rows=100)
    spec, ref = reference.load(drift_store, "driver_ranker", "7")  # falls back to version 1
    same = inference_table([(f"9-{i}", r) for i, r in enumerate(ranker_traffic(300, 0.0))])
    shifted = inference_table([(f"9-{i}", r) for i, r in enumerate(ranker_traffic(300, 0.25))])
    quiet = compare(spec, ref, same, start=NOW, end=NOW, version="1", settings=settings)
    loud = compare(spec, ref, shifted, start=NOW, end=NOW, version="1", settings=settings)
    psi = {s.feature: s.value for s in loud.scores if s.method == "psi"}
    assert not quiet.drifted, quiet.scores
    assert loud.drifted and psi["features[0]"] > 0.2 and psi["prediction"] > 0.2
    assert psi["features[1]"] < 0.2  # the unshifted features stay below
    ks = {s.feature: s for s in loud.scores if s.method == "ks"}
    assert ks["features[0]"].drifted and ks["features[0]"].value < 1e-6


def test_embedding_drift_separates_another_topic() -> None:
    settings = MonitorSettings(min_rows=50, sample_rows=300)
    center = RNG.normal(size=32)
    topic = lambda c, n: c + RNG.normal(scale=0.6, size=(n, 32))  # noqa: E731
    spec = reference.Spec("minilm", "1", "captures", embedding="out.sentence_embedding")

    def table(x: np.ndarray) -> pa.Table:  # fmt: skip
        return reference.reference_table(spec, pd.DataFrame(index=range(len(x))), x)

    ref = table(topic(center, 400))
    quiet = compare(spec, ref, table(topic(center, 300)), start=NOW, end=NOW, version="1",
                    settings=settings)  # fmt: skip
    loud = compare(spec, ref, table(topic(center + 0.8, 300)), start=NOW, end=NOW, version="1",
                   settings=settings)  # fmt: skip
    auc = lambda r: next(s.value for s in r.scores if s.method == "domain_classifier_auc")  # noqa: E731
    assert auc(quiet) < settings.embedding_auc_threshold < auc(loud)
    assert not quiet.drifted and loud.drifted


def test_live_accuracy_joins_feedback_to_its_answers(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))
    records = ranker_traffic(200)
    _write(store, records, int(NOW.timestamp() * 1000) - 5000)
    labels, scores, feedback = [], [], []
    ms = int(NOW.timestamp() * 1000) - 1000

    def report_of(request: str, seq: int, age_s: float, outcome: float) -> None:
        record = FeedbackRecord(request, NOW.timestamp() - age_s, "alpha", "driver_ranker", "1",
                                2, outcome)  # fmt: skip
        feedback.append((f"{ms}-{seq}", record))

    for i, r in enumerate(records):
        score = float(np.asarray(r.tensors[1].array)[2, 0])  # feedback names item 2
        label = int(RNG.random() < score)
        if i % 10 == 0:  # reported twice: the last report counts
            report_of(r.request_id, 2 * i, 30, 1.0 - label)
        report_of(r.request_id, 2 * i + 1, 20, float(label))
        labels.append(label)
        scores.append(score)
    folder = store.partition("feedback", NOW.strftime("%Y-%m-%d"), "driver_ranker", "1")
    store.write_part(folder, feedback_table(feedback), feedback[0][0], feedback[-1][0])
    (found,) = live_accuracy(store, "driver_ranker", NOW, window_s=600, delay_s=600)
    assert found.labels == 200 and found.positives == sum(labels)
    assert found.auc == pytest.approx(roc_auc(np.array(labels), np.array(scores)), abs=1e-6)
    assert found.logloss == pytest.approx(log_loss(np.array(labels), np.array(scores)), rel=1e-5)
    assert live_accuracy(store, "driver_ranker", NOW + timedelta(hours=2), window_s=600,
                         delay_s=600) == []  # fmt: skip


def test_the_monitor_exports_scores_thresholds_and_writes_a_report(
    drift_store: Store, tmp_path: Path
) -> None:
    settings = MonitorSettings(min_rows=100, store_url=drift_store.url)
    registry = CollectorRegistry()
    monitor = Monitor(settings, drift_store, registry)
    evaluation = monitor.once()
    assert [(r.model, r.version) for r in evaluation.drift] == [("driver_ranker", "1")]
    text = generate_latest(registry).decode()
    assert (
        'tritonstack_drift_score{feature="features[0]",method="psi",model="driver_ranker"' in text
    )
    assert 'tritonstack_drift_threshold{feature="prediction",method="psi"' in text
    assert 'tritonstack_drift_pvalue{feature="features[0]",method="ks"' in text
    assert (
        "tritonstack_drift_threshold{" in text
        and 'method="ks"' not in text.split("tritonstack_drift_threshold")[2]
    )
    result = evaluation.drift[0]
    index = report.write(result, [], tmp_path / "report")
    for name in ("index.html", "evidently.html", "features.png", "drift.json", "drift.prom"):
        assert (tmp_path / "report" / name).stat().st_size > 0, name
    assert "no drift" in index.read_text()
    assert evaluate(settings.model_copy(update={"models": ["nothing"]}), drift_store).drift == []


def test_the_routes_records_and_answers_without_outputs() -> None:
    """The builders of gateway.capturing, and captures of cache hits (no outputs) compared on
    the columns they have."""
    started = time.perf_counter()
    scored = score_record("a", "alpha", "driver_ranker", "2", started=started, cache="miss",
                          features=np.ones((3, 3)), scores=np.array([0.1, 0.2, 0.3]),
                          entity_ids=[5, 6, 7])  # fmt: skip
    assert scored.items == 3 and scored.entity_ids == (5, 6, 7) and scored.latency_ms >= 0
    assert [t.name for t in scored.tensors] == ["features", "score"]
    texts = embeddings_record("b", "alpha", "minilm", "1", started=started, cache="hit",
                              texts=["x", "yy"], vectors=None, token_counts=None,
                              keep_text=False)  # fmt: skip
    assert [t.name for t in texts.tensors] == ["text_sha", "text_chars"]
    v2 = tensors_record(
        "c", "alpha", "minilm_text", "1", started=started, cache="miss", items=2,
        inputs={"text": np.array([b"a", b"bb"], dtype=np.object_).reshape(2, 1)},
        outputs={"sentence_embedding": np.zeros((2, 4), np.float32),
                 "token_count": np.array([[3], [4]], np.int32)},
        keep_text=True, route="/v2",
    )  # fmt: skip
    assert [t.name for t in v2.tensors] == [
        "text_sha",
        "text_chars",
        "text",
        "sentence_embedding",
        "token_count",
    ]
    assert len(new_request_id()) == 32 and new_request_id() != new_request_id()
    hits = [ranker_record(i, RNG.random((2, 3)), RNG.random(2), NOW.timestamp()) for i in range(60)]
    for record in hits[::2]:  # answered from the cache: inputs only
        record.tensors = record.tensors[:1]
    table = inference_table([(f"5-{i}", r) for i, r in enumerate(hits)])
    columns = {"f0": ("in.features", 0)}
    spec = reference.Spec("driver_ranker", "1", "captures", columns, ("out.score", 0))
    tab, _ = reference.frame(table, spec)
    assert len(tab) == 120 and tab["prediction"].notna().sum() == 60
