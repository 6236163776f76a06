"""``tritonstack bench``: the perf_analyzer sweep, the peers side by side, the config search."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from deploy.local.settings import StackSettings

bench_app = typer.Typer(
    help="Benchmarks: perf_analyzer sweep (no sub-command), `peers`, `search`.",
    invoke_without_command=True,
)
console = Console()
err = Console(stderr=True)


NOTHING_FITS = 3  # `bench search`: every candidate measured, none within the p99 budget


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _ints(value: str, option: str) -> list[int]:
    try:
        return [int(c) for c in value.split(",") if c]
    except ValueError:
        raise _fail(f"{option} must be integers separated by commas, got {value!r}") from None


@bench_app.callback()
def bench(
    ctx: typer.Context,
    concurrency: Annotated[
        str, typer.Option(help="evenly spaced points, e.g. 1,4 or 1,2,3")
    ] = "1,4",
    protocol: Annotated[str, typer.Option(help="grpc, http or both")] = "both",
    save: Annotated[Path | None, typer.Option(help="directory for JSON + markdown results")] = None,
    batch_size: Annotated[str, typer.Option(help="request batch sizes (-b), e.g. 1,8")] = "1",
    shared_memory: Annotated[
        str, typer.Option(help="none, system (POSIX shm, same host) or both")
    ] = "none",
    model: Annotated[
        str,
        typer.Option(help="minilm (token ids), minilm_text (raw strings: the ensemble) or both"),
    ] = "minilm",
) -> None:
    """A short perf_analyzer sweep of the served models against the running stack."""
    if ctx.invoked_subcommand is not None:
        return
    from deploy.local import stack
    from tritonstack.demo import perf_sweep

    settings = StackSettings()
    state = stack.read_state(settings)
    if state is None or not state.alive():
        raise _fail("no running stack: start it with `tritonstack up`")
    points = _ints(concurrency, "--concurrency")
    protocols = ("grpc", "http") if protocol == "both" else (protocol,)
    if not set(protocols) <= {"grpc", "http"}:
        raise _fail(f"--protocol must be grpc, http or both, got {protocol!r}")
    shm = ("none", "system") if shared_memory == "both" else (shared_memory,)
    if not set(shm) <= {"none", "system"}:
        raise _fail(f"--shared-memory must be none, system or both, got {shared_memory!r}")
    batches = tuple(_ints(batch_size, "--batch-size"))
    models = ("minilm", "minilm_text") if model == "both" else tuple(model.split(","))
    if not perf_sweep(
        console, settings, state, points, protocols, save_to=save, batch_sizes=batches,
        shared_memory=shm, models=models,
    ):  # fmt: skip
        raise typer.Exit(1)


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
    from benchmarks.compare import main
    from deploy.local.errors import DeployError

    try:
        main(concurrency, batches, systems, seconds, repeats, save)
    except DeployError as exc:  # a peer or our stack did not start
        raise _fail(
            f"{exc}\n(peers need the bench extra: `make bench` or "
            "`.venv/bin/pip install -e '.[bench]' -c requirements/cpu-constraints.txt`)"
        ) from None
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None


@bench_app.command()
def search(
    p99_budget_ms: Annotated[float, typer.Option(help="p99 budget at every concurrency")] = 150.0,
    concurrency: Annotated[
        str, typer.Option(help="perf_analyzer levels: throughput at the last, p50 at the first")
    ] = "1,32",
    instances: Annotated[str, typer.Option(help="instance counts to try")] = "1,2,3",
    delays_us: Annotated[str, typer.Option(help="max_queue_delay_microseconds values")] = (
        "500,4000"
    ),
    preferred: Annotated[
        str, typer.Option(help="preferred batch size sets, ';'-separated ('' = none)")
    ] = ";8,16,32",
    queue_policy: Annotated[
        str, typer.Option(help="keep (max_queue_size 256), off (none) or both")
    ] = "keep",
    protocol: Annotated[str, typer.Option(help="grpc or http")] = "grpc",
    interval_ms: Annotated[int, typer.Option(help="perf_analyzer measurement window")] = 3000,
    confirm: Annotated[int, typer.Option(help="best candidates measured a second time")] = 3,
    tolerance: Annotated[
        float, typer.Option(help="throughput tie band; ties go to the lowest low-load p50")
    ] = 0.03,
    write: Annotated[bool, typer.Option(help="write the winner into the repository")] = True,
    repository: Annotated[Path, typer.Option(help="model repository")] = Path("model_repository"),
    save: Annotated[Path | None, typer.Option(help="directory for JSON + markdown")] = Path(
        "benchmarks/results"
    ),
) -> None:
    """Search instance count, queue delay and preferred batch sizes under a p99 budget."""
    import shlex
    from datetime import date

    from benchmarks import config_search as cs
    from benchmarks.search_report import render_table, save_search

    queue = {"keep": (256,), "off": (0,), "both": (256, 0)}.get(queue_policy)
    if queue is None:
        raise _fail(f"--queue-policy must be keep, off or both, got {queue_policy!r}")
    pref_sets = [tuple(_ints(p, "--preferred")) for p in preferred.split(";")]
    candidates = cs.grid(
        _ints(instances, "--instances"), _ints(delays_us, "--delays-us"), pref_sets, queue
    )
    command = shlex.join(
        ["tritonstack", "bench", "search", "--p99-budget-ms", f"{p99_budget_ms:g}",
         "--concurrency", concurrency, "--instances", instances, "--delays-us", delays_us,
         "--preferred", preferred, "--queue-policy", queue_policy, "--protocol", protocol,
         "--interval-ms", str(interval_ms), "--confirm", str(confirm),
         "--tolerance", f"{tolerance:g}"]
    )  # fmt: skip
    console.print(f"{len(candidates)} candidates (+ the current config), budget p99 ≤ "
                  f"{p99_budget_ms:g} ms at concurrency {concurrency}")  # fmt: skip

    def show(m: cs.Measurement) -> None:
        console.print(
            f"  [{m.repeat}] {m.candidate.label}: {m.throughput:.1f} infer/s, "
            f"p99 {m.worst_p99_ms:.1f} ms, low-load p50 {m.low_load_p50_ms:.1f} ms, "
            f"mean batch {m.mean_batch}",
            highlight=False,
        )

    result = cs.search(
        repository,
        budget_ms=p99_budget_ms,
        candidates=candidates,
        concurrency=_ints(concurrency, "--concurrency"),
        protocol=protocol,
        interval_ms=interval_ms,
        confirm=confirm,
        write=write,
        command=command,
        on_measured=show,
        tolerance=tolerance,
        evidence=str(save / f"{date.today().isoformat()}-vm-config-search.md") if save else "",
    )
    console.print(render_table(result, p99_budget_ms))
    if result.written:
        console.print(f"wrote {result.written}")
    if save is not None:
        for path in save_search(save, result, p99_budget_ms):
            console.print(f"wrote {path}")
    if result.chosen is None:
        # exit 3: measured fine, nothing fits (make bench goes on to the peers); 1: it broke
        raise _fail(
            f"no candidate met p99 ≤ {p99_budget_ms:g} ms; the config is unchanged. A slower "
            "machine needs a larger --p99-budget-ms or a lower top --concurrency",
            code=NOTHING_FITS,
        )
