"""``tritonstack variants``: the table of MiniLM's variants (parity with PyTorch fp32, batch
invariance, neighbour agreement with fp32, in-process throughput at batch 1/8/32) and which
one the export would serve. The rows come from ``export.variants_table``.

A benchmark: the variants are made and timed in a build directory, never installed.
"""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks import report
from export import variants_table
from export.models import minilm
from export.torch2onnx import torch_to_onnx
from export.variants import ALL, Budgets, build_variants

BATCHES = (1, 8, 32)


def run_variants(
    console: Console,
    out_dir: Path,
    fp16_min_cosine: float,
    int8_min_cosine: float,
    seconds: float,
    save: Path | None,
    threads: int = 1,
) -> bool:
    """Export MiniLM afresh into ``out_dir``, then make, check and time every variant."""
    spec = minilm.load()
    load_before = os.getloadavg()[0]
    budgets = Budgets(fp16=fp16_min_cosine, int8=int8_min_cosine)
    onnx_path = out_dir / "model.onnx"
    with console.status("exporting MiniLM (PyTorch -> ONNX)"):
        if not torch_to_onnx(spec, onnx_path).ok:
            return False
    with console.status("making, checking and timing variants (rejected ones too)"):
        results = build_variants(
            spec, onnx_path, out_dir, ALL, budgets=budgets, seed=0, measure_s=seconds,
            batches=BATCHES, time_rejected=True, threads=threads,
        )  # fmt: skip
    rows = variants_table.rows(results)
    served = next((row["variant"] for row in rows if row["served"]), None)
    table = Table(title="MiniLM variants: checks and in-process items/s (seq 32)")
    for column in (*variants_table.COLUMNS, *map(str, BATCHES), "vs fp32 @8"):
        table.add_column(column)
    for row in rows:
        table.add_row(*variants_table.cells(row, BATCHES))
    console.print(table)
    for row in rows:
        if row["reason"]:
            console.print(f"{row['variant']} rejected: {row['reason']}")
    console.print(f"served by an export: {served or 'none'}")
    if save is None:
        return True
    save.mkdir(parents=True, exist_ok=True)
    stem = save / f"{date.today().isoformat()}-vm-variants"
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    shared = os.getloadavg()[0] > 1.5 or load_before > 1.5
    machine = report.machine(
        shares=f"{load}: measured while the machine was shared with other work" if shared else load
    )
    evaluation = next((r.task.metrics for r in results if r.task), {})
    stem.with_suffix(".json").write_text(
        json.dumps({"machine": machine, "rows": rows, "chosen": served,
                    "evaluation": evaluation.get("evaluation"),
                    "budgets": budgets.as_dict(spec.task)}, indent=2, default=str) + "\n"
    )  # fmt: skip
    lines = [
        "# MiniLM variants: checks against PyTorch and fp32, in-process throughput",
        "",
        f"Machine: {machine}. Command: `tritonstack variants --save {save}`. ONNX Runtime CPU, "
        f"sequence length 32, {threads or 'default'} intra-op thread(s), variants timed side by "
        f"side (interleaved, "
        f"{seconds:g} s each per batch size). Parity on random inputs (seed 0); invariance: "
        "probes alone vs batched with other sentences and padded; recall@10 and spearman: "
        f"against fp32 on {evaluation.get('evaluation', '-')}.",
        "",
        *variants_table.markdown(rows, BATCHES),
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    console.print(f"wrote {stem}.json and {stem}.md")
    return True
