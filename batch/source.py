"""Parquet input: a file, a folder of files or an fsspec URL, read one row group at a time.

Only footers are read to plan a run (row counts per row group); a shard then reads its row
groups, only the columns it needs. A folder is every ``*.parquet`` / ``*.parq`` file under it
(recursively, sorted by path), skipping names that start with ``_`` or ``.`` (``_SUCCESS``,
``.crc`` files of Spark and friends).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from batch.errors import InputError

SUFFIXES = (".parquet", ".parq")


def open_filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``url`` (a local path, ``file://``, ``s3://``, ``memory://`` ...)
    and the path inside it."""
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:  # an unknown protocol or its package missing
        raise InputError(f"cannot open {url!r}: {exc}") from None
    return fs, str(path)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


@dataclass(frozen=True)
class ParquetFileInfo:
    """One input file as its footer describes it."""

    path: str
    size: int
    row_groups: tuple[int, ...]  # rows of each row group

    @property
    def rows(self) -> int:
        return sum(self.row_groups)


class ParquetDataset:
    """The Parquet files behind ``url``; reads row groups of one file at a time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, self.root = open_filesystem(url)
        self._schemas: dict[str, pa.Schema] = {}

    def _paths(self) -> list[str]:
        if not self.fs.exists(self.root):
            raise InputError(f"input {self.url!r} does not exist")
        if not self.fs.isdir(self.root):
            return [self.root]
        found = []
        for path in sorted(self.fs.find(self.root)):
            relative = posixpath.relpath(path, self.root)
            if any(part.startswith(("_", ".")) for part in relative.split("/")):
                continue
            if path.endswith(SUFFIXES):
                found.append(path)
        if not found:
            raise InputError(f"input folder {self.url!r} holds no *.parquet files")
        return found

    def files(self) -> list[ParquetFileInfo]:
        """Every input file with its row-group sizes (footers only)."""
        infos = []
        for path in self._paths():
            try:
                with self.fs.open(path, "rb") as fh:
                    parquet = pq.ParquetFile(fh)
                    meta = parquet.metadata
                    self._schemas[path] = parquet.schema_arrow
                    groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
                size = int(self.fs.size(path) or 0)
            except (OSError, pa.ArrowInvalid) as exc:
                raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
            infos.append(ParquetFileInfo(path, size, groups))
        return infos

    def schema(self, path: str) -> pa.Schema:
        if path not in self._schemas:
            with self.fs.open(path, "rb") as fh:
                self._schemas[path] = pq.ParquetFile(fh).schema_arrow
        return self._schemas[path]

    def read(self, path: str, row_groups: Sequence[int], columns: Sequence[str]) -> pa.Table:
        """``columns`` of ``row_groups`` of one file, in file order."""
        try:
            with self.fs.open(path, "rb") as fh:
                return pq.ParquetFile(fh).read_row_groups(list(row_groups), columns=list(columns))
        except (OSError, pa.ArrowInvalid, KeyError) as exc:
            groups = list(row_groups)
            raise InputError(f"{path}: reading row groups {groups} failed: {exc}") from None
