"""How ``tritonstack rollout status`` prints a rollout: its steps with their figures, and the
history of a model's rollouts."""

from __future__ import annotations

import time
from typing import Any

from rich.table import Table

from rollout.state import RolloutState
from tritonstack.console import console


def print_state(state: RolloutState, driver: str | None) -> None:
    who = f"driven by {driver}" if driver else "no controller drives it"
    console.print(
        f"{state.model}: {state.id} {state.stable} -> {state.candidate}, "
        f"{state.phase} ({'done' if state.done else who})",
        highlight=False,
    )
    table = Table(title=None)
    for column in ("step", "phase", "weight", "verdict", "candidate", "stable", "shadow"):
        table.add_column(column)
    for step in state.steps:
        f = step.figures
        cand, stab, sh = f.get("candidate", {}), f.get("stable", {}), f.get("shadow", {})
        table.add_row(
            str(step.index),
            step.phase,
            f"{step.weight}%",
            step.verdict or "...",
            f"{cand.get('requests', 0)} req, {cand.get('errors', 0)} err, p99 {cand.get('p99_ms')}",
            f"{stab.get('requests', 0)} req, {stab.get('errors', 0)} err, p99 {stab.get('p99_ms')}",
            f"{sh.get('within', 0)}/{sh.get('rows', 0)} ok" if sh.get("rows") else "-",
        )
    console.print(table)
    if state.reason:
        console.print(f"reason: {state.reason}", highlight=False)


def print_history(model: str, records: list[dict[str, Any]]) -> None:
    if not records:
        return
    console.print(f"{model} history:")
    for r in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(r.get("started_unix", 0))))
        src, dst = r.get("from", r.get("stable")), r.get("to", r.get("candidate"))
        result = r.get("result", r.get("phase"))
        console.print(
            f"  {when}  v{src} -> v{dst}  {result}: {r.get('reason', '')}", highlight=False
        )
