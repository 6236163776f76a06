"""``tritonstack variants``: the table of MiniLM's variants (accuracy against PyTorch fp32,
in-process throughput at batch 1/8/32) and which one would be served.

A benchmark: the variants are made and timed in a build directory, never installed.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import report
from export.models import minilm
from export.torch2onnx import torch_to_onnx
from export.variants import Budgets, build_variants, fastest

BATCHES = (1, 8, 32)


def run_variants(
    console: Console,
    out_dir: Path,
    fp16_min_cosine: float,
    int8_min_cosine: float,
    seconds: float,
    save: Path | None,
) -> bool:
    """Export MiniLM afresh into ``out_dir``, then make, check and time every variant."""
    spec = minilm.load()
    budgets = Budgets(fp16=fp16_min_cosine, int8=int8_min_cosine)
    onnx_path = out_dir / "model.onnx"
    with console.status("exporting MiniLM (PyTorch -> ONNX)"):
        if not torch_to_onnx(spec, onnx_path).ok:
            return False
    with console.status("making, checking and timing variants"):
        results = build_variants(
            spec,
            onnx_path,
            out_dir,
            budgets=budgets,
            seed=0,
            measure_s=seconds,
            batches=BATCHES,
        )
    fp32 = next(r for r in results if r.variant.value == "fp32")
    rows: list[dict[str, Any]] = []
    for r in results:
        metrics = r.verify.metrics if r.verify else {}
        rows.append(
            {
                "variant": r.variant.value,
                "status": (r.verify.status.value if r.verify else r.make.status.value),
                "reason": (r.verify.reason if r.verify else r.make.reason),
                "budget": metrics.get("budget"),
                "max_rel_l2": metrics.get("max_rel_l2"),
                "min_cosine": metrics.get("min_cosine"),
                "items_per_s": r.items_per_s,
                "speedup_vs_fp32": {
                    b: round(r.items_per_s[b] / fp32.items_per_s[b], 2)
                    for b in r.items_per_s
                    if fp32.items_per_s.get(b)
                },
            }
        )
    chosen = fastest(results, batch=8)
    table = Table(title="MiniLM variants: accuracy vs PyTorch fp32, in-process items/s (seq 32)")
    for column in (
        "variant",
        "status",
        "min cosine",
        "max rel L2",
        *map(str, BATCHES),
        "vs fp32 @8",
    ):
        table.add_column(column)
    for row in rows:
        ips = row["items_per_s"]
        table.add_row(
            str(row["variant"]),
            str(row["status"]),
            f"{row['min_cosine']:.5f}" if row["min_cosine"] is not None else "-",
            f"{row['max_rel_l2']:.2e}" if row["max_rel_l2"] is not None else "-",
            *(str(ips.get(b, "-")) for b in BATCHES),
            str(row["speedup_vs_fp32"].get(8, "-")),
        )
    console.print(table)
    console.print(f"fastest within budget at batch 8: {chosen.variant.value if chosen else 'none'}")
    if save is None:
        return True
    save.mkdir(parents=True, exist_ok=True)
    stem = save / f"{date.today().isoformat()}-vm-variants"
    machine = report.machine(shares="")
    stem.with_suffix(".json").write_text(
        json.dumps(
            {"machine": machine, "rows": rows, "chosen": chosen.variant.value if chosen else None},
            indent=2,
        )
        + "\n"
    )
    lines = [
        "# MiniLM variants: accuracy against PyTorch fp32 and in-process throughput",
        "",
        f"Machine: {machine}. Command: `tritonstack variants --save {save}`. ONNX Runtime CPU, "
        "sequence length 32, default threads; accuracy on fresh random inputs (seed 0).",
        "",
        "| variant | status | budget | min cosine | max rel L2 | items/s b=1 | b=8 | b=32 "
        "| vs fp32 (b=8) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ips = row["items_per_s"]
        lines.append(
            f"| {row['variant']} | {row['status']} | {row['budget']} | "
            f"{row['min_cosine'] if row['min_cosine'] is None else round(row['min_cosine'], 5)} | "
            f"{_sci(row['max_rel_l2'])} | "
            + " | ".join(str(ips.get(b, "-")) for b in BATCHES)
            + f" | {row['speedup_vs_fp32'].get(8, '-')} |"
        )
    lines += [
        "",
        f"Fastest within budget at batch 8: **{chosen.variant.value if chosen else 'none'}**.",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    console.print(f"wrote {stem}.json and {stem}.md")
    return True


def _sci(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"
