"""The monitor: every ``interval_s``, drift and live accuracy of each model over the sliding
window, exported as Prometheus gauges (a scrape target of its own).

Gauges (label sets replaced whole at each evaluation, so a model that left the window leaves
the metrics too):

* ``tritonstack_drift_score{model, version, feature, method}`` and
  ``tritonstack_drift_threshold{...}``: the alert fires when a score passes its threshold
  (psi per feature and for the prediction, domain_classifier_auc for an embedding; mmd has no
  threshold: shown, never alerted on);
* ``tritonstack_drift_pvalue{..., method="ks"}``: the two-sample KS test's p-value;
* ``tritonstack_drift_rows{model, version, side}``: rows compared (current, reference);
* ``tritonstack_live_auc`` / ``tritonstack_live_logloss`` / ``tritonstack_live_labels`` /
  ``tritonstack_live_auc_floor`` ``{model, version}``;
* ``tritonstack_monitor_last_evaluation_timestamp_seconds``,
  ``tritonstack_monitor_errors_total{stage}``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitoring.accuracy import Accuracy, live_accuracy
from monitoring.drift import DriftResult, compare
from monitoring.errors import MonitoringError, NotEnoughData, ReferenceMissing
from monitoring.reference import load
from monitoring.settings import MonitorSettings
from monitoring.store import Store

log = logging.getLogger("monitoring.monitor")


@dataclass
class Evaluation:
    at: float = 0.0
    drift: list[DriftResult] = field(default_factory=list)
    accuracy: list[Accuracy] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # model/version -> why


def evaluate(settings: MonitorSettings, store: Store, now: datetime | None = None) -> Evaluation:
    """One round: drift of every model (and served version) with a reference, live accuracy."""
    now = now or datetime.now(UTC)
    start = now - timedelta(seconds=settings.window_s)
    found = Evaluation(at=now.timestamp())
    days = sorted({start.date(), now.date()})
    models = settings.models or sorted(store.models("inferences", days))
    for model in models:
        current = store.read("inferences", model, start, now)
        versions = sorted(set(current.column("version").to_pylist())) if current else []
        spec = None
        for version in versions:
            assert current is not None
            try:
                spec, reference = load(store, model, version)
                rows = current.filter(
                    current.column("version").to_numpy(zero_copy_only=False) == version
                )
                found.drift.append(
                    compare(spec, reference, rows, start=start, end=now, version=version,
                            settings=settings)
                )  # fmt: skip
            except (ReferenceMissing, NotEnoughData) as exc:
                found.skipped[f"{model}/{version}"] = str(exc)
        found.accuracy += live_accuracy(
            store, model, now, window_s=settings.window_s, delay_s=settings.feedback_delay_s,
            spec=spec,
        )  # fmt: skip
    return found


class MonitorCollector(Collector):
    """Yields the last evaluation's gauges (swapped whole: a scrape never sees half a round)."""

    def __init__(self, settings: MonitorSettings) -> None:
        self.settings = settings
        self.last = Evaluation()

    def collect(self) -> Iterator[Metric]:
        last, s = self.last, self.settings
        labels = ["model", "version", "feature", "method"]
        score = GaugeMetricFamily(
            "tritonstack_drift_score", "Drift score per feature", labels=labels
        )
        threshold = GaugeMetricFamily(
            "tritonstack_drift_threshold", "Score past which the feature drifted", labels=labels
        )
        pvalue = GaugeMetricFamily(
            "tritonstack_drift_pvalue", "Two-sample test p-value per feature (low: differs)",
            labels=labels,
        )  # fmt: skip
        rows = GaugeMetricFamily(
            "tritonstack_drift_rows", "Rows compared", labels=["model", "version", "side"]
        )
        for result in last.drift:
            for sc in result.scores:
                key = [result.model, result.version, sc.feature, sc.method]
                if sc.method == "ks":  # lower is more different: not a score
                    pvalue.add_metric(key, sc.value)
                    continue
                score.add_metric(key, sc.value)
                if not math.isnan(sc.threshold):
                    threshold.add_metric(key, sc.threshold)
            rows.add_metric([result.model, result.version, "current"], result.current_rows)
            rows.add_metric([result.model, result.version, "reference"], result.reference_rows)
        yield from (score, threshold, pvalue, rows)
        mv = ["model", "version"]
        auc = GaugeMetricFamily(
            "tritonstack_live_auc", "ROC AUC of answers with feedback", labels=mv
        )
        loss = GaugeMetricFamily("tritonstack_live_logloss", "Log-loss of answers with feedback",
                                 labels=mv)  # fmt: skip
        count = GaugeMetricFamily("tritonstack_live_labels", "Answers with feedback in the window",
                                  labels=mv)  # fmt: skip
        floor = GaugeMetricFamily("tritonstack_live_auc_floor", "Live AUC under this alerts",
                                  labels=mv)  # fmt: skip
        for acc in last.accuracy:
            if acc.auc is not None:
                auc.add_metric([acc.model, acc.version], acc.auc)
                floor.add_metric([acc.model, acc.version], s.live_auc_floor)
            loss.add_metric([acc.model, acc.version], acc.logloss)
            count.add_metric([acc.model, acc.version], acc.labels)
        yield from (auc, loss, count, floor)
        stamp = GaugeMetricFamily(
            "tritonstack_monitor_last_evaluation_timestamp_seconds", "When the last round ended"
        )
        stamp.add_metric([], last.at)
        yield stamp


class Monitor:
    def __init__(
        self, settings: MonitorSettings, store: Store, registry: CollectorRegistry
    ) -> None:
        self.settings = settings
        self.store = store
        self.collector = MonitorCollector(settings)
        registry.register(self.collector)
        self.errors = Counter(
            "tritonstack_monitor_errors_total", "Failed evaluations", ["stage"], registry=registry
        )

    def once(self) -> Evaluation:
        started = time.perf_counter()
        evaluation = evaluate(self.settings, self.store)
        self.collector.last = evaluation
        log.info(
            "evaluated %d model versions (%d skipped) in %.1f s", len(evaluation.drift),
            len(evaluation.skipped), time.perf_counter() - started,
        )  # fmt: skip
        return evaluation

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.once()
            except (MonitoringError, OSError, ValueError) as exc:
                self.errors.labels(stage="evaluate").inc()
                log.warning("evaluation failed: %s", exc)
            stop.wait(self.settings.interval_s)
