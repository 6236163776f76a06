"""Batch scoring throughput, side by side in one run: ``tritonstack batch`` (rows/s of a whole
run: read Parquet, send, write parts, check) vs perf_analyzer's best throughput on the same
model, batch size, concurrency and shared-memory setting, vs the in-process ceiling (the
served ``model.onnx`` in ONNX Runtime plus the same tokenizer, no server).

The model is the text pipeline ``minilm_text`` fed with raw sentences: the batch run reads
them from a Parquet column, perf_analyzer from ``--input-data`` holding the same sentences.
One Triton (no response cache) serves every measurement; rounds interleave perf_analyzer and
batch so that drifting load hits both.

    python -m benchmarks.batch_throughput --repository model_repository \\
        --concurrency 1,4 --batch-size 32 --rows 4000 --repeats 2 --save benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer

from batch import BatchJob, BatchSettings, run
from benchmarks.peers.common import OrtEmbedder
from benchmarks.perf_analyzer import run_sweep, write_text_input_data
from benchmarks.report import machine
from deploy.local.harness import triton_server
from deploy.local.settings import StackSettings
from export.reader import read_report, served_dir

MODEL = "minilm"
PIPELINE = "minilm_text"
TARGET = 0.9  # batch rows/s >= 0.9 x perf_analyzer's best (the issue's target)
WORDS = [
    "the", "a", "model", "server", "batch", "request", "triton", "inference", "throughput",
    "latency", "row", "group", "parquet", "file", "shard", "resume", "manifest", "output",
    "column", "text", "sentence", "embedding", "vector", "score", "driver", "feature", "store",
    "offline", "online", "cluster", "node", "pod", "job", "queue", "worker", "thread", "memory",
    "network", "quickly", "slowly", "reads", "writes", "sends", "answers", "measures", "never",
]  # fmt: skip


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct plain sentences of 6-24 words (about 8-30 tokens)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(6, 25)))) + "." for _ in range(n)]


def write_dataset(texts: list[str], rows: int, path: Path) -> Path:
    column = [texts[i % len(texts)] for i in range(rows)]
    pq.write_table(pa.table({"id": np.arange(rows), "text": column}), path, row_group_size=1024)
    return path


class Timeline:
    """A ``batch.Progress`` that notes when rows are answered: the steady-state rate (middle
    80 % of the answering time, as perf_analyzer measures windows) beside the whole run's."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []

    def start(self, total: int, done: int) -> None:
        self.marks = []

    def advance(self, rows: int) -> None:
        self.marks.append((time.perf_counter(), rows))

    def steady_rows_per_s(self) -> float:
        if len(self.marks) < 3:
            return 0.0
        first, last = self.marks[0][0], self.marks[-1][0]
        low, high = first + 0.1 * (last - first), last - 0.1 * (last - first)
        rows = sum(n for t, n in self.marks if low < t <= high)
        return rows / (high - low) if high > low else 0.0


def measure_batch(
    url: str,
    dataset: Path,
    out: Path,
    batch_size: int,
    concurrency: int,
    shm: str,
    by_length: bool = True,
) -> dict[str, Any]:
    settings = BatchSettings(batch_size=batch_size, concurrency=concurrency, shared_memory=shm,
                             shard_rows=1024, sort_by_length=by_length)  # fmt: skip
    timeline = Timeline()
    job = BatchJob(MODEL, str(dataset), str(out), columns=["text"])
    summary = run(job, settings, url, timeline)
    if not summary.complete or summary.dead_letters:
        raise RuntimeError(f"the batch run did not score every row: {summary.as_dict()}")
    return {"rows": summary.facts.rows_run, "seconds": round(summary.facts.seconds, 2),
            "rows_per_s": round(summary.rows_per_s, 1),
            "steady_rows_per_s": round(timeline.steady_rows_per_s(), 1),
            "shared_memory": summary.facts.shared_memory}  # fmt: skip


