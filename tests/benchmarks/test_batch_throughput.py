"""The batch benchmark's arithmetic: batch runs against the perf_analyzer runs around them."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.batch_throughput import Timeline, sentences, table, to_markdown, write_dataset


def _point(system: str, repeat: int, rows: float, position: str | None = None) -> dict:
    point = {"system": system, "repeat": repeat, "concurrency": 4, "shared_memory": "system",
             "rows_per_s": rows}  # fmt: skip
    if position:
        return point | {"position": position}
    return point | {"steady_rows_per_s": rows * 1.1}


def test_ratios_pair_each_batch_run_with_the_perf_analyzer_runs_around_it() -> None:
    points = [
        # round 0: the machine slows down during the round; round 1: a quiet round
        _point("perf_analyzer", 0, 200.0, "before"), _point("batch", 0, 150.0),
        _point("batch-by-length", 0, 180.0), _point("perf_analyzer", 0, 100.0, "after"),
        _point("perf_analyzer", 1, 300.0, "before"), _point("batch", 1, 270.0),
        _point("batch-by-length", 1, 330.0), _point("perf_analyzer", 1, 300.0, "after"),
        _point("perf_analyzer", 2, 100.0, "before"), _point("batch", 2, 80.0),
        _point("batch-by-length", 2, 120.0), _point("perf_analyzer", 2, 100.0, "after"),
    ]  # fmt: skip
    result = {"points": points, "ceiling_rows_per_s": 200.0, "ceilings": [200.0], "rows": 10,
              "variant": "fp32", "batch_size": 32, "machine": "m", "command": "c",
              "commands": ["perf_analyzer ..."]}  # fmt: skip
    (row,) = table(result)
    assert row["perf_analyzer_best"] == 300.0 and row["perf_analyzer_median"] == 150.0
    # paired ratios: 150/150, 270/300, 80/100 -> median 0.9; by length 1.2, 1.1, 1.2
    assert row["batch_vs_perf"] == 0.9 and row["meets_target"]
    assert row["batch-by-length_vs_perf"] == 1.2 and row["batch_steady_vs_perf"] == 0.99
    assert row["batch_median"] == 150.0 and row["batch_vs_ceiling"] == 0.75
    markdown = to_markdown(result, [row], "measured while the machine was shared")
    assert "| 4 | system | 150.0 / 300.0 | 150.0 | 0.9 (0.99) |" in markdown
    assert "perf_analyzer (after) | 0 |" in markdown


def test_the_steady_rate_leaves_out_start_and_tail() -> None:
    timeline = Timeline()
    timeline.start(100, 0)
    timeline.marks = [(0.0, 10), *((float(t), 10) for t in range(1, 10)), (10.0, 1)]
    # window (1, 9]: rows answered at t = 2..9, eight marks of 10 rows over 8 s
    assert timeline.steady_rows_per_s() == 10.0


def test_the_dataset_holds_the_sentences_perf_analyzer_gets(tmp_path: Path) -> None:
    texts = sentences(5, seed=1)
    assert len(set(texts)) == 5 and all(6 <= len(t.split()) <= 24 for t in texts)
    table_ = pq.read_table(write_dataset(texts, 12, tmp_path / "d.parquet"))
    assert table_.column("text").to_pylist() == [texts[i % 5] for i in range(12)]
