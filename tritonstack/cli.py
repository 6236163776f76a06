"""``tritonstack``: one CLI over export/, deploy/, benchmarks/ and features/.

Thin: each command parses its options, calls the package that owns the work and prints.
The sub-commands live beside this module (``export_cli``, ``bench_cli``, ``features_cli``).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from deploy.local import stack
from deploy.local.settings import StackSettings
from export.reader import served_file
from tritonstack import export_cli, variants_cli
from tritonstack.batch_cli import batch
from tritonstack.bench_cli import bench_app
from tritonstack.console import console, options, unexpected
from tritonstack.console import fail as _fail
from tritonstack.demo import run_demo
from tritonstack.features_cli import features_app
from tritonstack.infer import Endpoint, InferenceError, Protocol, TextEmbedder
from tritonstack.monitor_cli import capture_app, drift, monitor_app
from tritonstack.rollout_cli import rollout_app
from tritonstack.stack_cli import register as register_stack_commands


class _App(typer.Typer):
    """The app, whose unexpected failures print one line (``--debug``: the traceback)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:  # no command handled it: one line, not 45 of traceback
            sys.exit(unexpected(exc))


app = _App(
    help="Export a PyTorch model, serve it with Triton, query and benchmark it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", envvar="TRITONSTACK_DEBUG", help="print the traceback behind an error"
        ),
    ] = False,
) -> None:
    """Export a PyTorch model, serve it with Triton, query and benchmark it."""
    options.debug = debug


app.command()(export_cli.export)
app.command()(variants_cli.variants)
app.add_typer(features_app, name="features")
app.add_typer(bench_app, name="bench")
app.add_typer(rollout_app, name="rollout")
register_stack_commands(app)  # up, down, status, logs
app.command()(batch)  # batch scoring of a dataset through Triton
app.add_typer(capture_app, name="capture")  # the capture sink
app.add_typer(monitor_app, name="monitor")  # drift + live accuracy gauges, references
app.command()(drift)  # the drift report of a model


@app.command()
def infer(
    texts: Annotated[list[str], typer.Argument(help="texts to embed")],
    protocol: Annotated[str, typer.Option(help="grpc or http (KServe v2 JSON)")] = "grpc",
    model: Annotated[str, typer.Option()] = "minilm",
    url: Annotated[str | None, typer.Option(help="host:port (default: the running stack)")] = None,
    full: Annotated[bool, typer.Option(help="print whole vectors as JSON")] = False,
) -> None:
    """Embed texts with the served model and print the vectors."""
    if protocol not in ("grpc", "http"):
        raise _fail(f"--protocol must be 'grpc' or 'http', got {protocol!r}")
    chosen: Protocol = "grpc" if protocol == "grpc" else "http"
    settings = StackSettings()
    state = stack.read_state(settings)
    if url is None:
        if state is None or not state.alive():
            raise _fail("no running stack: start it with `tritonstack up` or pass --url")
        url = state.grpc_url if protocol == "grpc" else state.http_url
    tokenizer = served_file(settings.model_repository, model, "tokenizer.json")
    try:
        embedder = TextEmbedder(Endpoint(url, chosen), tokenizer, model=model)
        try:
            vectors = embedder.embed(texts)
        finally:
            embedder.close()
    except InferenceError as exc:
        raise _fail(str(exc), cause=exc) from None
    if full:
        typer.echo(json.dumps({"model": model, "embeddings": vectors.tolist()}))
        return
    table = Table(title=f"{model} over {protocol} ({url})")
    for column in ("text", "dim", "norm", "first values"):
        table.add_column(column)
    for text, vec in zip(texts, vectors, strict=True):
        table.add_row(
            text[:40],
            str(vec.shape[0]),
            f"{float((vec**2).sum() ** 0.5):.4f}",
            " ".join(f"{v:+.4f}" for v in vec[:4]),
        )
    console.print(table)


@app.command()
def demo() -> None:
    """The main job: export, start the stack, embed over gRPC and REST, perf_analyzer, summary."""
    raise typer.Exit(run_demo(console))


if __name__ == "__main__":
    app()
