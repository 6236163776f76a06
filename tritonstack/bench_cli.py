"""``tritonstack bench``: the perf_analyzer sweep, the peers side by side, the config search.

The measuring is benchmarks/'s. ``peers`` imports torch (seconds): its module is imported
inside the command on purpose, so that the sweep and the rest of the CLI start without it.
``search`` is in ``search_cli``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from benchmarks.perf_analyzer import Protocol
from benchmarks.sweep import MODELS, SweepError, check_plan, perf_sweep
from deploy.local import stack
from deploy.local.errors import DeployError
from deploy.local.settings import StackSettings
from tritonstack.console import console, fail, int_list
from tritonstack.search_cli import NOTHING_FITS, search

bench_app = typer.Typer(
    help="Benchmarks: perf_analyzer sweep (no sub-command), `peers`, `search`.",
    invoke_without_command=True,
)
PROTOCOLS: dict[str, tuple[Protocol, ...]] = {
    "grpc": ("grpc",),
    "http": ("http",),
    "both": ("grpc", "http"),
}
__all__ = ["NOTHING_FITS", "bench_app"]


@bench_app.callback()
def bench(
    ctx: typer.Context,
    concurrency: Annotated[
        str, typer.Option(help="concurrency levels, any list, e.g. 1,2,4,8 (one run each)")
    ] = "1,4",
    protocol: Annotated[str, typer.Option(help="grpc, http or both")] = "both",
    save: Annotated[
        Path | None,
        typer.Option(help="directory for <date>-<host>-perf-analyzer.{json,md,png} (the plot)"),
    ] = None,
    batch_size: Annotated[
        str, typer.Option(help="request batch sizes (-b), e.g. 1,8; at most max_batch_size")
    ] = "1",
    shared_memory: Annotated[
        str, typer.Option(help="none, system (POSIX shm, same host) or both")
    ] = "none",
    model: Annotated[
        str,
        typer.Option(help="minilm (token ids), minilm_text (raw strings: the ensemble) or both"),
    ] = "minilm",
    interval_ms: Annotated[
        int, typer.Option(min=100, help="perf_analyzer's measurement window per trial")
    ] = 2000,
) -> None:
    """A perf_analyzer sweep of the served models against the running stack: each point
    printed as it finishes, then the table; --save adds JSON, markdown and a plot."""
    if ctx.invoked_subcommand is not None:
        return
    settings = StackSettings()
    points = int_list(concurrency, "--concurrency")
    protocols = PROTOCOLS.get(protocol)
    if protocols is None:
        raise fail(f"--protocol must be grpc, http or both, got {protocol!r}")
    shm = ("none", "system") if shared_memory == "both" else (shared_memory,)
    if not set(shm) <= {"none", "system"}:
        raise fail(f"--shared-memory must be none, system or both, got {shared_memory!r}")
    batches = tuple(int_list(batch_size, "--batch-size"))
    models = MODELS if model == "both" else tuple(model.split(","))
    state = stack.read_state(settings)
    repository = Path(state.model_repository) if state else settings.model_repository
    try:  # before anything runs: what perf_analyzer or the model would refuse
        check_plan(repository, models, points, batches)
    except SweepError as exc:
        raise fail(str(exc)) from None
    if state is None or not state.alive():
        raise fail("no running stack: start it with `tritonstack up`")
    urls: dict[Protocol, str] = {"grpc": state.grpc_url, "http": state.http_url}
    try:
        perf_sweep(
            console,
            settings.model_copy(update={"model_repository": repository}),
            urls,
            points,
            protocols,
            save_to=save,
            batch_sizes=batches,
            shared_memory=shm,
            models=models,
            interval_ms=interval_ms,
        )
    except SweepError as exc:
        raise fail(str(exc), cause=exc) from None


@bench_app.command()
def peers(
    concurrency: Annotated[str, typer.Option(help="closed-loop concurrency levels")] = "1,8,32",
    batches: Annotated[str, typer.Option(help="in-process ceiling batch sizes")] = "1,8,32",
    systems: Annotated[
        str,
        typer.Option(help="naive-fastapi,ray-serve,litserve,triton-grpc (gateway-miss with it)"),
    ] = "naive-fastapi,ray-serve,litserve,triton-grpc,gateway-miss",
    seconds: Annotated[float, typer.Option(help="measured seconds per point")] = 6.0,
    repeats: Annotated[int, typer.Option(min=1, help="repeats, systems interleaved")] = 2,
    save: Annotated[Path | None, typer.Option(help="directory for JSON, markdown, PNGs")] = Path(
        "benchmarks/results"
    ),
) -> None:
    """Peers side by side (starts and stops each system itself; needs the `bench` extra)."""
    from benchmarks.compare import MissingExtraError, main

    hint = (
        "peers need the bench extra: `make bench` or "
        "`.venv/bin/pip install -e '.[bench]' -c requirements/cpu-constraints.txt`"
    )
    try:
        main(concurrency, batches, systems, seconds, repeats, save, console=console)
    except MissingExtraError as exc:
        raise fail(f"{exc}; {hint}", cause=exc) from None
    except DeployError as exc:  # a peer or our stack did not start: its log tail follows
        raise fail(f"{exc}\n({hint})", cause=exc) from None
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        raise fail(str(exc), cause=exc) from None


bench_app.command()(search)  # after `peers`: the order `--help` lists them in
