"""Drive the real ``perf_analyzer`` (tritonclient 2.51 wheel) and read its CSV.

Text models need real token ids (random INT64 data would index outside the vocabulary), so
:func:`write_input_data` tokenises sample texts into perf_analyzer's ``--input-data`` JSON.
"""

from __future__ import annotations

import csv
import itertools
import json
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from rich.table import Table
from tokenizers import Tokenizer

from deploy.local.runtime import TritonRuntime

Protocol = Literal["grpc", "http"]


class PerfAnalyzerError(Exception):
    """perf_analyzer failed or timed out; the message carries the end of its output, ``cause``
    the one line of it that says why, ``log`` the file with all of it."""

    def __init__(self, message: str, cause: str = "", log: Path | None = None) -> None:
        super().__init__(message)
        self.cause = cause or message.splitlines()[0]
        self.log = log


def cause_line(output: str) -> str:
    """The line of perf_analyzer's output that says why it failed: the last one that reads like
    an error (perf_analyzer prints the cause last, after pages of progress), else the last."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [
        line
        for line in lines
        if any(w in line.lower() for w in ("error", "failed", "exceed", "invalid", "unable"))
    ]
    return (errors or lines or ["no output"])[-1][:300]


@dataclass(frozen=True)
class PerfPoint:
    """One measured point of a sweep; latencies in milliseconds."""

    protocol: str
    concurrency: int
    batch_size: int
    throughput_infer_per_s: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float
    server_queue_ms: float
    server_compute_input_ms: float
    server_compute_infer_ms: float
    server_compute_output_ms: float
    client_send_ms: float
    client_recv_ms: float
    shared_memory: str = "none"  # none | system (inputs/outputs through POSIX shared memory)
    model: str = "minilm"

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def write_input_data(
    texts: Sequence[str], tokenizer_json: Path, out: Path, length: int = 16
) -> Path:
    """perf_analyzer ``--input-data`` JSON: each text tokenised, padded/truncated to ``length``."""
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.enable_truncation(max_length=length)
    tokenizer.enable_padding(length=length, pad_id=0, pad_token="[PAD]")
    encoded = tokenizer.encode_batch(list(texts))
    return write_token_input_data([(e.ids, e.attention_mask, e.type_ids) for e in encoded], out)


def write_token_input_data(
    rows: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]], out: Path
) -> Path:
    """perf_analyzer ``--input-data`` JSON of token rows ``(ids, attention_mask, type_ids)``,
    one request each (perf_analyzer cycles through them)."""
    data = [
        {
            "input_ids": {"content": list(ids), "shape": [len(ids)]},
            "attention_mask": {"content": list(mask), "shape": [len(mask)]},
            "token_type_ids": {"content": list(types), "shape": [len(types)]},
        }
        for ids, mask, types in rows
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": data}))
    return out


def write_text_input_data(texts: Sequence[str], out: Path, name: str = "text") -> Path:
    """perf_analyzer ``--input-data`` JSON for a text pipeline: one raw string per request
    (a BYTES input of shape [1]), tokenised inside Triton."""
    data = [{name: {"content": [t], "shape": [1]}} for t in texts]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": data}))
    return out


def perf_analyzer_command(
    binary: Path,
    model: str,
    url: str,
    *,
    protocol: Protocol,
    input_data: Path,
    concurrency: Sequence[int],
    batch_size: int,
    measurement_interval_ms: int,
    max_trials: int,
    csv_path: Path,
    shared_memory: str = "none",
) -> list[str]:
    """The perf_analyzer command line of one sweep (concurrency as start:end:step).

    ``shared_memory="system"`` passes tensors through POSIX shared memory (client and server
    on one host; gRPC and HTTP); ``cuda`` needs a GPU.
    """
    if shared_memory not in ("none", "system", "cuda"):
        raise ValueError(f"shared_memory must be none, system or cuda, got {shared_memory!r}")
    if not concurrency or min(concurrency) < 1:
        raise ValueError(f"concurrency must be positive integers, got {list(concurrency)}")
    points = sorted(set(concurrency))
    if len(points) == 1:
        cr = str(points[0])
    else:
        steps = {b - a for a, b in itertools.pairwise(points)}
        if len(steps) != 1:  # --concurrency-range is start:end:step
            raise ValueError(
                f"one perf_analyzer run takes evenly spaced concurrency points, got {points}: "
                "run one per point (benchmarks.sweep does)"
            )
        cr = f"{points[0]}:{points[-1]}:{steps.pop()}"
    return [
        str(binary),
        "-m", model,
        "-u", url,
        "-i", protocol,
        "-b", str(batch_size),
        "--input-data", str(input_data),
        "--concurrency-range", cr,
        "--measurement-interval", str(measurement_interval_ms),
        "--max-trials", str(max_trials),
        # Shared 2-core machines never give perf_analyzer's default 10 % stability; keep every
        # window it measured rather than fail the sweep, and report the spread via p99.
        "--stability-percentage", "1000",
        "-f", str(csv_path),
        "--verbose-csv",
        *(["--shared-memory", shared_memory] if shared_memory != "none" else []),
    ]  # fmt: skip


def _ms(row: dict[str, str], column: str) -> float:
    return float(row.get(column) or 0) / 1000.0  # perf_analyzer's CSV is in microseconds


def parse_csv(
    path: Path,
    batch_size: int,
    protocol: str = "grpc",
    shared_memory: str = "none",
    model: str = "minilm",
) -> list[PerfPoint]:
    """Points of a perf_analyzer ``-f`` CSV, sorted by concurrency."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "Inferences/Second" not in rows[0]:
        raise PerfAnalyzerError(f"{path} is not a perf_analyzer CSV (columns: {list(rows[:1])})")
    points = [
        PerfPoint(
            protocol=protocol,
            concurrency=int(row["Concurrency"]),
            batch_size=batch_size,
            throughput_infer_per_s=float(row["Inferences/Second"]),
            p50_ms=_ms(row, "p50 latency"),
            p90_ms=_ms(row, "p90 latency"),
            p95_ms=_ms(row, "p95 latency"),
            p99_ms=_ms(row, "p99 latency"),
            avg_ms=_ms(row, "Avg latency"),
            server_queue_ms=_ms(row, "Server Queue"),
            server_compute_input_ms=_ms(row, "Server Compute Input"),
            server_compute_infer_ms=_ms(row, "Server Compute Infer"),
            server_compute_output_ms=_ms(row, "Server Compute Output"),
            client_send_ms=_ms(row, "Client Send"),
            client_recv_ms=_ms(row, "Client Recv"),
            shared_memory=shared_memory,
            model=model,
        )
        for row in rows
    ]
    return sorted(points, key=lambda p: p.concurrency)


