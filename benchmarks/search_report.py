"""The config search's table, JSON and markdown (``benchmarks/results/<date>-vm-config-search``)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any

from rich.table import Table

from benchmarks.config_search import Aggregate, Candidate, Measurement, SearchResult, aggregate
from benchmarks.report import machine


def _changes(current: Candidate, chosen: Candidate) -> dict[str, list[Any]]:
    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    a, b = asdict(current), asdict(chosen)
    return {k: [plain(a[k]), plain(b[k])] for k in a if a[k] != b[k]}


def _rows(result: SearchResult, budget_ms: float) -> list[dict[str, Any]]:
    rows = []
    for agg in sorted(aggregate(result.measurements), key=lambda a: -a.throughput):
        last = agg.measurements[-1].points[-1]
        rows.append(
            {
                "candidate": agg.candidate.label,
                "current": agg.candidate == result.current,
                "chosen": result.chosen is not None and agg.candidate == result.chosen.candidate,
                "throughput": agg.throughput,
                "throughput_runs": [m.throughput for m in agg.measurements],
                "p99_ms": agg.p99_ms,
                "p50_ms": last.p50_ms,
                "low_load_p50_ms": agg.low_load_p50_ms,
                "server_queue_ms": last.server_queue_ms,
                "server_infer_ms": last.server_compute_infer_ms,
                "mean_batch": agg.measurements[-1].mean_batch,
                "under_budget": agg.under(budget_ms),
            }
        )
    return rows


def render_table(result: SearchResult, budget_ms: float) -> Table:
    table = Table(title=f"config search (p99 budget {budget_ms:g} ms); * chosen, = current")
    cols = (
        "",
        "candidate",
        "infer/s",
        "runs",
        "p99 ms",
        "low-load p50",
        "queue ms",
        "infer ms",
        "batch",
    )
    for col in cols:
        table.add_column(col)
    for r in _rows(result, budget_ms):
        mark = ("*" if r["chosen"] else "") + ("=" if r["current"] else "")
        table.add_row(
            mark,
            r["candidate"],
            f"{r['throughput']:.1f}",
            "/".join(f"{t:.0f}" for t in r["throughput_runs"]),
            f"{r['p99_ms']:.1f}",
            f"{r['low_load_p50_ms']:.1f}",
            f"{r['server_queue_ms']:.1f}",
            f"{r['server_infer_ms']:.1f}",
            str(r["mean_batch"]),
        )
    return table


def summary(result: SearchResult, budget_ms: float) -> dict[str, Any]:
    current = next(a for a in aggregate(result.measurements) if a.candidate == result.current)
    chosen: Aggregate | None = result.chosen
    return {
        "machine": machine(),
        "command": result.command,
        "perf_analyzer_command": result.perf_command,
        "p99_budget_ms": budget_ms,
        "current": {
            "candidate": asdict(result.current),
            "throughput": current.throughput,
            "p99_ms": current.p99_ms,
        },
        "chosen": None
        if chosen is None
        else {
            "candidate": asdict(chosen.candidate),
            "throughput": chosen.throughput,
            "p99_ms": chosen.p99_ms,
            "changes": _changes(result.current, chosen.candidate),
            "throughput_gain": round(chosen.throughput / current.throughput, 3)
            if current.throughput
            else None,
        },
        "written": str(result.written) if result.written else None,
        "rows": _rows(result, budget_ms),
        "measurements": [_measurement(m) for m in result.measurements],
    }


def _measurement(m: Measurement) -> dict[str, Any]:
    return {
        "candidate": asdict(m.candidate),
        "repeat": m.repeat,
        "mean_batch": m.mean_batch,
        "points": [p.as_dict() for p in m.points],
    }


def to_markdown(data: dict[str, Any]) -> str:
    lines = [
        "# Config search: minilm (python backend + ONNX Runtime), 32 tokens, batch 1",
        "",
        f"Machine: {data['machine']}.",
        f"Command: `{data['command']}`.",
        f"perf_analyzer (first candidate): `{data['perf_analyzer_command']}`.",
        "",
    ]
    chosen = data["chosen"]
    if chosen is None:
        lines.append(f"No candidate met p99 ≤ {data['p99_budget_ms']:g} ms; nothing was written.")
    else:
        changes = ", ".join(f"{k}: {a} → {b}" for k, (a, b) in chosen["changes"].items())
        lines.append(
            f"Chosen: {chosen['throughput']} infer/s at p99 {chosen['p99_ms']} ms vs the current "
            f"config's {data['current']['throughput']} infer/s at p99 {data['current']['p99_ms']} "
            f"ms ({chosen['throughput_gain']}x); changes: {changes or 'none'}."
            + (f" Written to `{data['written']}`." if data["written"] else "")
        )
    lines += [
        "",
        "Throughput at the highest concurrency: median of the runs (a second run for the current "
        "config and the best candidates); p99: the worst run over all concurrencies; low-load "
        "p50: p50 at the lowest concurrency (the tie-break within the tolerance). p50 and server "
        "queue/infer from the last run at the highest concurrency; mean batch (inferences per "
        "model execution, Triton's statistics) over the last run's whole measurement, all "
        "concurrencies together.",
        "",
        "| | candidate | infer/s | runs | p99 ms | low-load p50 ms | p50 ms | server queue ms "
        "| server infer ms | mean batch | under budget |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        mark = ("**chosen**" if r["chosen"] else "") + (" current" if r["current"] else "")
        lines.append(
            f"| {mark} | {r['candidate']} | {r['throughput']} | "
            f"{'/'.join(f'{t:.0f}' for t in r['throughput_runs'])} | {r['p99_ms']} | "
            f"{r['low_load_p50_ms']} | {r['p50_ms']} | {r['server_queue_ms']} | "
            f"{r['server_infer_ms']} | "
            f"{r['mean_batch']} | {'yes' if r['under_budget'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def save_search(directory: Path, result: SearchResult, budget_ms: float) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"{date.today().isoformat()}-vm-config-search"
    data = summary(result, budget_ms)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    stem.with_suffix(".md").write_text(to_markdown(data))
    return [stem.with_suffix(".json"), stem.with_suffix(".md")]
