"""The run's plan and its record of finished shards, in the output directory.

Layout of ``OUTPUT`` (a local folder or an fsspec URL)::

    manifest.json                 what the run is (input files, model + versions, columns) and
                                  its shards; written once, checked by every resume
    parts/part-00012.parquet      shard 12's rows: row_index, the row keys, the model outputs
    dead_letters/part-00012.jsonl shard 12's refused rows, each with its reason (only if any)
    done/00012.json               shard 12's record, written LAST: a shard is finished iff
                                  its record exists, so a killed run redoes only what had
                                  no record, and a finished shard is never redone
    summary.json                  totals and every output path, once every shard is done

Every file is written whole: locally to a temporary name, fsynced and renamed into place
(``os.replace`` is atomic); on object stores one PUT (an object appears whole or not at all).
A shard redone after a kill overwrites its own part, so nothing is ever duplicated.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from batch.errors import ResumeMismatchError
from batch.source import ParquetFileInfo, is_local, open_filesystem

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
PARTS = "parts"
DEAD_LETTERS = "dead_letters"
DONE = "done"
_TMP = ".tmp-"


@dataclass(frozen=True)
class Shard:
    """Whole row groups of one file: rows ``[first_row, first_row + rows)`` of the dataset."""

    index: int
    file: str
    row_groups: tuple[int, ...]
    first_row: int
    rows: int

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"


def plan_shards(files: Iterable[ParquetFileInfo], shard_rows: int) -> list[Shard]:
    """Consecutive row groups of each file, up to ``shard_rows`` rows per shard (a larger row
    group is a shard of its own); empty row groups are skipped. Never crosses files."""
    shards: list[Shard] = []
    first = 0
    for info in files:
        groups: list[int] = []
        rows = 0
        for i, n in enumerate(info.row_groups):
            if n == 0:
                continue
            if groups and rows + n > shard_rows:
                shards.append(Shard(len(shards), info.path, tuple(groups), first, rows))
                first += rows
                groups, rows = [], 0
            groups.append(i)
            rows += n
        if groups:
            shards.append(Shard(len(shards), info.path, tuple(groups), first, rows))
            first += rows
    return shards


def worker_range(shards: int, workers: int, index: int) -> range:
    """The contiguous shard range of worker ``index`` of ``workers`` (sizes differ by <= 1)."""
    base, extra = divmod(shards, workers)
    start = index * base + min(index, extra)
    return range(start, start + base + (index < extra))


@dataclass
class Manifest:
    """What the run is (``identity``: equal for every resume) and how it is split."""

    identity: dict[str, Any]
    shards: list[Shard]
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @property
    def fingerprint(self) -> str:
        blob = json.dumps(self.identity, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def to_json(self) -> str:
        return json.dumps(
            {
                "fingerprint": self.fingerprint,
                "created_at": self.created_at,
                "identity": self.identity,
                "rows": self.rows,
                "shards": [asdict(s) for s in self.shards],
            },
            indent=2,
            default=str,
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        shards = [
            Shard(s["index"], s["file"], tuple(s["row_groups"]), s["first_row"], s["rows"])
            for s in data["shards"]
        ]
        return cls(data["identity"], shards, data["created_at"])


@dataclass
class ShardRecord:
    """What finishing a shard produced (``done/NNNNN.json``)."""

    shard: int
    rows_in: int
    rows_out: int
    dead_letters: int
    part: str
    dead_letter_file: str | None
    seconds: float
    model_versions: dict[str, str]
    finished_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @classmethod
    def from_json(cls, text: str) -> ShardRecord:
        return cls(**json.loads(text))


class RunStore:
    """The output directory: whole-file writes, the manifest, the shard records."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, self.root = open_filesystem(url)
        self.local = is_local(self.fs)

    def path(self, relative: str) -> str:
        return posixpath.join(self.root, relative)

    def exists(self, relative: str) -> bool:
        return bool(self.fs.exists(self.path(relative)))

    def read_text(self, relative: str) -> str:
        return str(self.fs.cat_file(self.path(relative)).decode())

    def listdir(self, relative: str) -> list[str]:
        """File names in ``relative`` (none when it does not exist), temporary files skipped."""
        target = self.path(relative)
        if not self.fs.exists(target):
            return []
        names = [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(target, detail=False)]
        return sorted(n for n in names if not n.startswith(_TMP))

    def put(self, relative: str, data: bytes) -> str:
        """Write ``data`` as ``relative``, whole or not at all; returns the full path."""
        target = self.path(relative)
        parent = posixpath.dirname(target)
        if not self.local:
            self.fs.makedirs(parent, exist_ok=True)
            self.fs.pipe_file(target, data)
            return target
        os.makedirs(parent, exist_ok=True)
        temporary = posixpath.join(parent, f"{_TMP}{uuid.uuid4().hex}-{posixpath.basename(target)}")
        try:
            with open(temporary, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        directory = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)
        return target

    def remove(self, relative: str) -> None:
        if self.exists(relative):
            self.fs.rm(self.path(relative))

    def clean_temporary(self, shards: Iterable[Shard]) -> int:
        """Remove the half-written files a killed run left behind for ``shards`` (only those:
        other workers may be writing theirs into the same folders); how many."""
        mine = set()
        for shard in shards:
            mine |= {f"{shard.name}.parquet", f"{shard.name}.jsonl", f"{shard.index:05d}.json"}
        removed = 0
        for folder in (PARTS, DEAD_LETTERS, DONE):
            target = self.path(folder)
            if not self.fs.exists(target):
                continue
            for path in self.fs.ls(target, detail=False):
                name = posixpath.basename(path.rstrip("/"))
                # .tmp-<32 hex>-<target name>
                if name.startswith(_TMP) and name[len(_TMP) + 33 :] in mine:
                    self.fs.rm(path)
                    removed += 1
        return removed

    # -- the manifest and the records ---------------------------------------------------------
    def start(self, planned: Manifest) -> Manifest:
        """The run's manifest: ``planned`` the first time, else the stored one, whose identity
        must equal ``planned``'s (its shards are kept, so a resume splits the same way)."""
        if not self.exists(MANIFEST):
            self.put(MANIFEST, planned.to_json().encode())
            return planned
        stored = Manifest.from_json(self.read_text(MANIFEST))
        if stored.fingerprint != planned.fingerprint:
            change = describe_change(stored.identity, planned.identity)
            raise ResumeMismatchError(
                f"{self.url} holds a run of something else; {change}. Use another --output, or "
                "delete this one to start over"
            )
        return stored

    def records(self) -> dict[int, ShardRecord]:
        found = {}
        for name in self.listdir(DONE):
            if name.endswith(".json"):
                record = ShardRecord.from_json(self.read_text(f"{DONE}/{name}"))
                found[record.shard] = record
        return found

    def record(self, record: ShardRecord) -> None:
        self.put(f"{DONE}/{record.shard:05d}.json", json.dumps(asdict(record), indent=2).encode())


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Which identity keys differ, e.g. ``model_versions: {'minilm': '1'} -> {'minilm': '2'}``."""
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    parts = []
    for key in changed:
        before, after = old.get(key), new.get(key)
        text = f"{key}: {before!r} -> {after!r}"
        parts.append(text if len(text) < 300 else f"{key} differs")
    return "; ".join(parts) or "the stored manifest differs"
