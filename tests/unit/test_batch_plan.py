"""Batch scoring without servers: finding Parquet input, planning shards, the output store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.check import RunFacts, summarize
from batch.errors import CountMismatchError, InputError, ResumeMismatchError
from batch.manifest import (
    DONE,
    PARTS,
    Manifest,
    RunStore,
    Shard,
    ShardRecord,
    plan_shards,
    worker_range,
)
from batch.output import parquet_bytes
from batch.source import ParquetDataset, ParquetFileInfo


def _write(path: Path | str, rows: int, group: int, start: int = 0) -> None:
    table = pa.table({"id": np.arange(start, start + rows), "text": [f"t{i}" for i in range(rows)]})
    if isinstance(path, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, row_group_size=group)
    else:
        with fsspec.open(path, "wb") as fh:
            pq.write_table(table, fh, row_group_size=group)


def test_a_folder_is_its_parquet_files_in_order_skipping_markers(tmp_path: Path) -> None:
    _write(tmp_path / "b" / "part-1.parquet", 10, 4)
    _write(tmp_path / "a.parquet", 5, 5)
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".hidden").mkdir()
    _write(tmp_path / ".hidden" / "x.parquet", 3, 3)
    (tmp_path / "notes.txt").write_text("not parquet")
    files = ParquetDataset(str(tmp_path)).files()
    assert [Path(f.path).relative_to(tmp_path).as_posix() for f in files] == [
        "a.parquet",
        "b/part-1.parquet",
    ]
    assert [f.row_groups for f in files] == [(5,), (4, 4, 2)]
    assert files[1].rows == 10 and files[1].size > 0


def test_fsspec_urls_are_read_like_files() -> None:
    _write("memory://batch-unit/in/data.parquet", 7, 3)
    dataset = ParquetDataset("memory://batch-unit/in")
    (info,) = dataset.files()
    assert info.row_groups == (3, 3, 1)
    table = dataset.read(info.path, [1, 2], ["id"])
    assert table.column("id").to_pylist() == [3, 4, 5, 6]


@pytest.mark.parametrize(
    ("url", "match"),
    [("/nowhere/at/all.parquet", "does not exist"), ("nosuchproto://x/y", "cannot open")],
)
def test_missing_input_says_so(url: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        ParquetDataset(url).files()


def test_a_file_that_is_not_parquet_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_text("hello")
    with pytest.raises(InputError, match=r"bad\.parquet: not a readable Parquet file"):
        ParquetDataset(str(bad)).files()


def test_shards_are_whole_row_groups_of_one_file_numbered_across_files() -> None:
    files = [
        ParquetFileInfo("a", 1, (40, 40, 40, 0, 10)),
        ParquetFileInfo("b", 1, (500,)),
        ParquetFileInfo("c", 1, (30, 30)),
    ]
    shards = plan_shards(files, shard_rows=100)
    assert [(s.file, s.row_groups, s.first_row, s.rows) for s in shards] == [
        ("a", (0, 1), 0, 80),
        ("a", (2, 4), 80, 50),  # the empty group 3 is skipped
        ("b", (0,), 130, 500),  # a group larger than shard_rows is a shard of its own
        ("c", (0, 1), 630, 60),
    ]
    assert [s.index for s in shards] == [0, 1, 2, 3]
    assert sum(s.rows for s in shards) == sum(f.rows for f in files)


@pytest.mark.parametrize(("shards", "workers"), [(10, 3), (2, 4), (7, 7), (100, 1)])
def test_worker_ranges_cover_every_shard_once(shards: int, workers: int) -> None:
    ranges = [worker_range(shards, workers, i) for i in range(workers)]
    covered = [i for r in ranges for i in r]
    assert covered == list(range(shards))
    assert max(len(r) for r in ranges) - min(len(r) for r in ranges) <= 1


def _manifest(model_version: str = "1") -> Manifest:
    shards = [Shard(0, "a", (0,), 0, 3), Shard(1, "a", (1,), 3, 2)]
    return Manifest({"model": "m", "model_versions": {"m": model_version}, "keys": ["id"]}, shards)


def test_manifest_is_written_once_and_a_resume_must_match(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "out"))
    first = store.start(_manifest())
    again = RunStore(str(tmp_path / "out")).start(_manifest())
    assert again.fingerprint == first.fingerprint and again.shards == first.shards
    with pytest.raises(ResumeMismatchError, match=r"model_versions: \{'m': '1'\} -> \{'m': '2'\}"):
        store.start(_manifest(model_version="2"))


def test_writes_are_whole_and_leftovers_of_a_kill_are_cleaned(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path))
    store.put(f"{PARTS}/part-00000.parquet", b"first")
    store.put(f"{PARTS}/part-00000.parquet", b"second")  # a redone shard replaces its part
    assert (tmp_path / PARTS / "part-00000.parquet").read_bytes() == b"second"
    half = f".tmp-{'a' * 32}-part-00001.parquet"  # a kill mid-write
    theirs = f".tmp-{'b' * 32}-part-00002.parquet"  # another worker, writing now
    for name in (half, theirs):
        (tmp_path / PARTS / name).write_bytes(b"half")
    assert store.listdir(PARTS) == ["part-00000.parquet"]
    assert store.clean_temporary([Shard(1, "a", (1,), 3, 2)]) == 1
    assert sorted(os.listdir(tmp_path / PARTS)) == [theirs, "part-00000.parquet"]


def test_object_store_outputs_use_one_put(tmp_path: Path) -> None:
    store = RunStore("memory://batch-unit/out")
    store.start(_manifest())
    store.record(ShardRecord(0, 3, 3, 0, "p", None, 0.1, {"m": "1"}))
    assert set(store.records()) == {0}
    assert json.loads(store.read_text("manifest.json"))["rows"] == 5


def _facts() -> RunFacts:
    return RunFacts(1.0, 5, 2, 32, 4, "none", 2, 0, (0, 1))


def test_the_final_check_counts_the_files_not_the_records(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path))
    manifest = store.start(_manifest())
    part = pa.table({"row_index": pa.array([0, 1], pa.int64())})
    store.put(f"{PARTS}/part-00000.parquet", parquet_bytes(part))
    letter = {"row_index": 2, "code": "null", "reason": "r", "file": "a", "keys": {}, "input": {}}
    store.put("dead_letters/part-00000.jsonl", (json.dumps(letter) + "\n").encode())
    store.record(ShardRecord(0, 3, 2, 1, "p", "d", 0.1, {"m": "1"}))
    summary = summarize(store, manifest, 0, _facts())
    assert (summary.rows_in, summary.rows_out, summary.dead_letters) == (3, 2, 1)
    assert summary.dead_letter_codes == {"null": 1} and not summary.complete
    assert not (tmp_path / "summary.json").exists()  # shard 1 is not finished

    store.put(f"{PARTS}/part-00001.parquet", parquet_bytes(part.slice(0, 1)))  # 1 of 2 rows
    store.record(ShardRecord(1, 2, 2, 0, "p", None, 0.1, {"m": "1"}))  # the record says 2
    with pytest.raises(CountMismatchError, match="shard 1: planned 2 rows, part holds 1"):
        summarize(store, manifest, 0, _facts())

    store.put(f"{PARTS}/part-00001.parquet", parquet_bytes(part))
    summary = summarize(store, manifest, 0, _facts())
    assert summary.complete and summary.rows_in == summary.rows_out + summary.dead_letters == 5
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["outputs"][-1].endswith("summary.json") and written["rows_out"] == 4
    assert (tmp_path / DONE / "00001.json").exists()
