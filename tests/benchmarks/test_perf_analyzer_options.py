"""perf_analyzer sweeps with request batch sizes and shared memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.perf_analyzer import parse_csv, perf_analyzer_command, to_markdown

DATA = Path(__file__).resolve().parents[1] / "unit" / "data"


def _command(shm: str) -> list[str]:
    return perf_analyzer_command(
        Path("/x/perf_analyzer"), "minilm", "127.0.0.1:8001", protocol="http",
        input_data=Path("in.json"), concurrency=[1, 4], batch_size=8,
        measurement_interval_ms=1000, max_trials=3, csv_path=Path("o.csv"), shared_memory=shm,
    )  # fmt: skip


def test_shared_memory_and_batch_size_reach_the_command_line() -> None:
    joined = " ".join(_command("system"))
    assert "--shared-memory system" in joined and "-b 8" in joined
    assert "--shared-memory" not in " ".join(_command("none"))
    with pytest.raises(ValueError, match="shared_memory"):
        _command("posix")


def test_points_carry_the_shared_memory_mode_and_the_split() -> None:
    csv = next(iter(sorted(DATA.glob("*.csv"))))
    points = parse_csv(csv, batch_size=8, protocol="grpc", shared_memory="system")
    assert points and all(p.shared_memory == "system" and p.batch_size == 8 for p in points)
    md = to_markdown(points)
    assert "| shared memory |" in md and md.splitlines()[2].endswith("| system |")
