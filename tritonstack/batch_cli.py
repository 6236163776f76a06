"""``tritonstack batch``: score a Parquet dataset (or entity ids) through Triton. Thin: it
parses, calls ``batch.run`` and prints the progress and the summary.

Also runs alone (the batch image's entry point): ``python -m tritonstack.batch_cli --model ...``.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from batch import BatchError, BatchJob, BatchSettings, FeatureSource, Summary, run

console = Console()
err = Console(stderr=True)
SHOWN_PATHS = 50


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


class _RowsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s")


class BarProgress:
    """A rich bar on a terminal; a line every ``every_s`` seconds otherwise (logs, Kubernetes)."""

    def __init__(self, out: Console, every_s: float = 10.0) -> None:
        self.out = out
        self.every_s = every_s
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.total = self.done = self.started_with = 0
        self.began = self.last = time.monotonic()

    def start(self, total: int, done: int) -> None:
        self.total, self.done, self.started_with = total, done, done
        self.began = self.last = time.monotonic()
        if self.out.is_terminal:
            self.bar = Progress(
                TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                _RowsPerSecond(), TextColumn("ETA"), TimeRemainingColumn(), TimeElapsedColumn(),
                console=self.out,
            )  # fmt: skip
            self.bar.start()
            self.task = self.bar.add_task("rows", total=total, completed=done)
        elif done:
            self.out.print(f"resuming: {done:,} of {total:,} rows already scored")

    def advance(self, rows: int) -> None:
        self.done += rows
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, advance=rows)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            rate = (self.done - self.started_with) / max(now - self.began, 1e-9)
            left = (self.total - self.done) / rate if rate else float("inf")
            eta = time.strftime("%H:%M:%S", time.gmtime(left)) if left < 86400 * 30 else "?"
            share = 100 * self.done / self.total if self.total else 100.0
            self.out.print(
                f"{self.done:,} / {self.total:,} rows ({share:.1f} %), {rate:,.0f} rows/s, "
                f"ETA {eta}"
            )

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def parse_as_of(value: str | None) -> datetime:
    """ISO 8601 (a time without zone is UTC) or ``now``."""
    if value is None or value == "now":
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        example = "2026-12-01T06:00:00+00:00"
        raise _fail(f"--as-of takes an ISO 8601 time such as {example}, got {value!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _triton_url(url: str | None, settings: BatchSettings) -> str:
    if url or settings.triton_url:
        return str(url or settings.triton_url)
    from deploy.local import stack  # the local stack only when no URL was given
    from deploy.local.settings import StackSettings

    state = stack.read_state(StackSettings())
    if state is None or not state.alive():
        raise _fail("no Triton: pass --url HOST:PORT, set BATCH_TRITON_URL, or `tritonstack up`")
    return state.grpc_url


def render_summary(out: Console, summary: Summary) -> None:
    facts = summary.facts
    table = Table(title="batch summary", show_header=False)
    versions = ", ".join(f"{m} v{v}" for m, v in summary.model_versions.items())
    codes = ", ".join(f"{c}: {n}" for c, n in summary.dead_letter_codes.items())
    rows = [
        ("model", f"{summary.model} ({versions})"),
        ("rows in", f"{summary.rows_in:,}"),
        ("rows out", f"{summary.rows_out:,}"),
        ("dead letters", f"{summary.dead_letters:,}" + (f" ({codes})" if codes else "")),
        ("check", f"{summary.rows_in:,} in = {summary.rows_out:,} out + {summary.dead_letters:,} "
                  "dead letters (counted in the files)"),
        ("shards", f"{summary.shards_finished} of {summary.shards} finished; this run "
                   f"{facts.shards_run}, {summary.shards_skipped} were already done"),
        ("time", f"{facts.seconds:.1f} s"),
        ("throughput", f"{summary.rows_per_s:,.1f} rows/s ({facts.rows_run:,} rows this run)"),
        ("requests", f"{facts.requests:,} (batch {facts.batch_size}, {facts.concurrency} in "
                     f"flight, shared memory {facts.shared_memory}, {facts.retries} retried)"),
    ]  # fmt: skip
    if facts.worker[1] > 1:
        rows.append(("worker", f"{facts.worker[0]} of {facts.worker[1]}"))
    rows.append(("complete", "yes" if summary.complete else "no: other workers' shards remain"))
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)
    out.print(f"outputs ({len(summary.outputs)}):")
    for path in summary.outputs[:SHOWN_PATHS]:
        out.print(f"  {path}", highlight=False, soft_wrap=True)
    if len(summary.outputs) > SHOWN_PATHS:
        out.print(f"  ... {len(summary.outputs) - SHOWN_PATHS} more: every path is in summary.json")


def batch(
    model: Annotated[str, typer.Option(help="served model, e.g. minilm (text via minilm_text)")],
    output: Annotated[
        str, typer.Option(help="output folder or fsspec URL: parts, dead letters, manifest")
    ],
    input_: Annotated[
        str | None,
        typer.Option("--input", help="Parquet rows: a file, a folder or an fsspec URL"),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            help="columns fed to the model: COLUMN (one-input model) or COLUMN=INPUT, "
            "comma-separated; default: columns named like the inputs"
        ),
    ] = None,
    keys: Annotated[
        str | None,
        typer.Option(help="columns written beside the outputs (default: all not fed to it)"),
    ] = None,
    entities: Annotated[
        str | None,
        typer.Option(help="Parquet of entity ids (driver_id): features from Feast's offline store"),
    ] = None,
    as_of: Annotated[
        str | None, typer.Option(help="with --entities: the features' time, ISO 8601 (default now)")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="rows per request")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="requests in flight")] = None,
    shard_rows: Annotated[int | None, typer.Option(min=1, help="rows per shard")] = None,
    shared_memory: Annotated[str | None, typer.Option(help="auto, system or none")] = None,
    url: Annotated[str | None, typer.Option(help="Triton gRPC host:port")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Score a Parquet dataset through Triton; resumable, nothing lost (rows in = rows out +
    dead letters). Rerun the same command to resume a stopped run."""
    if (input_ is None) == (entities is None):
        raise _fail("give exactly one of --input (rows) and --entities (entity ids + Feast)")
    if as_of is not None and entities is None:
        raise _fail("--as-of goes with --entities")
    overrides: dict[str, Any] = {
        "batch_size": batch_size, "concurrency": concurrency, "shard_rows": shard_rows,
        "shared_memory": shared_memory,
    }  # fmt: skip
    try:
        settings = BatchSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise _fail(str(exc).replace("\n", " ")) from None
    source = None
    if entities is not None:
        from features.settings import FeatureSettings

        source = FeatureSource(FeatureSettings(), parse_as_of(as_of))
    job = BatchJob(
        model=model,
        input=str(input_ or entities),
        output=output,
        columns=[c for c in (columns or "").split(",") if c] or None,
        keys=[k for k in keys.split(",") if k] if keys is not None else None,
        features=source,
    )
    progress = BarProgress(err if as_json else console)
    try:
        summary = run(job, settings, _triton_url(url, settings), progress)
    except BatchError as exc:
        raise _fail(
            f"{exc}\n(finished shards are kept: rerun the same command to resume)"
        ) from None
    finally:
        progress.stop()
    if as_json:
        typer.echo(json.dumps(summary.as_dict(), indent=2, default=str))
    else:
        render_summary(console, summary)


if __name__ == "__main__":
    typer.run(batch)
