"""Monitoring files checked offline: Prometheus config and rules (``promtool``), the dashboard.

* ``promtool check config`` / ``check rules`` / ``test rules`` (Debian's ``prometheus``).
* ``promql_problems``: every expression parses, checked by promtool as recording rules (the
  Grafana variables replaced by values first).
* ``dashboard_problems``: the structure Grafana needs to load a dashboard (unique panel ids,
  grid positions inside the 24-column grid and not overlapping, a data source and targets with
  ``expr`` and unique ``refId`` per panel) and the metric names each expression uses.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from deploy.local.errors import RuntimeMissingError

PROMTOOL_TIMEOUT_S = 60.0
GRID_COLUMNS = 24
# Triton 2.51's metric names (seen on its metrics port with the response cache and
# summary_latencies on; nv_gpu_* from NVIDIA's docs, exported where GPUs are visible).
TRITON_METRICS = frozenset(
    {
        "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
        "nv_inference_exec_count", "nv_inference_pending_request_count",
        "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us", "nv_inference_queue_summary_us",
        "nv_inference_compute_input_summary_us", "nv_inference_compute_infer_summary_us",
        "nv_inference_compute_output_summary_us", "nv_cache_num_hits_per_model",
        "nv_cache_num_misses_per_model", "nv_cache_num_entries", "nv_cache_util",
        "nv_cpu_utilization", "nv_cpu_memory_used_bytes", "nv_cpu_memory_total_bytes",
        "nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes",
        "nv_gpu_power_usage", "nv_gpu_power_limit", "nv_energy_consumption",
    }
)  # fmt: skip
# Values for Grafana's variables, so that an expression can be parsed as PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
_VARIABLE = re.compile(r"\$\{?(\w+)\}?")
_OUR_METRIC = re.compile(r"\b((?:gateway|nv|tritonstack)_[a-zA-Z0-9_]+)\b")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def promtool_binary() -> str:
    found = shutil.which("promtool")
    if found is None:
        raise RuntimeMissingError(
            "promtool is not installed: run `make setup` as root, or "
            "`sudo apt-get install -y --no-install-recommends prometheus`"
        )
    return found


def promtool(*args: str, timeout_s: float = PROMTOOL_TIMEOUT_S) -> list[str]:
    """Run ``promtool ARGS``; its output as the problem when it fails, else no problem."""
    result = subprocess.run(
        [promtool_binary(), *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if result.returncode == 0:
        return []
    return [f"promtool {' '.join(args)}:\n{(result.stdout + result.stderr).strip()}"]


def check_config(path: Path) -> list[str]:
    """``promtool check config`` (also checks the rule files it names)."""
    return promtool("check", "config", str(path))


def check_rules(paths: Iterable[Path]) -> list[str]:
    return promtool("check", "rules", *(str(p) for p in paths))


def run_rule_tests(path: Path) -> list[str]:
    """``promtool test rules``: the alerts fire (and stay quiet) as the test file expects."""
    return promtool("test", "rules", str(path))


def promql_problems(expressions: Mapping[str, str]) -> list[str]:
    """Parse errors of named PromQL expressions (names: ``[a-zA-Z_:][a-zA-Z0-9_:]*``)."""
    if not expressions:
        return []
    rules = [{"record": name, "expr": expr} for name, expr in expressions.items()]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "expressions.rules.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "expressions", "rules": rules}]}))
        return check_rules([path])


def substitute_variables(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with Grafana's ``$var`` / ``${var}`` replaced (``.*`` for unknown ones)."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return _VARIABLE.sub(lambda m: values.get(m.group(1), ".*"), expr)


def metric_names(expr: str) -> set[str]:
    """The ``gateway_*``, ``tritonstack_*`` and ``nv_*`` metric names an expression reads
    (histogram suffixes off)."""
    names = set()
    for name in _OUR_METRIC.findall(expr):
        for suffix in _HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name.startswith(("gateway_", "tritonstack_")):
                name = name.removesuffix(suffix)
        names.add(name)
    return names


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """``panel_<id>_<refId>`` -> the expression with variables substituted."""
    return {
        f"panel_{panel.get('id')}_{target.get('refId')}": substitute_variables(target["expr"], {})
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    }


def _overlap(a: Mapping[str, int], b: Mapping[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def dashboard_problems(dashboard: Mapping[str, Any], known_metrics: Iterable[str]) -> list[str]:
    """What would stop Grafana from loading the dashboard or its panels from showing data."""
    problems = [
        f"{key} is required" for key in ("uid", "title", "panels") if not dashboard.get(key)
    ]
    if not isinstance(dashboard.get("schemaVersion"), int):
        problems.append("schemaVersion must be an integer")
    known = set(known_metrics)
    seen_ids: set[int] = set()
    placed: list[tuple[str, dict[str, int]]] = []
    for panel in panels(dashboard):
        title = f"panel {panel.get('id')} {panel.get('title', '')!r}"
        if not isinstance(panel.get("id"), int) or panel["id"] in seen_ids:
            problems.append(f"{title}: id must be a unique integer")
        seen_ids.add(panel.get("id", -1))
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in ("x", "y", "w", "h")):
            problems.append(f"{title}: gridPos needs integer x, y, w, h")
            continue
        if grid["x"] < 0 or grid["y"] < 0 or grid["w"] < 1 or grid["h"] < 1:
            problems.append(f"{title}: gridPos {grid} has a negative or empty extent")
        if grid["x"] + grid["w"] > GRID_COLUMNS:
            problems.append(f"{title}: gridPos {grid} is wider than {GRID_COLUMNS} columns")
        for other, other_grid in placed:
            if _overlap(grid, other_grid):
                problems.append(f"{title}: gridPos overlaps {other}")
        placed.append((title, grid))
        if panel.get("type") == "row":
            continue
        if not panel.get("type") or not panel.get("datasource"):
            problems.append(f"{title}: type and datasource are required")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{title}: no targets")
        ref_ids = [t.get("refId") for t in targets]
        if len(set(ref_ids)) != len(ref_ids) or None in ref_ids:
            problems.append(f"{title}: refIds must be present and unique: {ref_ids}")
        for target in targets:
            if not target.get("expr"):
                problems.append(f"{title}: target {target.get('refId')} has no expr")
                continue
            unknown = metric_names(target["expr"]) - known
            if unknown:
                problems.append(f"{title}: unknown metrics {sorted(unknown)}")
    return problems
