"""The variant table (``tritonstack variants``): every check's figure and speed, per variant.

One row per variant: parity with PyTorch (min cosine, max rel L2), batch invariance (how far
an answer moves), the task metrics against fp32 (recall@10, similarity Spearman), in-process
items/s and the ratio to fp32. Rejected variants are timed too when asked, to show what they
would have gained; the "served" column says what :func:`export.variants.choose` would serve.
"""

from __future__ import annotations

from typing import Any

from export.variants import VariantResult, choose

COLUMNS = (
    "variant", "status", "min cosine", "max rel L2", "moves (invariance)", "recall@10",
    "spearman",
)  # fmt: skip


def rows(results: list[VariantResult], batch: int = 8) -> list[dict[str, Any]]:
    """Plain-data rows (JSON-ready), fp32 speed ratios included."""
    fp32 = next((r for r in results if r.variant.value == "fp32"), None)
    base = fp32.items_per_s if fp32 else {}
    chosen, why = choose(results, batch)
    found = []
    for r in results:
        d = r.as_dict()
        found.append(
            {
                "variant": d["variant"],
                "status": d["status"],
                "reason": d["reason"],
                "budget": d["accuracy"]["budget"],
                "min_cosine": d["accuracy"]["min_cosine"],
                "max_rel_l2": d["accuracy"]["max_rel_l2"],
                "invariance_max_rel_l2": d["invariance"]["max_rel_l2"],
                "recall_at_10": d["task"].get("recall_at_10"),
                "spearman": d["task"].get("spearman"),
                "auc_delta": d["task"].get("auc_delta"),
                "items_per_s": r.items_per_s,
                "speedup_vs_fp32": {
                    b: round(v / base[b], 2) for b, v in r.items_per_s.items() if base.get(b)
                },
                "served": chosen is r,
                "why_served": why if chosen is r else "",
            }
        )
    return found


def _cell(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def cells(row: dict[str, Any], batches: tuple[int, ...]) -> list[str]:
    """A row as table cells: the :data:`COLUMNS`, then items/s per batch, then vs fp32."""
    ips = row["items_per_s"]
    return [
        str(row["variant"]) + (" (served)" if row["served"] else ""),
        str(row["status"]),
        _cell(row["min_cosine"], ".5f"),
        _cell(row["max_rel_l2"], ".2e"),
        _cell(row["invariance_max_rel_l2"], ".1e"),
        _cell(row["recall_at_10"], ".4f"),
        _cell(row["spearman"], ".4f"),
        *(str(ips.get(b, "-")) for b in batches),
        str(row["speedup_vs_fp32"].get(8, "-")),
    ]


def markdown(found: list[dict[str, Any]], batches: tuple[int, ...]) -> list[str]:
    """The table as markdown lines, then why each rejected variant was rejected."""
    header = [*COLUMNS, *(f"items/s b={b}" for b in batches), "vs fp32 (b=8)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells(row, batches)) + " |" for row in found]
    lines.append("")
    for row in found:
        if row["served"]:
            lines.append(f"- served: **{row['variant']}** ({row['why_served']})")
        elif row["reason"]:
            lines.append(f"- {row['variant']} rejected: {row['reason']}")
    return lines
