"""The perf_analyzer sweep of ``tritonstack bench`` and the demo's step 4, and its results.

Per model x protocol x request batch size x shared memory x concurrency, one perf_analyzer
run against a running Triton (one per point: any list of concurrencies works, and each point
is printed as it finishes); then one table of every point with the server-side split. The
plan is checked first (:func:`check_plan`: batch sizes against each model's
``max_batch_size``), so nothing runs that perf_analyzer would refuse. With ``save_to``, the
points and the commands that measured them are written as ``<date>-<host>-perf-analyzer``
JSON and markdown naming the machine, and a latency-throughput plot (PNG) beside them.
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
from export.reader import max_batch_size, served_dir

SENTENCES = [
    "Triton serves the exported model with dynamic batching.",
    "A platform engineer brings a PyTorch model.",
    "The cat sat on the mat.",
    "Embeddings of similar sentences point in similar directions.",
]
MODELS = ("minilm", text_model_name("minilm"))  # the models the sweep has input data for


class SweepError(Exception):
    """The sweep did not finish; the message is one line saying why."""


class SweepPlanError(SweepError, ValueError):
    """A sweep that cannot run as asked; the message says what to change."""


def check_plan(
    repository: Path, models: Sequence[str], concurrency: Sequence[int], batch_sizes: Sequence[int]
) -> None:
    """Refuse, before anything runs, what perf_analyzer or the model would refuse."""
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SweepPlanError(f"--model {','.join(unknown)}: the sweep has inputs for {MODELS}")
    if not concurrency or min(concurrency) < 1:
        raise SweepPlanError(f"--concurrency takes integers >= 1, got {list(concurrency)}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise SweepPlanError(f"--batch-size takes integers >= 1, got {list(batch_sizes)}")
    for model in models:
        try:
            limit = max(max_batch_size(repository, model), 1)  # 0: no batching, one item
        except FileNotFoundError as exc:
            raise SweepPlanError(f"{exc}: run `tritonstack export` first") from None
        too_big = [b for b in batch_sizes if b > limit]
        if too_big:
            raise SweepPlanError(
                f"--batch-size {','.join(map(str, too_big))}: {model} takes at most {limit} "
                f"items per request (max_batch_size in {repository / model / 'config.pbtxt'}); "
                f"use 1..{limit}"
            )


def point_line(p: PerfPoint) -> str:
    return (
        f"{p.model} {p.protocol} batch {p.batch_size} shm {p.shared_memory} concurrency "
        f"{p.concurrency}: {p.throughput_infer_per_s:.1f} infer/s, p50 {p.p50_ms:.1f} ms, "
        f"p99 {p.p99_ms:.1f} ms"
    )


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
    interval_ms: int = 2000,
) -> list[PerfPoint]:
    """Measure every point against the Triton at ``urls`` (host:port per protocol), printing
    each as it finishes, then the table; with ``save_to``, JSON + markdown + plot there.
    Raises :class:`SweepError` (one line) when the plan or a perf_analyzer run failed."""
    check_plan(settings.model_repository, models, concurrency, batch_sizes)
    out_dir = settings.home / "bench"
    tokenizer = served_dir(settings.model_repository, "minilm") / "tokenizer.json"
    inputs = {  # token ids (16 per request) for the encoder, raw sentences for its text pipeline
        "minilm": write_input_data(SENTENCES, tokenizer, out_dir / "minilm-input.json", length=16),
        MODELS[1]: write_text_input_data(SENTENCES, out_dir / "text-input.json"),
    }
    runtime = TritonRuntime(settings.runtime_dir)
    points: list[PerfPoint] = []
    commands = []
    for model, protocol, batch, shm, level in itertools.product(
        models, protocols, batch_sizes, shared_memory, sorted(set(concurrency))
    ):
        where = f"{model} {protocol} batch {batch} shm {shm} concurrency {level}"
        try:
            with console.status(f"perf_analyzer: {where}"):
                sweep = run_sweep(
                    runtime,
                    model,
                    urls[protocol],
                    protocol=protocol,
                    input_data=inputs[model],
                    concurrency=[level],
                    out_dir=out_dir,
                    batch_size=batch,
                    shared_memory=shm,
                    measurement_interval_ms=interval_ms,
                    # 3 windows within 1000 % of each other end a point; 2 more are allowed when
                    # a load spike on a shared machine made one window an outlier
                    max_trials=5,
                )
        except PerfAnalyzerError as exc:
            full = f"; its output: {exc.log}" if exc.log else ""
            raise SweepError(f"perf_analyzer failed ({where}): {exc.cause}{full}") from exc
        points += sweep.points
        commands.append(sweep.command_line)
        for point in sweep.points:
            console.print(point_line(point), highlight=False)
        # one line however wide (a terminal wraps it): a log keeps it copy-and-paste whole
        console.print(f"  $ {sweep.command_line}", style="dim", highlight=False, soft_wrap=True)
    console.print(render_table(points, f"perf_analyzer: {', '.join(models)}"))
    if save_to is not None:
        for path in save_results(save_to, points, commands):
            console.print(f"wrote {path}", highlight=False)
    return points


def save_results(directory: Path, points: list[PerfPoint], commands: list[str]) -> list[Path]:
    """JSON + markdown of a sweep, named by date and machine, with the machine described, and
    its latency-throughput plot (when matplotlib is installed)."""
    directory.mkdir(parents=True, exist_ok=True)
    host = platform.node() or "host"
    stem = directory / f"{time.strftime('%Y-%m-%d')}-{host}-perf-analyzer"
    machine = report.machine("perf_analyzer and Triton share the cores") + (
        "; tritonserver 2.51 python backend + ONNX Runtime CPU"
    )
    data = {"machine": machine, "commands": commands, "points": [p.as_dict() for p in points]}
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    plot = plot_latency_throughput(points, stem.with_suffix(".png"))
    md = (
        f"# perf_analyzer: {', '.join(sorted({p.model for p in points}))}\n\n"
        "Inputs: `minilm` 16 token ids per item; `minilm_text` one raw sentence per item "
        f"(tokenised in Triton).\n\nMachine: {machine}\n\n"
        + to_markdown(points)
        + (f"\n![latency vs throughput]({plot.name})\n" if plot else "")
        + "\nCommands:\n\n"
        + "".join(f"    {c}\n" for c in commands)
    )
    stem.with_suffix(".md").write_text(md)
    written = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    return [*written, plot] if plot else written


def plot_latency_throughput(points: Sequence[PerfPoint], path: Path) -> Path | None:
    """p50 and p99 latency against throughput, one line per model x protocol x batch x shared
    memory, each point labelled with its concurrency (Model Analyzer's main chart). None
    without matplotlib (the dev and bench extras have it)."""
    try:  # deferred on purpose: matplotlib comes with the dev/bench extras, not the runtime
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    key = lambda p: (p.model, p.protocol, p.batch_size, p.shared_memory)  # noqa: E731
    for (model, protocol, batch, shm), group in itertools.groupby(sorted(points, key=key), key):
        series = sorted(group, key=lambda p: p.concurrency)
        label = f"{model} {protocol} b{batch}" + ("" if shm == "none" else f" shm {shm}")
        x = [p.throughput_infer_per_s for p in series]
        (line,) = ax.plot(x, [p.p99_ms for p in series], marker="o", label=f"{label} p99")
        ax.plot(x, [p.p50_ms for p in series], marker=".", linestyle="--", color=line.get_color())
        for p in series:
            ax.annotate(f"c{p.concurrency}", (p.throughput_infer_per_s, p.p99_ms), fontsize=7)
    ax.set_xlabel("throughput (infer/s)")
    ax.set_ylabel("latency (ms): p99 solid, p50 dashed")
    ax.set_title("perf_analyzer: latency vs throughput (labels: concurrency)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
