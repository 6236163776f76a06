"""perf_analyzer's CSV (a real one from 2.51), its input data and its command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.perf_analyzer import (
    PerfAnalyzerError,
    parse_csv,
    perf_analyzer_command,
    to_markdown,
    write_input_data,
)
from export.models.minilm import model_path

DATA = Path(__file__).parent / "data" / "perf_analyzer_2.51_grpc.csv"


def test_parse_real_csv_converts_microseconds_and_sorts() -> None:
    points = parse_csv(DATA, batch_size=1, protocol="grpc")
    assert [p.concurrency for p in points] == [1, 4]
    first = points[0]
    assert first.throughput_infer_per_s == pytest.approx(57.2009, rel=1e-4)
    assert first.p50_ms == pytest.approx(9.012, abs=1e-3)
    assert first.p99_ms == pytest.approx(507.189, abs=1e-3)
    assert first.server_compute_infer_ms == pytest.approx(6.021, abs=1e-3)
    assert first.server_queue_ms == pytest.approx(10.625, abs=1e-3)
    assert first.p50_ms <= first.p90_ms <= first.p95_ms <= first.p99_ms
    assert "| grpc | 1 | 1 | 57.2 |" in to_markdown(points)


def test_parse_rejects_what_is_not_a_perf_analyzer_csv(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(PerfAnalyzerError, match="not a perf_analyzer CSV"):
        parse_csv(path, batch_size=1)


def test_input_data_is_fixed_length_in_vocabulary(tmp_path: Path) -> None:
    out = write_input_data(
        ["hello world", "a much longer sentence " * 8],
        model_path() / "tokenizer.json",
        tmp_path / "in.json",
        length=16,
    )
    data = json.loads(out.read_text())["data"]
    assert len(data) == 2
    for entry in data:
        ids, mask = entry["input_ids"]["content"], entry["attention_mask"]["content"]
        assert entry["input_ids"]["shape"] == [16] and len(ids) == 16
        assert all(0 <= i < 30522 for i in ids) and ids[0] == 101
        assert mask == [int(i != 0) for i in ids]
    assert sum(data[0]["attention_mask"]["content"]) == 4  # [CLS] hello world [SEP]
    assert sum(data[1]["attention_mask"]["content"]) == 16  # truncated


def _command(concurrency: list[int]) -> list[str]:
    return perf_analyzer_command(
        Path("/x/perf_analyzer"),
        "minilm",
        "127.0.0.1:8001",
        protocol="grpc",
        input_data=Path("in.json"),
        concurrency=concurrency,
        batch_size=4,
        measurement_interval_ms=1500,
        max_trials=3,
        csv_path=Path("o.csv"),
    )


def test_command_line_carries_the_sweep() -> None:
    command = _command([4, 1, 7])
    joined = " ".join(command)
    assert command[0] == "/x/perf_analyzer"
    assert "--concurrency-range 1:7:3" in joined and "-b 4" in joined
    assert "-i grpc" in joined and "--input-data in.json" in joined and "-f o.csv" in joined
    assert "--concurrency-range 2 " in " ".join(_command([2])) + " "


def test_uneven_concurrency_is_refused() -> None:
    with pytest.raises(ValueError, match="evenly spaced"):
        _command([1, 2, 8])
    with pytest.raises(ValueError, match="positive"):
        _command([0, 1])
