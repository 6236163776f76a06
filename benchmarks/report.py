"""Summaries, markdown, JSON and PNG plots of the side-by-side run (``benchmarks.compare``)."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any

from benchmarks.loadgen import Point

INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "avx512f")  # what int8 matmuls gain from


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name and which int8-relevant instruction sets it has: VMs of one kind
    differ here, and int8 speedups with them (benchmarks/README.md, "The machines differ")."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.machine()
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():  # the first processor's block
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    name = " ".join(fields.get("model name", "").split())
    flags = set(fields.get("flags", "").split())
    isa = [f for f in INT8_FLAGS if f in flags] or ["avx2" if "avx2" in flags else "no avx2"]
    return f"{name or platform.machine()}, {'/'.join(isa)}"


def machine(shares: str = "load generator and server share the same cores") -> str:
    return (
        f"{os.cpu_count()} CPU cores ({cpu_model()}), no GPU, {platform.platform()}, "
        f"Python {platform.python_version()}" + (f"; {shares}" if shares else "")
    )


def summarize(points: Sequence[Point]) -> list[dict[str, Any]]:
    """One row per (system, concurrency): medians over repeats with the throughput range."""
    keys = sorted({(p.target, p.concurrency) for p in points}, key=lambda k: (_order(k[0]), k[1]))
    rows = []
    for target, c in keys:
        mine = [p for p in points if (p.target, p.concurrency) == (target, c)]
        tp = [p.throughput for p in mine]
        rows.append(
            {
                "system": target,
                "concurrency": c,
                "throughput": round(statistics.median(tp), 1),
                "throughput_range": [min(tp), max(tp)],
                "p50_ms": round(statistics.median(p.p50_ms for p in mine), 2),
                "p99_ms": round(statistics.median(p.p99_ms for p in mine), 2),
                "p99_range": [min(p.p99_ms for p in mine), max(p.p99_ms for p in mine)],
                "requests": sum(p.requests for p in mine),
                "errors": sum(p.errors for p in mine),
                "repeats": len(mine),
            }
        )
    return rows


_ORDER = (
    "naive-fastapi",
    "ray-serve",
    "litserve",
    "triton-grpc",
    "gateway-miss",
    "ceiling",
    "ceiling-fp32",
)
_CEILINGS = ("ceiling", "ceiling-fp32")


def _order(system: str) -> int:
    return _ORDER.index(system) if system in _ORDER else len(_ORDER)


def _row(rows: Sequence[dict[str, Any]], system: str, c: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["system"] == system and r["concurrency"] == c), None)


def ratios(rows: Sequence[dict[str, Any]], at: int = 32) -> dict[str, float]:
    """Our throughput over each peer's at concurrency ``at``, and Triton over the best ceiling."""
    out: dict[str, float] = {}
    ours = _row(rows, "triton-grpc", at)
    ceilings = [r["throughput"] for r in rows if r["system"] == "ceiling"]
    if ours is None:
        return out
    for peer in ("naive-fastapi", "ray-serve", "litserve"):
        row = _row(rows, peer, at)
        if row and row["throughput"]:
            out[f"triton_vs_{peer}"] = round(ours["throughput"] / row["throughput"], 2)
    gateway = _row(rows, "gateway-miss", at)
    if gateway:
        out["gateway_vs_triton"] = round(gateway["throughput"] / ours["throughput"], 3)
    if ceilings:
        out["triton_vs_ceiling"] = round(ours["throughput"] / max(ceilings), 3)
    fp32 = [r["throughput"] for r in rows if r["system"] == "ceiling-fp32"]
    if fp32:  # the served variant is reduced precision: how it compares with fp32 in-process
        out["triton_vs_fp32_ceiling"] = round(ours["throughput"] / max(fp32), 3)
    return out


