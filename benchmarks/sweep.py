"""The perf_analyzer sweep of ``tritonstack bench`` and the demo's step 4, and its results.

Per model x protocol x request batch size x shared memory, one :func:`run_sweep` against a
running Triton; one table of every point with the server-side split. With ``save_to``, the
points and the commands that measured them are written as ``<date>-<host>-perf-analyzer``
JSON and markdown, naming the machine.
"""

from __future__ import annotations

import itertools
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from benchmarks import report
from benchmarks.perf_analyzer import (
    PerfAnalyzerError,
    PerfPoint,
    Protocol,
    render_table,
    run_sweep,
    to_markdown,
    write_input_data,
    write_text_input_data,
)
from deploy.local.runtime import TritonRuntime
from deploy.local.settings import StackSettings
from export.naming import text_model_name
from export.reader import served_dir

SENTENCES = [
    "Triton serves the exported model with dynamic batching.",
    "A platform engineer brings a PyTorch model.",
    "The cat sat on the mat.",
    "Embeddings of similar sentences point in similar directions.",
]


def perf_sweep(
    console: Console,
    settings: StackSettings,
    urls: dict[Protocol, str],
    concurrency: list[int],
    protocols: Sequence[Protocol] = ("grpc", "http"),
    save_to: Path | None = None,
    batch_sizes: tuple[int, ...] = (1,),
    shared_memory: tuple[str, ...] = ("none",),
    models: tuple[str, ...] = ("minilm",),
) -> bool:
    """A short perf_analyzer sweep per protocol (x request batch size x shared memory) against
    the Triton at ``urls`` (host:port per protocol); prints the table with the server-side split.

    With ``save_to``, also writes ``<date>-<host>.json`` and ``.md`` there (commands included).
    """
    out_dir = settings.home / "bench"
    tokenizer = served_dir(settings.model_repository, "minilm") / "tokenizer.json"
    inputs = {  # token ids (16 per request) for the encoder, raw sentences for its text pipeline
        "minilm": write_input_data(SENTENCES, tokenizer, out_dir / "minilm-input.json", length=16),
        text_model_name("minilm"): write_text_input_data(SENTENCES, out_dir / "text-input.json"),
    }
    unknown = set(models) - set(inputs)
    if unknown:
        console.print(f"[red]no perf_analyzer input for {sorted(unknown)}[/]: use {list(inputs)}")
        return False
    runtime = TritonRuntime(settings.runtime_dir)
    points: list[PerfPoint] = []
    commands = []
    for model, protocol, batch, shm in itertools.product(
        models, protocols, batch_sizes, shared_memory
    ):
        try:
            with console.status(
                f"perf_analyzer: {model} over {protocol}, concurrency {concurrency}, batch "
                f"{batch}, shared memory {shm}"
            ):
                sweep = run_sweep(
                    runtime,
                    model,
                    urls[protocol],
                    protocol=protocol,
                    input_data=inputs[model],
                    concurrency=concurrency,
                    out_dir=out_dir,
                    batch_size=batch,
                    shared_memory=shm,
                )
        except PerfAnalyzerError as exc:
            console.print(f"[red]perf_analyzer failed[/]: {exc}")
            return False
        # one line however wide (a terminal wraps it): a log keeps it copy-and-paste whole
        console.print(f"[dim]$ {sweep.command_line}[/]", highlight=False, soft_wrap=True)
        points += sweep.points
        commands.append(sweep.command_line)
    console.print(render_table(points, f"perf_analyzer: {', '.join(models)}"))
    if save_to is not None:
        for path in save_results(save_to, points, commands):
            console.print(f"wrote {path}")
    return True


def save_results(directory: Path, points: list[PerfPoint], commands: list[str]) -> list[Path]:
    """JSON + markdown of a sweep, named by date and machine, with the machine described."""
    directory.mkdir(parents=True, exist_ok=True)
    host = platform.node() or "host"
    stem = directory / f"{time.strftime('%Y-%m-%d')}-{host}-perf-analyzer"
    machine = report.machine("perf_analyzer and Triton share the cores") + (
        "; tritonserver 2.51 python backend + ONNX Runtime CPU"
    )
    data = {"machine": machine, "commands": commands, "points": [p.as_dict() for p in points]}
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    md = (
        f"# perf_analyzer: {', '.join(sorted({p.model for p in points}))}\n\n"
        "Inputs: `minilm` 16 token ids per item; `minilm_text` one raw sentence per item "
        f"(tokenised in Triton).\n\nMachine: {machine}\n\n"
        + to_markdown(points)
        + "\nCommands:\n\n"
        + "".join(f"    {c}\n" for c in commands)
    )
    stem.with_suffix(".md").write_text(md)
    return [stem.with_suffix(".json"), stem.with_suffix(".md")]
