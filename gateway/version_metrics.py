"""The gateway's metrics with a model version label: requests, errors and latency per version,
shadow comparisons, the route table in use (on the gateway's own registry)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.traffic import ModelRoute

# as gateway.metrics': 1 ms to 10 s
_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25,
            0.5, 1.0, 2.5, 5.0, 10.0)  # fmt: skip
_MAX_CHILDREN = 1000  # label values are model names and versions Triton serves: bounded


class VersionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gateway_version_requests_total",
            "Inference requests per model and the version that answered; outcome error: the "
            "upstream failed it (5xx)",
            ["model", "version", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "gateway_version_duration_seconds",
            "Time of a request's upstream part (Triton and the answer's encoding) per version",
            ["model", "version"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.shadow = Counter(
            "gateway_shadow_comparisons_total",
            "Shadow copies per model and shadow version: within or outside the accuracy budget "
            "of the rollout, error (the shadow call failed), dropped (the queue was full)",
            ["model", "version", "outcome"],
            registry=registry,
        )
        self.revision = Gauge(
            "gateway_route_table_revision",
            "The revision of the route table in use",
            registry=registry,
        )
        self._children: dict[tuple[str, str, bool], tuple[Any, Any]] = {}

    def observe(self, model: str, version: str, ok: bool, seconds: float) -> None:
        children = self._children.get((model, version, ok))
        if children is None:  # labels() resolved once per label set
            children = (
                self.requests.labels(model, version, "ok" if ok else "error"),
                self.latency.labels(model, version),
            )
            if len(self._children) < _MAX_CHILDREN:
                self._children[(model, version, ok)] = children
        children[0].inc()
        children[1].observe(seconds)

    def shadow_outcome(self, route: ModelRoute, outcome: str) -> None:
        version = route.shadow.version if route.shadow is not None else ""
        self.shadow.labels(route.model, version, outcome).inc()