def ceiling(version_dir: Path, texts: list[str], batch_size: int, seconds: float) -> float:
    """Items/s of tokenizer + ONNX Runtime in this process (all cores), no server."""
    tokenizer = Tokenizer.from_file(str(version_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    model = OrtEmbedder(version_dir / "model.onnx")

    def one(i: int) -> None:
        chunk = [texts[(i * batch_size + j) % len(texts)] for j in range(batch_size)]
        encoded = tokenizer.encode_batch(chunk)
        ids = np.asarray([e.ids for e in encoded], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encoded], dtype=np.int64)
        model.run({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})

    for i in range(2):
        one(i)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        one(done)
        done += 1
    return round(done * batch_size / (time.perf_counter() - start), 1)


def run_all(
    repository: Path,
    *,
    rows: int,
    batch_size: int,
    concurrency: list[int],
    shared_memory: list[str],
    repeats: int,
    interval_ms: int,
    ceiling_s: float,
    work: Path,
) -> dict[str, Any]:
    version_dir = served_dir(repository, MODEL)
    texts = sentences(256)
    dataset = write_dataset(texts, rows, work / "texts.parquet")
    perf_input = write_text_input_data(texts, work / "perf-input.json")
    settings = StackSettings().model_copy(
        update={"model_repository": repository, "startup_timeout_s": 300}
    )
    server = triton_server(settings, work / "triton")
    points: list[dict[str, Any]] = []
    ceilings: list[float] = []
    commands: set[str] = set()
    with server:
        measure_batch(server.grpc_url, write_dataset(texts, 2 * batch_size, work / "warm.parquet"),
                      work / "warm-out", batch_size, 1, "none")  # fmt: skip
        for repeat in range(repeats):
            for c in concurrency:
                for shm in shared_memory:
                    # perf_analyzer before and after the batch runs: their mean is what the
                    # batch runs are compared with (a load that drifts linearly cancels out)
                    for position in ("before", "batch", "after"):
                        if position != "batch":
                            sweep = run_sweep(
                                server.runtime, PIPELINE, server.grpc_url, protocol="grpc",
                                input_data=perf_input, concurrency=[c], out_dir=work / "perf",
                                batch_size=batch_size, measurement_interval_ms=interval_ms,
                                max_trials=3, shared_memory=shm,
                            )  # fmt: skip
                            commands.add(sweep.command_line)
                            (point,) = sweep.points
                            points.append({"system": "perf_analyzer", "repeat": repeat,
                                           "concurrency": c, "shared_memory": shm,
                                           "position": position,
                                           "rows_per_s": round(point.throughput_infer_per_s, 1),
                                           "p50_ms": point.p50_ms})  # fmt: skip
                            continue
                        for system, by_length in (("batch", False), ("batch-by-length", True)):
                            out = work / f"out-{repeat}-{c}-{shm}-{system}"
                            result = measure_batch(server.grpc_url, dataset, out, batch_size, c,
                                                   shm, by_length)  # fmt: skip
                            points.append({"system": system, "repeat": repeat, "concurrency": c,
                                           **result, "shared_memory": shm})  # fmt: skip
            # in the same round, with Triton idle (its stubs do not spin)
            ceilings.append(ceiling(version_dir, texts, batch_size, ceiling_s))
    ceiling_rows = statistics.median(ceilings)
    served = (read_report(version_dir) or {}).get("served", {}).get("variant", "fp32")
    return {"points": points, "ceiling_rows_per_s": ceiling_rows, "ceilings": ceilings,
            "commands": sorted(commands),
            "variant": served, "batch_size": batch_size, "rows": rows}  # fmt: skip


def _values(
    result: dict[str, Any], system: str, c: int, shm: str, key: str = "rows_per_s"
) -> dict[int, float]:
    """Rows/s per round (perf_analyzer: the mean of its runs before and after the batch runs)."""
    found: dict[int, list[float]] = {}
    for p in result["points"]:
        if (p["system"], p["concurrency"], p["shared_memory"]) == (system, c, shm):
            found.setdefault(p["repeat"], []).append(p[key])
    return {r: round(statistics.mean(v), 1) for r, v in found.items()}


def table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (concurrency, shared memory): perf_analyzer's best and median; each batch mode's
    median and its ratio to perf_analyzer around it in the same round (paired: the load of a
    shared machine drifts between rounds), median over rounds."""
    rows = []
    ceiling_rows = result["ceiling_rows_per_s"]
    for c, shm in sorted({(p["concurrency"], p["shared_memory"]) for p in result["points"]}):
        perf = _values(result, "perf_analyzer", c, shm)
        row: dict[str, Any] = {
            "concurrency": c,
            "shared_memory": shm,
            "perf_analyzer_best": max(
                p["rows_per_s"]
                for p in result["points"]
                if (p["system"], p["concurrency"], p["shared_memory"]) == ("perf_analyzer", c, shm)
            ),
            "perf_analyzer_median": statistics.median(perf.values()),
        }
        for system in ("batch", "batch-by-length"):
            mine = _values(result, system, c, shm)
            paired = [mine[r] / perf[r] for r in mine if r in perf]
            row[f"{system}_median"] = round(statistics.median(mine.values()), 1)
            row[f"{system}_vs_perf"] = round(statistics.median(paired), 3)
            row[f"{system}_vs_ceiling"] = round(statistics.median(mine.values()) / ceiling_rows, 3)
            steady = _values(result, system, c, shm, "steady_rows_per_s")
            row[f"{system}_steady_vs_perf"] = round(
                statistics.median(steady[r] / perf[r] for r in steady if r in perf), 3
            )
        row["meets_target"] = row["batch_vs_perf"] >= TARGET  # file order: like for like
        rows.append(row)
    return rows


def to_markdown(result: dict[str, Any], rows: list[dict[str, Any]], note: str) -> str:
    lines = [
        f"# Batch scoring vs perf_analyzer vs in-process ceiling ({date.today().isoformat()})",
        "",
        f"Machine: {result['machine']}. **{note}**",
        "",
        f"Model `{PIPELINE}` (raw sentences -> tokenizer -> `{MODEL}`, served variant "
        f"{result['variant']}), batch size {result['batch_size']}, gRPC. Each batch run scores "
        f"{result['rows']} rows end to end (plan, read Parquet, send, write parts, count); "
        "`batch` sends rows in file order (like perf_analyzer, which cycles through the same "
        "256 sentences), `batch-by-length` as `tritonstack batch` does by default (requests of "
        "similar text lengths, less padding). Ceiling: tokenizer + ONNX Runtime in one "
        f"process at batch {result['batch_size']}, median "
        f"**{result['ceiling_rows_per_s']} rows/s**. Each round runs perf_analyzer, both batch "
        "modes, perf_analyzer again; a batch run's ratio is to the mean of the two "
        "perf_analyzer runs around it, median over rounds; in brackets the same for the batch "
        "run's steady state (rows answered in the middle 80 % of its answering time, as "
        "perf_analyzer measures windows), beside the whole run (start-up and tail included).",
        "",
        "| concurrency | shared memory | perf_analyzer median / best rows/s | batch median | "
        "batch / perf_analyzer (steady) | batch-by-length median | batch-by-length / "
        "perf_analyzer (steady) | batch / ceiling | >= 0.9x |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['concurrency']} | {r['shared_memory']} | {r['perf_analyzer_median']} / "
            f"{r['perf_analyzer_best']} | {r['batch_median']} | {r['batch_vs_perf']} "
            f"({r['batch_steady_vs_perf']}) | {r['batch-by-length_median']} | "
            f"{r['batch-by-length_vs_perf']} ({r['batch-by-length_steady_vs_perf']}) | "
            f"{r['batch_vs_ceiling']} | {'yes' if r['meets_target'] else 'no'} |"
        )
    lines += [
        "",
        f"Every measurement (rounds interleaved; ceilings per round: {result['ceilings']}):",
        "",
        "| system | repeat | concurrency | shared memory | rows/s | steady rows/s |",
        "|---|---|---|---|---|---|",
    ]
    for p in result["points"]:
        name = p["system"] + (f" ({p['position']})" if "position" in p else "")
        lines.append(f"| {name} | {p['repeat']} | {p['concurrency']} | "
                     f"{p['shared_memory']} | {p['rows_per_s']} | "
                     f"{p.get('steady_rows_per_s', '')} |")  # fmt: skip
    lines += ["", "Commands:", "", f"    {result['command']}",
              *(f"    {c}" for c in result["commands"]), ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=StackSettings().model_repository)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--shared-memory", default="system", help="none, system or both")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--interval-ms", type=int, default=5000)
    parser.add_argument("--ceiling-s", type=float, default=15.0)
    parser.add_argument("--note", default="measured while the machine was shared with other work")
    parser.add_argument("--save", type=Path, default=None)
    args = parser.parse_args(argv)
    shm = ["none", "system"] if args.shared_memory == "both" else [args.shared_memory]
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
        result = run_all(
            args.repository, rows=args.rows, batch_size=args.batch_size,
            concurrency=[int(c) for c in args.concurrency.split(",")], shared_memory=shm,
            repeats=args.repeats, interval_ms=args.interval_ms, ceiling_s=args.ceiling_s,
            work=Path(tmp),
        )  # fmt: skip
    result["machine"] = machine("the batch client, perf_analyzer and Triton share the cores")
    result["note"] = args.note
    result["command"] = shlex.join(["python", "-m", "benchmarks.batch_throughput",
                                    *(argv if argv is not None else sys.argv[1:])])  # fmt: skip
    rows = table(result)
    result["summary"] = rows
    markdown = to_markdown(result, rows, args.note)
    print(markdown)
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
        stem = args.save / f"{date.today().isoformat()}-vm-batch"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown)
        print(f"wrote {stem}.json and {stem}.md")
    return 0 if all(r["meets_target"] for r in rows) else 3


if __name__ == "__main__":
    sys.exit(main())
