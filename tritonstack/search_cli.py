"""``tritonstack bench search``: the config search, then (``--apply``) its winner written.

The search (benchmarks/) only measures and returns its winner; writing it into the model
repository is export/'s (:func:`export.tuning.apply_tuned`), called here.
"""

from __future__ import annotations

import shlex
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from benchmarks.perf_analyzer import Protocol
from deploy.local.settings import StackSettings
from tritonstack.console import console, fail, int_list

NOTHING_FITS = 3  # every candidate measured, none within the p99 budget (`make bench` goes on)


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
    apply: Annotated[
        bool,
        typer.Option(
            "--apply/--no-apply",
            "--write/--no-write",
            help="write the winner into the repository (an export operation)",
        ),
    ] = True,
    repository: Annotated[Path, typer.Option(help="model repository")] = Path("model_repository"),
    save: Annotated[Path | None, typer.Option(help="directory for JSON + markdown")] = Path(
        "benchmarks/results"
    ),
) -> None:
    """Search instance count, queue delay and preferred batch sizes under a p99 budget."""
    # deferred on purpose: the search and the apply import torch (seconds)
    from benchmarks import config_search as cs
    from benchmarks.search_report import render_table, save_search
    from export.tuning import apply_tuned

    queue = {"keep": (256,), "off": (0,), "both": (256, 0)}.get(queue_policy)
    if queue is None:
        raise fail(f"--queue-policy must be keep, off or both, got {queue_policy!r}")
    if protocol not in ("grpc", "http"):
        raise fail(f"--protocol must be grpc or http, got {protocol!r}")
    chosen_protocol: Protocol = "grpc" if protocol == "grpc" else "http"
    pref_sets = [tuple(int_list(p, "--preferred")) for p in preferred.split(";")]
    candidates = cs.grid(
        int_list(instances, "--instances"), int_list(delays_us, "--delays-us"), pref_sets, queue
    )
    options = {
        "--p99-budget-ms": f"{p99_budget_ms:g}",
        "--concurrency": concurrency,
        "--instances": instances,
        "--delays-us": delays_us,
        "--preferred": preferred,
        "--queue-policy": queue_policy,
        "--protocol": protocol,
        "--interval-ms": str(interval_ms),
        "--confirm": str(confirm),
        "--tolerance": f"{tolerance:g}",
    }
    command = shlex.join(
        ["tritonstack", "bench", "search", *(x for o in options.items() for x in o)]
    )
    console.print(
        f"{len(candidates)} candidates (+ the current config), budget p99 ≤ "
        f"{p99_budget_ms:g} ms at concurrency {concurrency}"
    )

    def show(m: cs.Measurement) -> None:
        console.print(
            f"  [{m.repeat}] {m.candidate.label}: {m.throughput:.1f} infer/s, "
            f"p99 {m.worst_p99_ms:.1f} ms, low-load p50 {m.low_load_p50_ms:.1f} ms, "
            f"mean batch {m.mean_batch}",
            highlight=False,
        )

    result = cs.search(
        repository,
        StackSettings(),
        budget_ms=p99_budget_ms,
        candidates=candidates,
        concurrency=int_list(concurrency, "--concurrency"),
        protocol=chosen_protocol,
        interval_ms=interval_ms,
        confirm=confirm,
        command=command,
        on_measured=show,
        tolerance=tolerance,
    )
    change = result.change
    if apply and change is not None and result.spec is not None:
        evidence = str(save / f"{date.today().isoformat()}-vm-config-search.md") if save else ""
        result.written = apply_tuned(repository, result.spec, change, evidence or command)
    console.print(render_table(result, p99_budget_ms))
    if result.written:
        console.print(f"wrote {result.written}")
    if save is not None:
        for path in save_search(save, result, p99_budget_ms):
            console.print(f"wrote {path}")
    if result.chosen is None:
        # exit 3: measured fine, nothing fits (make bench goes on to the peers); 1: it broke
        raise fail(
            f"no candidate met p99 ≤ {p99_budget_ms:g} ms; the config is unchanged. A slower "
            "machine needs a larger --p99-budget-ms or a lower top --concurrency",
            code=NOTHING_FITS,
        )
