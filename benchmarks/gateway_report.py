"""The report of ``benchmarks.gateway_overhead``: medians over repeats, the issue's targets,
the JSON and markdown files."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

from rich.table import Table

from benchmarks import report
from benchmarks.loadgen import Point, Window

FLOOR = "floor-v2-json"
MISS = "gateway-v2-json-miss"
HIT = "gateway-v2-json-hit"


@dataclass
class Measured:
    point: Point
    extra: dict[str, float]


def cpu_per_request(window: Window, target: str) -> dict[str, float]:
    """Each measured process's CPU milliseconds per request completed in the window."""
    opened, closed = window.opened, window.closed
    if not isinstance(opened, dict) or not isinstance(closed, dict) or not window.completed:
        return {}
    return {
        f"{name}_cpu_ms": round(1000 * (closed[name] - opened[name]) / window.completed, 3)
        for name in opened
    }


def reference(target: str) -> str:
    """The direct-Triton target a target is compared with (same model, same kind of input)."""
    return "triton-grpc-text" if "embeddings" in target else "triton-grpc"


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else float("nan")


def summarize(
    measured: list[Measured], levels: list[int], targets: list[str]
) -> list[dict[str, Any]]:
    """One row per (target, concurrency): medians over repeats, ratios to Triton and the floor."""
    rows: list[dict[str, Any]] = []
    for c in levels:
        here = [m for m in measured if m.point.concurrency == c]

        def of(target: str, here: list[Measured] = here) -> list[Measured]:
            return [m for m in here if m.point.target == target]

        for target in targets:
            mine = of(target)
            if not mine:
                continue
            tp = [m.point.throughput for m in mine]
            row: dict[str, Any] = {
                "target": target,
                "concurrency": c,
                "throughput": round(statistics.median(tp), 1),
                "throughput_range": [min(tp), max(tp)],
                "p50_ms": _median([m.point.p50_ms for m in mine]),
                "p99_ms": max(m.point.p99_ms for m in mine),
                "errors": sum(m.point.errors for m in mine),
            }
            for key in sorted({k for m in mine for k in m.extra}):
                row[key] = _median([m.extra[key] for m in mine if key in m.extra])
            ref = of(reference(target))
            if ref:
                row["vs_triton"] = round(row["throughput"] / statistics.median(
                    m.point.throughput for m in ref), 3)  # fmt: skip
                row["added_p50_ms"] = round(
                    row["p50_ms"] - statistics.median(m.point.p50_ms for m in ref), 2
                )
            floor = of(FLOOR)
            if floor and target.startswith("gateway-v2"):
                floor_cpu = _median([m.extra["floor_cpu_ms"] for m in floor if m.extra])
                row["vs_floor_throughput"] = round(
                    row["throughput"] / statistics.median(m.point.throughput for m in floor), 3
                )
                row["vs_floor_added_p50_ms"] = round(
                    row["p50_ms"] - statistics.median(m.point.p50_ms for m in floor), 2
                )
                if "gateway_cpu_ms" in row and floor_cpu == floor_cpu:
                    row["vs_floor_cpu"] = round(row["gateway_cpu_ms"] / floor_cpu, 3)
            rows.append(row)
    return rows


