"""Output that goes to a pipe or a CI log keeps every table column (`make demo > log`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.perf_analyzer import parse_csv, render_table
from tritonstack.console import LOG_WIDTH, make_console

DATA = Path(__file__).parent / "data"


def test_off_a_terminal_the_perf_table_keeps_its_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    points = parse_csv(DATA / "perf_analyzer_2.51_grpc.csv", batch_size=1, protocol="grpc")
    console = make_console()  # pytest captures stdout: not a terminal
    assert not console.is_terminal and console.width == LOG_WIDTH
    with console.capture() as captured:
        console.print(render_table(points))
    text = captured.get()
    assert "…" not in text and "minilm" in text and "57.2" in text
    assert max(len(line) for line in text.splitlines()) > 80  # what 80 columns used to cut

    monkeypatch.setenv("COLUMNS", "100")  # an explicit width still wins
    assert make_console().width == 100
