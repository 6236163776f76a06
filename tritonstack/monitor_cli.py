"""``tritonstack capture run``, ``tritonstack monitor run|reference`` and ``tritonstack drift``.

Thin: the sink, the monitor, references and the drift report live in ``monitoring/``. Without
``--redis-url`` / ``--store`` the settings' environment (``CAPTURE_*``, ``MONITOR_*``) applies,
and a running local stack's Redis is used when none is configured.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from deploy.local import stack
from deploy.local.settings import StackSettings
from export.reader import latest_version
from features.settings import FeatureSettings
from monitoring import reference as references
from monitoring import report
from monitoring.accuracy import live_accuracy
from monitoring.drift import compare
from monitoring.errors import MonitoringError
from monitoring.service import run_monitor, run_sink, stop_on_signals
from monitoring.settings import CaptureSettings, MonitorSettings
from monitoring.store import Store
from tritonstack.console import console, fail

capture_app = typer.Typer(help="The capture sink: the gateway's Redis Stream -> Parquet.")
monitor_app = typer.Typer(help="Drift and live accuracy: the monitor and its references.")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

Store_ = Annotated[str | None, typer.Option("--store", help="the capture store (fsspec URL)")]


def seconds(value: str) -> float:
    """``90s``, ``30m``, ``1h``, ``2d`` -> seconds."""
    found = _DURATION.match(value.strip())
    if not found:
        raise fail(f"a duration is a number and s, m, h or d (e.g. 1h), got {value!r}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def _stack_redis() -> str | None:
    redis = stack.read_service(StackSettings(), "redis")
    return redis.url if redis is not None else None


@capture_app.command("run")
def capture_run(
    redis_url: Annotated[
        str | None, typer.Option(help="default: CAPTURE_REDIS_URL or the stack's")
    ] = None,
    store: Store_ = None,
) -> None:
    """Consume the capture stream into Parquet until interrupted (Ctrl-C, SIGTERM)."""
    settings = CaptureSettings()
    url = redis_url or os.environ.get("CAPTURE_REDIS_URL") or _stack_redis() or settings.redis_url
    settings = settings.model_copy(
        update={"redis_url": url, "store_url": store or settings.store_url}
    )
    console.print(f"capture sink: {settings.stream} ({url}) -> {settings.store_url}")
    run_sink(settings, stop_on_signals())


@monitor_app.command("run")
def monitor_run(store: Store_ = None) -> None:
    """Evaluate drift and live accuracy every MONITOR_INTERVAL_S and serve the gauges."""
    settings = MonitorSettings()
    settings = settings.model_copy(update={"store_url": store or settings.store_url})
    console.print(f"monitor: {settings.store_url}, /metrics on port {settings.metrics_port}")
    run_monitor(settings, stop_on_signals())


@monitor_app.command("reference")
def make_reference(
    model: Annotated[str, typer.Option(help="the model to build a reference for")],
    source: Annotated[
        str, typer.Option("--from", help="training (driver_ranker) or captures")
    ] = "training",
    since: Annotated[
        str | None, typer.Option(help="captures: start, ISO time or a duration ago")
    ] = None,
    until: Annotated[str | None, typer.Option(help="captures: end (default: now)")] = None,
    version: Annotated[
        str | None, typer.Option(help="default: the newest exported / captured")
    ] = None,
    store: Store_ = None,
) -> None:
    """Build a model's reference set: the Feast training window, or a window of captures."""
    settings = MonitorSettings()
    target = Store(store or settings.store_url)
    try:
        if source == "training":
            repository = StackSettings().model_repository
            found = version or str(latest_version(repository / model) or "")
            if not found:
                raise fail(f"no exported version of {model} in {repository}")
            onnx = repository / model / found / "model.onnx"
            spec, table = references.from_training(FeatureSettings(), onnx, found, model=model)
        elif source == "captures":
            end = _when(until) if until else datetime.now(UTC)
            start = _when(since) if since else end - timedelta(hours=1)
            spec, table = references.from_captures(target, model, version, start, end)
        else:
            raise fail(f"--from must be 'training' or 'captures', got {source!r}")
        path = references.save(target, spec, table)
    except MonitoringError as exc:
        raise fail(str(exc), cause=exc) from None
    console.print(f"{model} v{spec.version}: {table.num_rows} reference rows ({source}) -> {path}")
    console.print(
        f"  compares: {', '.join(spec.columns + ([spec.embedding] if spec.embedding else []))}"
    )


def _when(value: str) -> datetime:
    if _DURATION.match(value.strip()):
        return datetime.now(UTC) - timedelta(seconds=seconds(value))
    try:
        found = datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"a time is ISO 8601 or a duration ago (30m), got {value!r}") from None
    return found if found.tzinfo else found.replace(tzinfo=UTC)


def drift(
    model: Annotated[str, typer.Option(help="the model whose captured traffic is compared")],
    window: Annotated[
        str, typer.Option(help="captured traffic of the last ... (90s, 30m, 1h)")
    ] = "1h",
    version: Annotated[
        str | None, typer.Option(help="default: the newest version captured")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="report folder")] = None,
    store: Store_ = None,
) -> None:
    """Compare a window of captured traffic with the model's reference: report + gauges."""
    settings = MonitorSettings()
    settings = settings.model_copy(update={"window_s": seconds(window)})
    target = Store(store or settings.store_url)
    end = datetime.now(UTC)
    start = end - timedelta(seconds=settings.window_s)
    current = target.read("inferences", model, start, end, version)
    if current is None:
        raise fail(f"no captured traffic of {model!r} in the last {window} ({target.url})")
    versions = sorted(set(current.column("version").to_pylist()), key=lambda v: (len(v), v))
    chosen = version or versions[-1]
    try:
        spec, ref = references.load(target, model, chosen)
        rows = current.filter(current.column("version").to_numpy(zero_copy_only=False) == chosen)
        result = compare(spec, ref, rows, start=start, end=end, version=chosen, settings=settings)
    except MonitoringError as exc:
        raise fail(str(exc), cause=exc) from None
    accuracy = live_accuracy(
        target, model, end, window_s=settings.window_s, delay_s=settings.feedback_delay_s, spec=spec
    )
    folder = out or StackSettings().home / "reports" / f"drift-{model}-{end:%Y%m%dT%H%M%S}"
    index = report.write(result, accuracy, folder)
    title = f"{model} v{chosen}: {result.current_rows} rows vs {result.reference_rows} reference"
    table = Table(title=f"{title} ({window})")
    for column in ("feature", "method", "value", "threshold", ""):
        table.add_column(column)
    for s in result.scores:
        limit = "" if s.threshold != s.threshold else f"{s.threshold:.4g}"
        table.add_row(s.feature, s.method, f"{s.value:.4g}", limit, "DRIFT" if s.drifted else "ok")
    console.print(table)
    for a in accuracy:
        auc = "n/a" if a.auc is None else f"{a.auc:.3f}"
        console.print(
            f"live accuracy v{a.version}: AUC {auc}, log-loss {a.logloss:.3f} ({a.labels} labels)"
        )
    console.print(f"{'DRIFT' if result.drifted else 'no drift'}: report {index}")
