"""What `tritonstack export` prints: each step, each variant against its budgets, the choice."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from export.pipeline import ExportResult


def _accuracy(metrics: dict) -> str:
    if not metrics or metrics.get("value") is None:
        return "-"
    metric, value, budget = metrics["metric"], metrics["value"], metrics["budget"]
    if metric == "rel_l2":
        return f"rel L2 {value:.2e} (<= {budget:.0e})"
    label = "cosine" if metric == "cosine" else "top-1"
    return f"{label} {value:.5f} (>= {budget})"


def _invariance(metrics: dict) -> str:
    if not metrics or metrics.get("max_rel_l2") is None:
        return "-"
    return f"moves {metrics['max_rel_l2']:.1e} (<= {metrics['tolerance']:.0e})"


def _task(metrics: dict) -> str:
    shown = {
        "recall_at_10": "recall@10",
        "spearman": "spearman",
        "auc": "AUC",
        "auc_delta": "AUC delta",
        "top1_agreement": "top-1",
        "accuracy_delta": "accuracy delta",
    }
    parts = [f"{label} {metrics[k]:.4f}" for k, label in shown.items() if k in metrics]
    return ", ".join(parts) or "-"


def render_export(console: Console, result: ExportResult, target: str) -> None:
    steps = Table(title=f"export {result.name} (target {target})")
    for column in ("step", "status", "seconds", "detail"):
        steps.add_column(column)
    for step in result.steps:
        detail = step.reason
        if step.step == "torch2onnx" and step.ok:
            detail = f"opset {step.metrics['opset']}, {step.metrics['file']['bytes'] / 1e6:.1f} MB"
        elif step.step.startswith("verify") and step.ok:
            detail = _accuracy(step.metrics)
        elif step.step.startswith("invariance") and step.ok:
            detail = _invariance(step.metrics)
        elif step.step.startswith("task") and step.ok:
            detail = _task(step.metrics)
        elif step.step == "measure" and step.ok:
            detail = ", ".join(f"{k} {v:.0f}/s" for k, v in step.metrics["items_per_s"].items())
            detail += f" (batch {step.metrics['batch']})"
        elif step.step == "install" and step.ok:
            detail = f"version {step.metrics['version']} ({step.metrics['variant']})"
        steps.add_row(step.step, step.status.value, f"{step.duration_s:.1f}", detail)
    console.print(steps)
    if result.variants:
        table = Table(title="variants: parity with PyTorch, batch invariance, task vs fp32")
        for column in ("variant", "status", "parity (budget)", "batch invariance", "task"):
            table.add_column(column)
        for column in ("items/s", "served", "why not"):
            table.add_column(column)
        for r in result.variants:
            d = r.as_dict()
            table.add_row(
                r.variant.value,
                d["status"],
                _accuracy(r.verify.metrics if r.verify else {}),
                _invariance(r.invariance.metrics if r.invariance else {}),
                _task(r.task.metrics if r.task else {}),
                ", ".join(f"b{b} {v:.0f}" for b, v in r.items_per_s.items()) or "-",
                "yes" if result.served is r else "",
                "" if r.ok else (d["reason"] or "-"),
            )
        console.print(table)
    if result.unchanged:
        console.print(f"unchanged: {result.version_dir} already serves this (nothing written)")
    elif result.ok:
        console.print(f"wrote {result.version_dir} (report: {result.report_path})")