def to_markdown(
    rows: Sequence[dict[str, Any]],
    checks: Sequence[dict[str, Any]],
    *,
    command: str,
    plots: Sequence[str] = (),
    at: int = 32,
    variant: str = "fp32",
) -> str:
    lines = [
        "# Peers side by side: MiniLM-L6 embeddings, one item per request",
        "",
        f"Machine: {machine()}.",
        f"Command: `{command}`.",
        f"Served variant: **{variant}** (the export's choice; Triton, the gateway, Ray Serve, "
        "LitServe and `ceiling` run this same ONNX file; naive-fastapi runs PyTorch fp32).",
        "",
        "Median over repeats, throughput range in brackets; `ceiling` is in-process ONNX Runtime "
        "(concurrency column = batch size, items/s); `ceiling-fp32` the fp32 export in-process.",
        "",
        "| system | concurrency | items/s (median [range]) | p50 ms | p99 ms (median [range]) "
        "| errors |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["throughput_range"]
        plow, phigh = r["p99_range"]
        lines.append(
            f"| {r['system']} | {r['concurrency']} | {r['throughput']} [{low}-{high}] | "
            f"{r['p50_ms']} | {r['p99_ms']} [{plow}-{phigh}] | {r['errors']} |"
        )
    lines += ["", f"Ratios at concurrency {at}:", ""]
    lines += [f"- {k}: {v}x" for k, v in ratios(rows, at).items()]
    lines += ["", "Correctness (cosine vs PyTorch on fixed samples, min over repeats):", ""]
    by: dict[str, list[dict[str, Any]]] = {}
    for c in checks:
        by.setdefault(c["system"], []).append(c)
    lines += [
        f"- {system}: min cosine {min(c['min_cosine'] for c in cs)} over "
        f"{sum(c['samples'] for c in cs)} samples "
        f"({'ok' if all(c['ok'] for c in cs) else 'FAILED'})"
        for system, cs in by.items()
    ]
    if plots:
        lines += ["", *(f"![{Path(p).stem}]({Path(p).name})" for p in plots)]
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], stem: Path) -> list[Path]:
    """Throughput vs concurrency and p50/p99 vs concurrency, as PNGs beside ``stem``."""
    # deferred on purpose: matplotlib comes with the dev/bench extras, not the runtime
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [s for s in _ORDER if any(r["system"] == s for r in rows) and s not in _CEILINGS]
    ceilings = [r for r in rows if r["system"] == "ceiling"]
    fp32_ceilings = [r for r in rows if r["system"] == "ceiling-fp32"]
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in systems:
        mine = [r for r in rows if r["system"] == s]
        xs = [r["concurrency"] for r in mine]
        ys = [r["throughput"] for r in mine]
        err = [
            [y - r["throughput_range"][0] for y, r in zip(ys, mine, strict=True)],
            [r["throughput_range"][1] - y for y, r in zip(ys, mine, strict=True)],
        ]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=s)
    if ceilings:
        best = max(ceilings, key=lambda r: r["throughput"])
        ax.axhline(
            best["throughput"],
            color="grey",
            linestyle="--",
            label=f"in-process ceiling (batch {best['concurrency']})",
        )
    if fp32_ceilings:
        best = max(fp32_ceilings, key=lambda r: r["throughput"])
        ax.axhline(
            best["throughput"],
            color="black",
            linestyle=":",
            label=f"in-process fp32 ceiling (batch {best['concurrency']})",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (closed loop)")
    ax.set_ylabel("items/s")
    ax.set_title("Throughput vs concurrency (median, range over repeats)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path = stem.with_name(stem.name + "-throughput.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    for ax, key in zip(axes, ("p50_ms", "p99_ms"), strict=True):
        for s in systems:
            mine = [r for r in rows if r["system"] == s]
            ax.plot([r["concurrency"] for r in mine], [r[key] for r in mine], marker="o", label=s)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrency")
        ax.set_title(key.replace("_ms", "") + " latency (ms)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    path = stem.with_name(stem.name + "-latency.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


def save(
    directory: Path,
    points: Sequence[Point],
    checks: Sequence[dict[str, Any]],
    *,
    command: str,
    peer_commands: Sequence[str] = (),
    name: str = "vm-peers",
    variant: str = "fp32",
) -> list[Path]:
    """``<date>-<name>.{json,md}`` and the two PNGs in ``directory``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"{date.today().isoformat()}-{name}"
    rows = summarize(points)
    pngs = plot(rows, stem)
    stem.with_suffix(".json").write_text(
        json.dumps(
            {
                "machine": machine(),
                "command": command,
                "peer_commands": list(peer_commands),
                "served_variant": variant,
                "summary": rows,
                "ratios_at_32": ratios(rows),
                "checks": list(checks),
                "points": [asdict(p) for p in points],
            },
            indent=2,
        )
        + "\n"
    )
    md = stem.with_suffix(".md")
    md.write_text(
        to_markdown(rows, checks, command=command, plots=[str(p) for p in pngs], variant=variant)
    )
    return [stem.with_suffix(".json"), md, *pngs]
