"""``tritonstack batch`` without servers: argument checks, the progress lines, the summary."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from rich.console import Console
from typer.testing import CliRunner

from batch.check import RunFacts, Summary
from tritonstack.batch_cli import parse_as_of
from tritonstack.batch_view import BarProgress, render_summary
from tritonstack.cli import app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "a.parquet", "--entities", "b.parquet"], "exactly one of --input"),
        ([], "exactly one of --input"),
        (["--input", "a.parquet", "--as-of", "2026-01-01"], "--as-of goes with --entities"),
        (["--entities", "e.parquet", "--as-of", "yesterday"], "ISO 8601"),
        (["--input", "a.parquet", "--shared-memory", "cuda"], "shared_memory"),
    ],
)
def test_bad_arguments_say_what_to_fix(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["batch", "--model", "m", "--output", "o", *args])
    assert result.exit_code == 1, result.output
    assert message in result.output


def test_as_of_is_utc() -> None:
    assert parse_as_of("2026-12-01T06:00:00") == datetime(2026, 12, 1, 6, tzinfo=UTC)
    assert parse_as_of("2026-12-01T07:00:00+01:00") == datetime(2026, 12, 1, 6, tzinfo=UTC)
    assert abs((parse_as_of("now") - datetime.now(UTC)).total_seconds()) < 5


def test_progress_without_a_terminal_prints_lines_with_rate_and_eta() -> None:
    out = io.StringIO()
    progress = BarProgress(Console(file=out, force_terminal=False, width=200), every_s=0.0)
    progress.start(total=1000, done=400)
    progress.advance(100)
    progress.stop()
    text = out.getvalue()
    assert "resuming: 400 of 1,000 rows already scored" in text
    assert "500 / 1,000 rows (50.0 %)" in text and "rows/s, ETA" in text


def test_the_summary_shows_counts_time_throughput_and_every_path() -> None:
    facts = RunFacts(12.5, 1000, 4, 32, 4, "system", 40, 2, (0, 1))
    outputs = [f"/out/parts/part-{i:05d}.parquet" for i in range(60)]
    summary = Summary("minilm_text", {"minilm_text": "1", "minilm": "3"}, "/out", 1200, 1190, 10,
                      {"null": 4, "rejected": 6}, 5, 5, 1, True, facts, outputs)  # fmt: skip
    out = io.StringIO()
    render_summary(Console(file=out, width=200), summary)
    text = out.getvalue()
    expected = [
        "minilm_text (minilm_text v1, minilm v3)", "1,200 in = 1,190 out + 10 dead",
        "null: 4, rejected: 6", "12.5 s", "80.0 rows/s", "shared memory system",
        "/out/parts/part-00049.parquet", "10 more: every path is in summary.json",
    ]  # fmt: skip
    for line in expected:
        assert line in text, line
