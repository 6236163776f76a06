"""``tritonstack reload [MODEL]`` and the models table ``status``, ``up`` and ``export`` print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from deploy.local import models
from deploy.local.errors import DeployError
from deploy.local.settings import StackSettings
from export.naming import text_model_name, tokenizer_name
from tritonstack.console import console, fail


def models_table(rows: list[dict[str, Any]], title: str = "models") -> Table:
    """One row per model: served versions, Triton's state, the served variant, on disk."""
    table = Table(title=title or None)
    for column in ("model", "served", "state", "variant", "on disk", "note"):
        table.add_column(column)
    for row in rows:
        note = row["reason"]
        if row["newer_on_disk"] and row["served_versions"]:
            name, newest = row["name"], max(row["on_disk"])
            note = (
                f"version {newest} waits for `tritonstack rollout start -m {name} -v {newest}`"
                if row.get("pinned")
                else f"a newer version is on disk: `tritonstack reload {row['name']}`"
            )
        table.add_row(
            row["name"],
            ", ".join(map(str, row["served_versions"])) or "-",
            row["state"],
            row["variant"] or "-",
            ", ".join(map(str, row["on_disk"])) or "-",
            note,
        )
    return table


def print_served(loaded: list[models.ModelStatus]) -> None:
    """One line per model after a load: what Triton serves of it now."""
    for m in loaded:
        versions = ", ".join(map(str, m.served_versions)) or "none"
        variant = f" ({m.variant})" if m.variant else ""
        console.print(f"{m.name}: {m.state}, serving version {versions}{variant}", highlight=False)


def reload(
    names: Annotated[
        list[str] | None,
        typer.Argument(help="models to load or reload (default: every exported model)"),
    ] = None,
) -> None:
    """Load exported models into the running stack's Triton, or reload them with their newest
    versions and config (the old version answers until the new one is ready)."""
    try:
        with console.status("loading through Triton's repository API"):
            loaded = models.reload(StackSettings(), names or None)
    except DeployError as exc:
        raise fail(str(exc), cause=exc) from None
    print_served(loaded)


def serve_export(settings: StackSettings, repository: Path, name: str, text_pipeline: bool) -> None:
    """After an export: load it into the running stack, or say in one line why not."""
    names = [name, *([tokenizer_name(name), text_model_name(name)] if text_pipeline else [])]
    try:
        with console.status(f"loading {name} into the running stack"):
            outcome = models.serve(settings, repository, names)
    except DeployError as exc:
        raise fail(f"exported, but the running stack did not load it: {exc}", cause=exc) from None
    if isinstance(outcome, str):
        console.print(f"not loaded: {outcome}", highlight=False)
        return
    console.print("loaded into the running stack:")
    print_served(outcome)
