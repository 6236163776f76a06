"""``tritonstack features``: generate data, apply the Feast repository, materialize, train.

Every step is idempotent: ``generate`` reuses data made for the same spec and hour, ``apply``
lets Feast diff against its registry, ``materialize`` is incremental, ``train`` reuses an
export made from the same data and config (``--force`` redoes any of them). The work is
features/'s; these commands parse, call and print. ``features.data`` (pandas) and
``features.train`` (torch) load in seconds: they are imported inside their commands on purpose.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from deploy.local.settings import StackSettings
from features import store
from features.errors import FeatureStoreError
from features.online import lookup
from features.settings import FeatureSettings
from tritonstack.console import console, fail

features_app = typer.Typer(
    help="The Feast feature store: driver statistics, online lookup, the driver_ranker model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@contextmanager
def _or_fail() -> Iterator[None]:
    """A FeatureStoreError ends the command with its message (exit 1)."""
    try:
        yield
    except FeatureStoreError as exc:
        raise fail(str(exc), cause=exc) from None


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@features_app.command()
def generate(
    drivers: Annotated[int, typer.Option(min=10, help="number of drivers")] = 100,
    days: Annotated[int, typer.Option(min=5, help="days of hourly rows, ending this hour")] = 14,
    labels: Annotated[int, typer.Option(min=100, help="labelled ride offers")] = 20_000,
    seed: Annotated[int, typer.Option()] = 7,
    force: Annotated[bool, typer.Option(help="rewrite even when the same data exists")] = False,
) -> None:
    """Write the offline parquet (hourly driver stats) and the labelled offers."""
    from features.data import DatasetSpec
    from features.data import generate as write

    settings = FeatureSettings()
    spec = DatasetSpec(n_drivers=drivers, days=days, n_labels=labels, seed=seed)
    dataset = write(spec, settings.data_dir, force=force)
    verb = "reused" if dataset.reused else "wrote"
    console.print(
        f"{verb} {dataset.stats_path} ({dataset.rows} rows up to {dataset.end.isoformat()}) "
        f"and {dataset.labels_path} ({dataset.label_rows} offers)"
    )
    cohorts = ", ".join(f"{k}: {len(v)}" for k, v in dataset.drivers.items())
    console.print(f"driver cohorts: {cohorts}")


@features_app.command()
def apply() -> None:
    """Write feature_store.yaml from FEATURES_* settings and register the definitions."""
    settings = FeatureSettings()
    with _or_fail():
        report = store.apply(settings)
    console.print(
        f"applied {', '.join(report.detail['objects'])} to project {settings.project} "
        f"({settings.store_kind} online store) in {report.duration_s:.1f} s"
    )


@features_app.command()
def materialize(
    start: Annotated[
        str | None, typer.Option(help="ISO time; with it, exactly [start, end] (else incremental)")
    ] = None,
    end: Annotated[str | None, typer.Option(help="ISO time (default: now, UTC)")] = None,
) -> None:
    """Load offline rows into the online store (incremental up to now by default)."""
    settings = FeatureSettings()
    with _or_fail():
        report = store.materialize(settings, start=_when(start), end=_when(end))
    console.print(
        f"materialized ({report.detail['mode']}) up to {report.detail['end']} into "
        f"{settings.store_kind} in {report.duration_s:.1f} s"
    )


@features_app.command()
def train(
    repository: Annotated[Path, typer.Option(help="model repository to write into")] = Path(
        "model_repository"
    ),
    version: Annotated[int, typer.Option(min=1)] = 1,
    force: Annotated[
        bool, typer.Option(help="retrain even when an export of this data exists")
    ] = False,
) -> None:
    """Point-in-time training set, train the driver_ranker MLP, export it (parity checked)."""
    from features.train import train_and_export

    settings = FeatureSettings()
    build_dir = StackSettings().home / "build" / "driver_ranker"
    with _or_fail(), console.status("training driver_ranker on point-in-time features"):
        result = train_and_export(
            settings, repository, build_dir=build_dir, version=version, force=force
        )
    report = result.report
    table = Table(title=f"driver_ranker ({'reused' if result.reused else 'trained'})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("offers (entity rows)", str(report.entity_rows))
    for cause, rows in report.dropped.items():
        table.add_row(f"dropped: {cause}", str(rows))
    split = f"{report.train_rows} / {report.validation_rows}"
    table.add_row("training rows (train / validation)", split)
    v = report.validation
    table.add_row("validation AUC (baseline)", f"{v['auc']:.3f} ({v['baseline_auc']:.3f})")
    table.add_row(
        "validation log-loss (baseline)", f"{v['logloss']:.4f} ({v['baseline_logloss']:.4f})"
    )
    console.print(table)
    console.print(f"model: {result.version_dir}")


@features_app.command()
def get(
    entity_ids: Annotated[list[int], typer.Argument(help="driver ids")],
) -> None:
    """Read the model's features of drivers from the online store (as the gateway does)."""
    with _or_fail():
        console.print_json(json.dumps(asyncio.run(lookup(FeatureSettings(), entity_ids))))


def prepare(repository: Path) -> bool:
    """The demo's step 1b: every step above with its defaults; False when one failed (its
    error printed)."""
    try:
        generate()
        apply()
        materialize()
        train(repository=repository)
    except typer.Exit:
        return False
    return True
