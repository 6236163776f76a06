"""The end of a run: nothing lost, checked against the files themselves; the summary.

For every finished shard: the rows of its part (Parquet footer) plus the lines of its dead
letter file must equal the rows the manifest planned for it, and equal its record. Any
difference raises ``CountMismatchError``. Once every shard of the manifest is finished,
``summary.json`` is written with the totals and the path of every output.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.parquet as pq

from batch.errors import CountMismatchError
from batch.manifest import DEAD_LETTERS, MANIFEST, PARTS, SUMMARY, Manifest, RunStore


@dataclass
class RunFacts:
    """What this invocation did (the rest of the summary comes from the files)."""

    seconds: float
    rows_run: int
    shards_run: int
    batch_size: int
    concurrency: int
    shared_memory: str
    requests: int
    retries: int
    worker: tuple[int, int]


@dataclass
class Summary:
    model: str
    model_versions: dict[str, str]
    output: str
    rows_in: int  # planned rows of the finished shards
    rows_out: int
    dead_letters: int
    dead_letter_codes: dict[str, int]
    shards: int
    shards_finished: int
    shards_skipped: int  # this worker's shards that an earlier run had finished
    complete: bool
    facts: RunFacts
    outputs: list[str] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.facts.rows_run / self.facts.seconds if self.facts.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"rows_per_s": round(self.rows_per_s, 1)}


def _dead_lines(store: RunStore, name: str) -> list[dict[str, Any]]:
    if not store.exists(name):
        return []
    return [json.loads(line) for line in store.read_text(name).splitlines() if line.strip()]


def summarize(store: RunStore, manifest: Manifest, skipped: int, facts: RunFacts) -> Summary:
    """Check every finished shard's files; write ``summary.json`` when all are finished."""
    records = store.records()
    rows_in = rows_out = dead = 0
    codes: dict[str, int] = {}
    outputs = [store.path(MANIFEST)]
    problems = []
    for shard in manifest.shards:
        record = records.get(shard.index)
        if record is None:
            continue
        part = f"{PARTS}/{shard.name}.parquet"
        with store.fs.open(store.path(part), "rb") as fh:
            out = pq.ParquetFile(fh).metadata.num_rows
        letters = _dead_lines(store, f"{DEAD_LETTERS}/{shard.name}.jsonl")
        if out + len(letters) != shard.rows or (out, len(letters)) != (
            record.rows_out,
            record.dead_letters,
        ):
            problems.append(
                f"shard {shard.index}: planned {shard.rows} rows, part holds {out}, dead letters "
                f"{len(letters)} (record: {record.rows_out} + {record.dead_letters})"
            )
        rows_in += shard.rows
        rows_out += out
        dead += len(letters)
        for letter in letters:
            codes[letter["code"]] = codes.get(letter["code"], 0) + 1
        outputs.append(store.path(part))
        if letters:
            outputs.append(store.path(f"{DEAD_LETTERS}/{shard.name}.jsonl"))
    if problems:
        raise CountMismatchError("rows in != rows out + dead letters: " + "; ".join(problems))
    complete = len(records) == len(manifest.shards)
    summary = Summary(
        model=str(manifest.identity["model"]),
        model_versions=dict(manifest.identity["model_versions"]),
        output=store.url,
        rows_in=rows_in,
        rows_out=rows_out,
        dead_letters=dead,
        dead_letter_codes=dict(sorted(codes.items())),
        shards=len(manifest.shards),
        shards_finished=len(records),
        shards_skipped=skipped,
        complete=complete,
        facts=facts,
        outputs=outputs,
    )
    if complete:
        summary.outputs.append(store.path(SUMMARY))
        store.put(SUMMARY, json.dumps(summary.as_dict(), indent=2, default=str).encode())
    return summary
