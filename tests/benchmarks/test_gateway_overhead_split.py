"""Where a gateway request's time goes: the split read from the gateway's own counters."""

from __future__ import annotations

from prometheus_client import generate_latest

from benchmarks.gateway_overhead import durations_from_text, split_time
from gateway.metrics import Metrics


def test_split_reads_the_gateways_counters_and_leaves_out_routes_without_a_model() -> None:
    metrics = Metrics()
    before = durations_from_text(generate_latest(metrics.registry).decode())
    assert before == {"request_sum": 0, "request_count": 0, "upstream_sum": 0, "upstream_count": 0}
    for _ in range(4):
        metrics.request_latency.labels("/v2/models/{model_name}/infer", "minilm", "200").observe(
            0.010
        )
        metrics.upstream_latency.labels("minilm", "ok").observe(0.008)
    metrics.request_latency.labels("/healthz", "", "200").observe(5.0)  # not a model route
    after = durations_from_text(generate_latest(metrics.registry).decode())
    assert after["request_count"] == 4 and after["upstream_count"] == 4

    split = split_time(before, after, client_ms=12.5)
    assert split == {
        "client_mean_ms": 12.5,
        "gateway_server_ms": 10.0,
        "upstream_ms": 8.0,
        "gateway_own_ms": 2.0,
        "http_and_client_ms": 2.5,
    }


def test_a_cache_hit_point_has_no_upstream_time() -> None:
    metrics = Metrics()
    before = durations_from_text(generate_latest(metrics.registry).decode())
    for _ in range(4):
        metrics.request_latency.labels("/v2/models/{model_name}/infer", "minilm", "200").observe(
            0.001
        )
    after = durations_from_text(generate_latest(metrics.registry).decode())
    assert split_time(before, after, 1.5)["upstream_ms"] == 0.0

    # one miss among them: its upstream time is spread over the point's requests
    metrics.upstream_latency.labels("minilm", "ok").observe(0.008)
    after = durations_from_text(generate_latest(metrics.registry).decode())
    split = split_time(before, after, 1.5)
    assert split["upstream_ms"] == 2.0 and split["gateway_own_ms"] == -1.0
