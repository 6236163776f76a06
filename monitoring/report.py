"""The drift report of one model: a folder anyone can open, and the gauges as text.

``index.html`` (the verdict, every score against its threshold, live accuracy, the plots),
``evidently.html`` (Evidently's own interactive report of the tabular features),
``features.png`` (each feature and the prediction, reference vs current),
``embedding.png`` (both sides projected on the reference's first two principal components),
``drift.json`` (every figure) and ``drift.prom`` (the gauges the monitor exports, in
Prometheus' text format, e.g. for node_exporter's textfile collector).
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from monitoring.accuracy import Accuracy
from monitoring.drift import DriftResult


def summary(result: DriftResult, accuracy: list[Accuracy]) -> dict[str, Any]:
    return {
        "model": result.model,
        "version": result.version,
        "window": [result.start.isoformat(), result.end.isoformat()],
        "drifted": result.drifted,
        "current_rows": result.current_rows,
        "reference_rows": result.reference_rows,
        "reference": {
            "source": result.reference.source,
            "version": result.reference.version,
            "built": result.reference.built,
        },
        "scores": [asdict(s) for s in result.scores],
        "live_accuracy": [asdict(a) for a in accuracy if a.version == result.version],
    }


def prometheus_text(result: DriftResult, accuracy: list[Accuracy]) -> str:
    lines = []
    for name, kind in (
        ("tritonstack_drift_score", "score"),
        ("tritonstack_drift_threshold", "t"),
        ("tritonstack_drift_pvalue", "p"),
    ):
        lines.append(f"# TYPE {name} gauge")
        for s in result.scores:
            if (s.method == "ks") != (kind == "p"):
                continue
            value = s.threshold if kind == "t" else s.value
            if not math.isnan(value):
                labels = (
                    f'model="{result.model}",version="{result.version}",'
                    f'feature="{s.feature}",method="{s.method}"'
                )
                lines.append(f"{name}{{{labels}}} {value!r}")
    for a in accuracy:
        labels = f'model="{a.model}",version="{a.version}"'
        if a.auc is not None:
            lines.append(f"tritonstack_live_auc{{{labels}}} {a.auc!r}")
        lines.append(f"tritonstack_live_logloss{{{labels}}} {a.logloss!r}")
        lines.append(f"tritonstack_live_labels{{{labels}}} {a.labels}")
    return "\n".join(lines) + "\n"


def _plots(result: DriftResult, out: Path) -> list[str]:
    # deferred on purpose: matplotlib (~0.5 s) only for reports
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    ref, cur = result.samples.get("reference"), result.samples.get("current")
    if ref is not None and cur is not None and len(ref.columns):
        columns = list(ref.columns)
        fig, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 3.2), squeeze=False)
        scores = {s.feature: s for s in result.scores if s.method == "psi"}
        for ax, column in zip(axes[0], columns, strict=True):
            both = np.concatenate([ref[column].to_numpy(), cur[column].to_numpy()])
            bins = np.histogram_bin_edges(both, bins=30)
            ax.hist(ref[column], bins=bins, density=True, alpha=0.5, label="reference")
            ax.hist(cur[column], bins=bins, density=True, alpha=0.5, label="current")
            psi = scores.get(column)
            ax.set_title(f"{column}: PSI {psi.value:.3f}" if psi else column, fontsize=9)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "features.png", dpi=90)
        plt.close(fig)
        made.append("features.png")
    ref_e, cur_e = (
        result.samples.get("reference_embedding"),
        result.samples.get("current_embedding"),
    )
    if ref_e is not None and cur_e is not None:
        center = ref_e.mean(axis=0)
        _, _, vt = np.linalg.svd(ref_e[:2000] - center, full_matrices=False)
        fig, ax = plt.subplots(figsize=(5, 4))
        for side, name in ((ref_e, "reference"), (cur_e, "current")):
            points = (side[:2000] - center) @ vt[:2].T
            ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.4, label=name)
        auc = next((s.value for s in result.scores if s.method == "domain_classifier_auc"), None)
        ax.set_title(f"embeddings (PCA of the reference); classifier AUC {auc:.3f}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "embedding.png", dpi=90)
        plt.close(fig)
        made.append("embedding.png")
    return made


def write(result: DriftResult, accuracy: list[Accuracy], out: Path) -> Path:
    """Write the report folder; returns ``index.html``."""
    out.mkdir(parents=True, exist_ok=True)
    data = summary(result, accuracy)
    (out / "drift.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out / "drift.prom").write_text(prometheus_text(result, accuracy))
    if result.snapshot is not None:
        result.snapshot.save_html(str(out / "evidently.html"))
    images = _plots(result, out)
    rows = "".join(
        f"<tr><td>{html.escape(s.feature)}</td><td>{s.method}</td><td>{s.value:.4g}</td>"
        f"<td>{'' if math.isnan(s.threshold) else f'{s.threshold:.4g}'}</td>"
        f"<td>{'DRIFT' if s.drifted else 'ok'}</td></tr>"
        for s in result.scores
    )
    live = "".join(
        f"<li>version {a.version}: AUC {'n/a' if a.auc is None else f'{a.auc:.3f}'}, "
        f"log-loss {a.logloss:.3f} over {a.labels} labelled answers</li>"
        for a in accuracy
    )
    verdict = "DRIFT" if result.drifted else "no drift"
    name = html.escape(result.model)
    page = f"""<!doctype html><meta charset="utf-8"><title>drift: {name}</title>
<h1>{html.escape(result.model)} v{html.escape(result.version)}: {verdict}</h1>
<p>{result.current_rows} captured rows from {result.start:%Y-%m-%d %H:%M:%S} to
{result.end:%Y-%m-%d %H:%M:%S} UTC against {result.reference_rows} reference rows
({html.escape(result.reference.source)}, built {html.escape(result.reference.built)}).</p>
<table border="1" cellpadding="4"><tr><th>feature</th><th>method</th><th>value</th>
<th>threshold</th><th></th></tr>{rows}</table>
<h2>Live accuracy</h2><ul>{live or "<li>no feedback in the window</li>"}</ul>
{"".join(f'<p><img src="{name}"></p>' for name in images)}
{'<p><a href="evidently.html">Evidently report</a></p>' if result.snapshot is not None else ""}
"""
    (out / "index.html").write_text(page)
    return out / "index.html"
