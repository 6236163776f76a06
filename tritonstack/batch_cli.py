"""``tritonstack batch``: score a Parquet dataset (or entity ids) through Triton. Thin: it
parses, calls ``batch.run`` and prints the progress and the summary.

Also runs alone (the batch image's entry point): ``python -m tritonstack.batch_cli --model ...``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from batch import BatchError, BatchJob, BatchSettings, FeatureSource, run
from tritonstack.batch_view import BarProgress, render_summary
from tritonstack.console import console, err
from tritonstack.console import fail as _fail


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