@dataclass
class Sweep:
    command: list[str]
    points: list[PerfPoint]

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)


def run_sweep(
    runtime: TritonRuntime,
    model: str,
    url: str,
    *,
    protocol: Protocol,
    input_data: Path,
    concurrency: Sequence[int],
    out_dir: Path,
    batch_size: int = 1,
    measurement_interval_ms: int = 2000,
    max_trials: int = 3,
    timeout_s: float = 300.0,
    shared_memory: str = "none",
) -> Sweep:
    """Run perf_analyzer against a running Triton and return the command and its points."""
    out_dir.mkdir(parents=True, exist_ok=True)
    levels = "_".join(map(str, sorted(set(concurrency))))
    csv_path = out_dir / f"perf-{model}-{protocol}-b{batch_size}-shm-{shared_memory}-c{levels}.csv"
    csv_path.unlink(missing_ok=True)
    command = perf_analyzer_command(
        runtime.perf_analyzer,
        model,
        url,
        protocol=protocol,
        input_data=input_data,
        concurrency=concurrency,
        batch_size=batch_size,
        measurement_interval_ms=measurement_interval_ms,
        max_trials=max_trials,
        csv_path=csv_path,
        shared_memory=shared_memory,
    )
    try:
        done = subprocess.run(
            command,
            env=runtime.perf_analyzer_env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # run() has killed it by now
        log = _write_log(csv_path, command, _tail(exc.stdout, exc.stderr, chars=10**6))
        raise PerfAnalyzerError(
            f"perf_analyzer did not finish within {timeout_s:g} s (killed): "
            f"{shlex.join(command)}\n{_tail(exc.stdout, exc.stderr)}",
            f"did not finish within {timeout_s:g} s (killed)",
            log,
        ) from exc
    if done.returncode != 0 or not csv_path.is_file():
        output = _tail(done.stdout, done.stderr, chars=10**6)
        raise PerfAnalyzerError(
            f"perf_analyzer exited with {done.returncode}"
            f"{'' if done.returncode else ' but wrote no CSV'}: {shlex.join(command)}\n"
            f"{_tail(done.stdout, done.stderr)}",
            cause_line(output) if done.returncode else "exited with 0 but wrote no CSV",
            _write_log(csv_path, command, output),
        )
    return Sweep(command, parse_csv(csv_path, batch_size, protocol, shared_memory, model))


def _write_log(csv_path: Path, command: list[str], output: str) -> Path:
    """perf_analyzer's whole output beside its CSV, under the command that produced it."""
    log = csv_path.with_suffix(".log")
    log.write_text(f"$ {shlex.join(command)}\n{output}")
    return log


def _tail(*streams: str | bytes | None, chars: int = 2000) -> str:
    """The last ``chars`` characters of the captured output (bytes after a timeout)."""
    text = "".join(
        s.decode("utf-8", "replace") if isinstance(s, bytes) else (s or "") for s in streams
    )
    return text[-chars:]


def render_table(points: Sequence[PerfPoint], title: str = "perf_analyzer") -> Table:
    table = Table(title=title)
    columns = (
        "model",
        "proto",
        "conc",
        "batch",
        "infer/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "queue ms",
        "in ms",
        "infer ms",
        "out ms",
        "shm",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for p in points:
        table.add_row(
            p.model,
            p.protocol,
            str(p.concurrency),
            str(p.batch_size),
            f"{p.throughput_infer_per_s:.1f}",
            f"{p.p50_ms:.1f}",
            f"{p.p95_ms:.1f}",
            f"{p.p99_ms:.1f}",
            f"{p.server_queue_ms:.2f}",
            f"{p.server_compute_input_ms:.2f}",
            f"{p.server_compute_infer_ms:.2f}",
            f"{p.server_compute_output_ms:.2f}",
            p.shared_memory,
        )
    return table


def to_markdown(points: Sequence[PerfPoint]) -> str:
    header = (
        "| model | protocol | concurrency | batch | infer/s | p50 ms | p95 ms | p99 ms | "
        "server queue ms | server infer ms | server input ms | server output ms | shared memory |"
    )
    lines = [header, "|" + "---|" * 13]
    lines += [
        f"| {p.model} | {p.protocol} | {p.concurrency} | {p.batch_size} | "
        f"{p.throughput_infer_per_s:.1f} | "
        f"{p.p50_ms:.1f} | {p.p95_ms:.1f} | {p.p99_ms:.1f} | {p.server_queue_ms:.2f} | "
        f"{p.server_compute_infer_ms:.2f} | {p.server_compute_input_ms:.2f} | "
        f"{p.server_compute_output_ms:.2f} | {p.shared_memory} |"
        for p in points
    ]
    return "\n".join(lines) + "\n"
