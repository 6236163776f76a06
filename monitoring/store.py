"""The capture store: Parquet parts under any fsspec URL, partitioned for the readers.

Layout (Hive-style, readable by pyarrow.dataset, DuckDB, Spark)::

    ROOT/inferences/date=2026-12-02/model=driver_ranker/version=1/part-<first>_<last>.parquet
    ROOT/feedback/date=.../model=.../version=.../part-<first>_<last>.parquet
    ROOT/reference/model=driver_ranker/version=1/reference.parquet

A part holds the records of one partition out of one batch of stream entries; ``<first>`` and
``<last>`` are its first and last stream ids, and its ``stream_id`` column lists them all. The
name is a function of the content, so writing the same entries again replaces the part with
itself, and the sink can tell which entries a crash left written (:meth:`Store.written_ids`).
A part is durable before it is visible: on a local disk it is written to a temporary name,
fsynced, renamed and its folder fsynced; on an object store a PUT is atomic.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from urllib.parse import quote, unquote

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from monitoring.errors import StoreError

KINDS = ("inferences", "feedback")
# a record's stream id is assigned when the gateway's writer sends it: after its time, by the
# writer's batching and back-off. Parts are pruned by their ids with this much slack.
ID_SLACK_MS = 10 * 60 * 1000


def id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class Part:
    path: str
    first: str
    last: str

    @classmethod
    def parse(cls, path: str) -> Part | None:
        name = path.rsplit("/", 1)[-1]
        if not (name.startswith("part-") and name.endswith(".parquet")):
            return None
        first, _, last = name[5:-8].partition("_")
        try:
            id_key(first), id_key(last)
        except ValueError:
            return None
        return cls(path, first, last)


def _key(name: str, value: str) -> str:
    return f"{name}={quote(value, safe='')}"


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise StoreError(f"cannot open the capture store {url!r}: {exc}") from exc
        self.root = root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)

    # -- paths -------------------------------------------------------------------------------
    def partition(self, kind: str, day: str, model: str, version: str) -> str:
        return f"{self.root}/{kind}/date={day}/{_key('model', model)}/{_key('version', version)}"

    def reference_path(self, model: str, version: str) -> str:
        folder = f"{self.root}/reference/{_key('model', model)}/{_key('version', version)}"
        return f"{folder}/reference.parquet"

    # -- writing -----------------------------------------------------------------------------
    def write_part(self, folder: str, table: pa.Table, first: str, last: str) -> str:
        """Write ``table`` as the part of stream ids ``first``..``last`` in ``folder``, durably."""
        path = f"{folder}/part-{first}_{last}.parquet"
        self.write_table(path, table)
        return path

    def write_table(
        self, path: str, table: pa.Table, metadata: dict[str, str] | None = None
    ) -> None:
        if metadata:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
        folder = path.rsplit("/", 1)[0]
        try:
            self.fs.makedirs(folder, exist_ok=True)
            if not self.local:
                with self.fs.open(path, "wb") as out:
                    pq.write_table(table, out, compression="zstd")
                return
            tmp = f"{folder}/.tmp-{uuid.uuid4().hex}"
            try:
                with open(tmp, "wb") as out:
                    pq.write_table(table, out, compression="zstd")
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc}") from exc

    # -- reading -----------------------------------------------------------------------------
    def parts(self, folder: str) -> list[Part]:
        try:
            names = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        return sorted(
            (p for p in map(Part.parse, names) if p is not None), key=lambda p: id_key(p.first)
        )

    def written_ids(self, folder: str, first: str, last: str) -> set[str]:
        """Stream ids between ``first`` and ``last`` that parts in ``folder`` already hold."""
        lo, hi = id_key(first), id_key(last)
        found: set[str] = set()
        for part in self.parts(folder):
            if id_key(part.last) < lo or id_key(part.first) > hi:
                continue
            with self.fs.open(part.path, "rb") as f:
                found.update(pq.read_table(f, columns=["stream_id"]).column(0).to_pylist())
        return found

    def partitions(
        self, kind: str, model: str, start: datetime, end: datetime
    ) -> Iterator[tuple[str, str]]:
        """``(version, folder)`` of every partition of ``model`` with dates in [start, end]."""
        day = start.astimezone(UTC).date()
        while day <= end.astimezone(UTC).date():
            base = f"{self.root}/{kind}/date={day.isoformat()}/model={quote(model, safe='')}"
            with contextlib.suppress(FileNotFoundError):
                for folder in sorted(self.fs.ls(base, detail=False)):
                    name = folder.rstrip("/").rsplit("/", 1)[-1]
                    if name.startswith("version="):
                        yield unquote(name[8:]), folder.rstrip("/")
            day += timedelta(days=1)

    def read(
        self, kind: str, model: str, start: datetime, end: datetime, version: str | None = None
    ) -> pa.Table | None:
        """Rows of ``model`` (one version, or all with a ``version`` column) timed in
        [start, end]; None when there are none."""
        lo, hi = start.timestamp() * 1000 - ID_SLACK_MS, end.timestamp() * 1000 + ID_SLACK_MS
        tables = []
        for found_version, folder in self.partitions(kind, model, start, end):
            if version is not None and found_version != version:
                continue
            for part in self.parts(folder):
                if id_key(part.last)[0] < lo or id_key(part.first)[0] > hi:
                    continue
                with self.fs.open(part.path, "rb") as f:
                    table = pq.read_table(f)
                tables.append(
                    table.append_column("version", pa.array([found_version] * len(table)))
                )
        if not tables:
            return None
        table = pa.concat_tables(tables, promote_options="permissive")
        times = table.column("time").cast(pa.int64()).to_numpy()
        keep = (times >= start.timestamp() * 1000) & (times <= end.timestamp() * 1000)
        return table.filter(pa.array(keep)) if keep.any() else None

    def models(self, kind: str, days: list[date]) -> set[str]:
        found: set[str] = set()
        for day in days:
            with contextlib.suppress(FileNotFoundError):
                for folder in self.fs.ls(
                    f"{self.root}/{kind}/date={day.isoformat()}", detail=False
                ):
                    name = folder.rstrip("/").rsplit("/", 1)[-1]
                    if name.startswith("model="):
                        found.add(unquote(name[6:]))
        return found

    def read_table(self, path: str) -> pa.Table:
        try:
            with self.fs.open(path, "rb") as f:
                return pq.read_table(f)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
