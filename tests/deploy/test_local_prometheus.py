"""A real Prometheus (Debian's) scraping the real Triton and gateway: targets up, data queried."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from deploy.local.prometheus import RULES_DIR, PrometheusServer, host_port
from deploy.local.redis import RedisServer
from deploy.local.triton import TritonServer
from deploy.validate.monitoring import dashboard_expressions, metric_names
from tests.fixtures_gateway import AUTH, StartGateway, v2_json_body

pytestmark = pytest.mark.integration
T = TypeVar("T")
DASHBOARD = (
    Path(__file__).resolve().parents[2] / "deploy/monitoring/grafana/dashboards/tritonstack.json"
)
P99 = "histogram_quantile(0.99, sum by (le) (rate(gateway_request_duration_seconds_bucket[1m])))"


def wait_for(check: Callable[[], T], done: Callable[[T], bool], timeout_s: float, what: str) -> T:
    """Call ``check`` until ``done`` accepts its result; fail with the last result seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = check()
        if done(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s:g} s; last seen: {seen!r}")
        time.sleep(0.25)


def _has_number(result: list[dict[str, Any]]) -> bool:
    """An instant vector with a finite sample (a rate over too few scrapes gives NaN)."""
    return bool(result) and result[0]["value"][1] not in ("NaN", "+Inf", "-Inf")


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory,
    triton: TritonServer,
    redis_server: RedisServer,
    start_gateway: StartGateway,
) -> Iterator[tuple[PrometheusServer, str]]:
    gateway = start_gateway(triton.grpc_url, redis_server.url)
    targets = {
        "triton": [host_port(triton.metrics_url)],
        "gateway": [host_port(gateway.metrics_url)],  # /metrics has its own port
    }
    server = PrometheusServer(
        tmp_path_factory.mktemp("prometheus"),
        targets,
        scrape_interval_s=1.0,
        rule_files=sorted(RULES_DIR.glob("*.rules.yml")),
    )
    try:
        with server:
            yield server, gateway.url
    finally:
        gateway.stop()


def test_prometheus_sees_both_targets_up_and_the_gateway_latency(
    prometheus: tuple[PrometheusServer, str],
) -> None:
    server, gateway_url = prometheus
    both_up = {"triton": ["up"], "gateway": ["up"]}
    health = wait_for(server.target_health, both_up.__eq__, 15, "triton and gateway up")
    assert health == {"triton": ["up"], "gateway": ["up"]}

    # traffic: inference through the gateway, each input fresh so the cache does not answer,
    # spread over several scrapes (a scrape of the metrics port is not itself a request, so
    # only this traffic moves the histogram: its first increments precede the first sample)
    sent = iter(range(2000, 3000))
    with httpx.Client(base_url=gateway_url, timeout=30) as client:

        def infer_then_query() -> list[dict[str, Any]]:
            r = client.post("/v2/models/minilm/infer", json=v2_json_body([101, next(sent), 102]),
                            headers=AUTH)  # fmt: skip
            assert r.status_code == 200, r.text
            return server.query(P99)

        p99 = wait_for(infer_then_query, _has_number, 15, "p99 of the gateway's histogram")
    value = float(p99[0]["value"][1])
    assert 0 < value <= 10, p99  # seconds, inside the histogram's buckets

    # Triton's own counters arrived too, labelled by model
    counts = wait_for(
        lambda: server.query('sum by (model) (nv_inference_request_success{job="triton"}) > 0'),
        bool,
        15,
        "Triton success counter",
    )
    assert {c["metric"]["model"] for c in counts} >= {"minilm"}

    # the alert rules of the Compose/Kubernetes set-up load and evaluate here
    groups = server.api("rules")["groups"]
    assert {g["name"] for g in groups} == {
        "tritonstack.gateway",
        "tritonstack.triton",
        "tritonstack.monitoring",
    }
    assert all(rule["health"] != "err" for g in groups for rule in g["rules"]), groups


def test_dashboard_triton_metrics_exist_on_the_real_server(
    prometheus: tuple[PrometheusServer, str],
) -> None:
    """The dashboard's nv_* names are Triton's own (GPU, response-cache and summary metrics
    appear only with a GPU, --cache-config or summary_latencies, off in this test server)."""
    server, _ = prometheus
    dashboard = json.loads(DASHBOARD.read_text())
    used = set().union(*map(metric_names, dashboard_expressions(dashboard).values()))
    optional = ("nv_gpu_", "nv_cache_", "_summary_us")
    expected = {n for n in used if n.startswith("nv_") and not any(o in n for o in optional)}
    assert len(expected) >= 6
    present = wait_for(
        lambda: set(server.api("label/__name__/values")),
        expected.issubset,
        10,
        "Triton metric names",
    )
    assert expected <= present
