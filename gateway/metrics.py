"""Prometheus metrics of one gateway process (its own registry: several apps per test process)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.version_metrics import VersionMetrics

# Latency buckets from 1 ms to 10 s: model calls here take milliseconds, deadlines seconds.
_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_latency = Histogram(
            "gateway_request_duration_seconds",
            "Time from request to response, per route template, model and status",
            ["route", "model", "status"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "gateway_upstream_duration_seconds",
            "Time of each Triton inference call, per model and outcome",
            ["model", "outcome"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.responses = Counter(
            "gateway_responses_total",
            "Responses per route and status",
            ["route", "status"],
            registry=r,
        )
        self.cache = Counter(
            "gateway_cache_requests_total",
            "Response cache lookups per layer and result",
            ["layer", "result"],
            registry=r,
        )
        self.rate_limited = Counter(
            "gateway_rate_limited_total",
            "Requests refused by the rate limiter",
            ["tenant"],
            registry=r,
        )
        self.auth_failures = Counter(
            "gateway_auth_failures_total", "Refused credentials", ["reason"], registry=r
        )
        self.upstream_rejected = Counter(
            "gateway_upstream_rejected_total",
            "Requests answered without calling Triton (circuit open, overloaded)",
            ["reason"],
            registry=r,
        )
        self.redis_errors = Counter(
            "gateway_redis_errors_total", "Redis failures per use", ["use"], registry=r
        )
        self.inflight = Gauge("gateway_requests_in_flight", "Requests being served", registry=r)
        self.versions = VersionMetrics(r)  # per model version: gateway/rollouts.py records them

        # labelled children, resolved once per label set (labels() costs a lock and a lookup)
        self._per_request: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._cache_children: dict[tuple[str, str], Any] = {}

    def observe(self, route: str, model: str, status: int, started: float) -> None:
        """One request's latency (since ``started``, perf_counter) and its response."""
        children = self._per_request.get((route, model, status))
        if children is None:
            code = str(status)
            children = (
                self.request_latency.labels(route, model, code),
                self.responses.labels(route, code),
            )
            if len(self._per_request) < 10_000:  # label values are bounded; this map too
                self._per_request[(route, model, status)] = children
        children[0].observe(time.perf_counter() - started)
        children[1].inc()

    def cache_result(self, layer: str, result: str) -> None:
        child = self._cache_children.get((layer, result))
        if child is None:
            child = self._cache_children[(layer, result)] = self.cache.labels(
                layer=layer, result=result
            )
        child.inc()
