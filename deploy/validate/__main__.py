"""``python -m deploy.validate``: every offline check of ``deploy/``; exit 1 on any problem."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from deploy.validate import compose, manifests, monitoring
from gateway.capture_writer import CaptureMetrics
from gateway.metrics import Metrics
from monitoring.exporter import Monitor
from monitoring.settings import MonitorSettings
from monitoring.sink import SinkMetrics
from monitoring.store import Store

DEPLOY = Path(__file__).resolve().parents[1]
OVERLAYS = sorted(p.parent for p in (DEPLOY / "k8s" / "overlays").glob("*/kustomization.yaml"))
JOBS = sorted(p.parent for p in (DEPLOY / "k8s" / "jobs").glob("*/kustomization.yaml"))
PROMETHEUS = DEPLOY / "monitoring" / "prometheus"
DASHBOARDS = sorted((DEPLOY / "monitoring" / "grafana" / "dashboards").glob("*.json"))


def registry_names(registry: CollectorRegistry) -> set[str]:
    """The metric names a registry exposes (counters with their ``_total``)."""
    return {
        f"{metric.name}_total" if metric.type == "counter" else metric.name
        for metric in registry.collect()
    }


def gateway_metric_names() -> set[str]:
    """The metric names a gateway process registers (from its own registry)."""
    registry = Metrics().registry
    CaptureMetrics(registry)
    return registry_names(registry)


def monitoring_metric_names() -> set[str]:
    """The capture sink's and the monitor's metric names (their own registries)."""
    registry = CollectorRegistry()
    SinkMetrics(registry)
    Monitor(MonitorSettings(), Store("memory://names"), registry)
    return registry_names(registry)


def known_metrics() -> set[str]:
    return gateway_metric_names() | monitoring_metric_names() | monitoring.TRITON_METRICS


def prometheus_rule_problems() -> list[str]:
    """The PrometheusRule carries exactly the groups of the Prometheus rules file."""
    rules = yaml.safe_load((PROMETHEUS / "rules" / "tritonstack.rules.yml").read_text())
    crd = yaml.safe_load((DEPLOY / "monitoring" / "prometheusrule.yaml").read_text())
    if crd["spec"]["groups"] != rules["groups"]:
        return ["monitoring/prometheusrule.yaml: groups differ from prometheus/rules/"]
    return []


def job_problems(job: Path) -> list[str]:
    """A Job kustomization, checked beside the overlay that deploys into its namespace."""
    namespace = yaml.safe_load((job / "kustomization.yaml").read_text()).get("namespace")
    for overlay in OVERLAYS:
        if yaml.safe_load((overlay / "kustomization.yaml").read_text()).get("namespace") == (
            namespace
        ):
            try:
                context = manifests.render(overlay)
            except manifests.RenderError as exc:
                return [str(exc)]
            return manifests.check_kustomization(job, context=context)
    return [f"{job.name}: no overlay deploys namespace {namespace!r} (where would Triton be?)"]


def all_problems() -> dict[str, list[str]]:
    checks: dict[str, list[str]] = {}
    for overlay in OVERLAYS:
        checks[f"k8s overlay {overlay.name}"] = manifests.check_kustomization(overlay)
    for job in JOBS:
        checks[f"k8s job {job.name}"] = job_problems(job)
    checks["prometheus config + rules"] = monitoring.check_config(PROMETHEUS / "prometheus.yml")
    for test_file in sorted((PROMETHEUS / "tests").glob("*.yml")):
        checks[f"promtool test rules {test_file.name}"] = monitoring.run_rule_tests(test_file)
    checks["PrometheusRule == rules file"] = prometheus_rule_problems()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        checks[f"dashboard {path.name}"] = monitoring.dashboard_problems(
            dashboard, known_metrics()
        ) + monitoring.promql_problems(monitoring.dashboard_expressions(dashboard))
    checks["compose"] = compose.check_compose(DEPLOY / "compose" / "compose.yaml")
    return checks


def main() -> int:
    failed = False
    for check, problems in all_problems().items():
        print(f"{'FAIL' if problems else 'ok  '} {check}")
        for problem in problems:
            print(f"     {problem}")
        failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
