"""Prometheus config and alert rules through promtool, the Grafana dashboard's structure and
PromQL; each check also shown failing on a broken copy."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.validate import monitoring
from deploy.validate.__main__ import known_metrics, prometheus_rule_problems
from tests.deploy.conftest import DEPLOY

PROMETHEUS = DEPLOY / "monitoring" / "prometheus"
DASHBOARD = DEPLOY / "monitoring" / "grafana" / "dashboards" / "tritonstack.json"
Edit = Callable[[str, str, str], Path]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_prometheus_config_and_rules_pass_promtool() -> None:
    assert monitoring.check_config(PROMETHEUS / "prometheus.yml") == []
    assert monitoring.check_rules(sorted((PROMETHEUS / "rules").glob("*.yml"))) == []


def test_alerts_fire_as_their_promtool_tests_expect() -> None:
    assert monitoring.run_rule_tests(PROMETHEUS / "tests" / "tritonstack.rules.test.yml") == []


def test_prometheus_rule_crd_carries_the_rules_file() -> None:
    assert prometheus_rule_problems() == []


def test_broken_config_fails_promtool(deploy_copy: Edit) -> None:
    root = deploy_copy(
        "monitoring/prometheus/prometheus.yml", "scrape_interval: 15s", "scrape_interval: 15x"
    )
    problems = monitoring.check_config(root / "monitoring" / "prometheus" / "prometheus.yml")
    assert problems and "15x" in problems[0], problems


def test_broken_rule_fails_promtool(deploy_copy: Edit) -> None:
    root = deploy_copy(
        "monitoring/prometheus/rules/tritonstack.rules.yml",
        'up{job="triton"} == 0',
        'up{job="triton" == 0',
    )
    problems = monitoring.check_config(root / "monitoring" / "prometheus" / "prometheus.yml")
    assert problems and "TritonDown" in problems[0] and "parse error" in problems[0], problems


def test_an_alert_that_no_longer_fires_fails_promtool_test(deploy_copy: Edit) -> None:
    """A threshold raised from 1% to 50% 5xx: the rule still parses, its unit test fails."""
    root = deploy_copy(
        "monitoring/prometheus/rules/tritonstack.rules.yml",
        "clamp_min(sum(rate(gateway_responses_total[5m])), 1e-9) > 0.01",
        "clamp_min(sum(rate(gateway_responses_total[5m])), 1e-9) > 0.5",
    )
    prometheus = root / "monitoring" / "prometheus"
    assert monitoring.check_config(prometheus / "prometheus.yml") == []
    problems = monitoring.run_rule_tests(prometheus / "tests" / "tritonstack.rules.test.yml")
    assert problems and "GatewayErrorRateHigh" in problems[0], problems


def test_crd_rules_differing_from_the_file_is_a_problem(
    deploy_copy: Edit, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deploy.validate.__main__ as main

    root = deploy_copy("monitoring/prometheusrule.yaml", "for: 10m", "for: 1m")
    monkeypatch.setattr(main, "DEPLOY", root)
    monkeypatch.setattr(main, "PROMETHEUS", root / "monitoring" / "prometheus")
    assert main.prometheus_rule_problems() == [
        "monitoring/prometheusrule.yaml: groups differ from prometheus/rules/"
    ]


# -- the dashboard -----------------------------------------------------------------------------
def test_dashboard_structure_and_metric_names(dashboard: dict[str, Any]) -> None:
    assert monitoring.dashboard_problems(dashboard, known_metrics()) == []


def test_every_dashboard_expression_parses(dashboard: dict[str, Any]) -> None:
    expressions = monitoring.dashboard_expressions(dashboard)
    assert len(expressions) >= 20
    assert monitoring.promql_problems(expressions) == []


def test_dashboard_shows_what_the_issue_asks_for(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(monitoring.dashboard_expressions(dashboard).values())
    for needed in (
        "gateway_request_duration_seconds_bucket",  # latency per model, p50/p95/p99
        "histogram_quantile(0.5,", "histogram_quantile(0.95,", "histogram_quantile(0.99,",
        "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
        "nv_inference_exec_count",  # batch size achieved = count / exec_count
        "gateway_cache_requests_total", "gateway_rate_limited_total",
        'status=~"4..|5.."', "nv_gpu_utilization", "nv_gpu_memory_used_bytes",
    ):  # fmt: skip
        assert needed in exprs, needed


def test_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    grafana = DEPLOY / "monitoring" / "grafana" / "provisioning"
    source = yaml.safe_load((grafana / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["type"] == "prometheus"
    provider = yaml.safe_load((grafana / "dashboards" / "tritonstack.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def _broken(dashboard: dict[str, Any], change: Callable[[list[dict[str, Any]]], None]) -> list[str]:
    broken = copy.deepcopy(dashboard)
    change(broken["panels"])
    return monitoring.dashboard_problems(broken, known_metrics()) + monitoring.promql_problems(
        monitoring.dashboard_expressions(broken)
    )


def _set(panel: int, key: str, value: Any) -> Callable[[list[dict[str, Any]]], None]:
    return lambda panels: panels[panel].__setitem__(key, value)


def _set_expr(expr: str) -> Callable[[list[dict[str, Any]]], None]:
    return lambda panels: panels[1]["targets"][0].__setitem__("expr", expr)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(_set(2, "id", 1), "id must be a unique integer", id="duplicate-id"),
        pytest.param(
            _set(1, "gridPos", {"x": 20, "y": 1, "w": 6, "h": 4}), "wider than 24", id="too-wide"
        ),
        pytest.param(
            _set(2, "gridPos", {"x": 0, "y": 1, "w": 6, "h": 4}), "overlaps", id="overlap"
        ),
        pytest.param(_set(1, "datasource", None), "datasource are required", id="no-datasource"),
        pytest.param(_set(1, "targets", []), "no targets", id="no-targets"),
        pytest.param(
            _set_expr("sum(rate(gateway_responses_total[5m])"), "parse error", id="promql"
        ),
        pytest.param(
            _set_expr("sum(rate(gateway_response_total[5m]))"),
            "unknown metrics ['gateway_response_total']",
            id="metric-typo",
        ),
    ],
)
def test_dashboard_checks_fail_on_a_broken_dashboard(
    dashboard: dict[str, Any], change: Callable[[list[dict[str, Any]]], None], expected: str
) -> None:
    problems = _broken(dashboard, change)
    assert any(expected in p for p in problems), problems