def targets_met(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met."""
    by = {(r["target"], r["concurrency"]): r for r in summary}
    checks: list[dict[str, Any]] = []

    def check(name: str, key: tuple[str, int], field: str, limit: float, below: bool) -> None:
        row = by.get(key)
        if row is None or field not in row:
            return
        value = row[field]
        checks.append(
            {"target": name, "measured": value, "limit": limit,
             "met": value <= limit if below else value >= limit}
        )  # fmt: skip

    for c in (8, 32):
        check(f"miss: gateway CPU/request <= 1.25x the floor's (c={c})", (MISS, c),
              "vs_floor_cpu", 1.25, True)  # fmt: skip
    check("miss: throughput >= 0.9x the floor's (c=32)", (MISS, 32), "vs_floor_throughput",
          0.9, False)  # fmt: skip
    check("miss: added median <= floor's + 1 ms (c=1)", (MISS, 1), "vs_floor_added_p50_ms",
          1.0, True)  # fmt: skip
    for c in (1, 8, 32):
        check(f"hit: gateway CPU/request <= 0.3 ms (c={c})", (HIT, c), "gateway_cpu_ms", 0.3, True)
    return checks


_COLUMNS = (
    ("target", "target"), ("c", "concurrency"), ("req/s", "throughput"),
    ("vs triton", "vs_triton"), ("vs floor", "vs_floor_throughput"), ("p50 ms", "p50_ms"),
    ("+p50 ms", "added_p50_ms"), ("+p50 vs floor", "vs_floor_added_p50_ms"),
    ("p99 ms", "p99_ms"), ("server CPU ms/req", "cpu"), ("CPU vs floor", "vs_floor_cpu"),
    ("Redis CPU ms/req", "redis_cpu_ms"), ("gateway own ms", "gateway_own_ms"),
    ("errors", "errors"),
)  # fmt: skip


def _cell(row: dict[str, Any], key: str) -> str:
    cpu = key == "cpu"
    value = row.get("gateway_cpu_ms", row.get("floor_cpu_ms")) if cpu else row.get(key)
    if value is None:
        return ""
    if key == "throughput":
        low, high = row["throughput_range"]
        return f"{value} [{low}-{high}]"
    return f"{value}x" if key.startswith("vs_") and "p50" not in key else str(value)


def table(rows: list[dict[str, Any]]) -> Table:
    out = Table(title="gateway overhead (median of repeats; throughput range in brackets)")
    for title, _ in _COLUMNS:
        out.add_column(title)
    for row in rows:
        out.add_row(*(_cell(row, key) for _, key in _COLUMNS))
    return out


def markdown(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| " + " | ".join(t for t, _ in _COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
    ]
    lines += ["| " + " | ".join(_cell(r, k) for _, k in _COLUMNS) + " |" for r in rows]
    lines += ["", "| target (issue 19) | measured | limit | met |", "|---|---|---|---|"]
    lines += [
        f"| {c['target']} | {c['measured']} | {c['limit']} | {'yes' if c['met'] else '**no**'} |"
        for c in checks
    ]
    return lines


def save(
    directory: Path,
    measured: list[Measured],
    summary: list[dict[str, Any]],
    checks: list[dict[str, Any]],
    profiles: dict[str, Any],
    command: str,
    label: str,
    name: str = "gateway",
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"{date.today().isoformat()}-vm-{name}"
    machine = report.machine("load generator, gateway, floor, Redis and Triton share the cores")
    if label:
        machine += f"; {label}"
    data = {
        "machine": machine, "command": command, "summary": summary, "targets": checks,
        "profiles": profiles, "points": [{**asdict(m.point), **m.extra} for m in measured],
    }  # fmt: skip
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# Gateway overhead: direct Triton, the floor of a Python forwarder, the gateway",
        "",
        f"Machine: {machine}.",
        "",
        f"Command: `{command}`. Model: MiniLM (python backend + ONNX Runtime), 16 tokens, one "
        "item per request, a fresh random input per request for every *miss* target; "
        "`server CPU ms/req` is the server process's own user + system CPU over the measured "
        "window divided by the requests completed in it (Redis' own beside it).",
        "",
        *markdown(summary, checks),
    ]
    for name, found in profiles.items():
        lines += ["", f"## Profile: {name} ({found['target']}, c={found['concurrency']})", ""]
        lines += [f"Flame graph: `{found['flame_graph']}`; {found['samples']} samples.", ""]
        lines += ["| function (self) | % of samples | function (inclusive) | % of samples |",
                  "|---|---|---|---|"]  # fmt: skip
        for (a, pa), (b, pb) in zip(
            found["self_pct_of_busy"], found["inclusive_pct_of_busy"], strict=False
        ):
            lines.append(f"| `{a}` | {pa} | `{b}` | {pb} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem
