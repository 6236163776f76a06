"""Config search: the grid, the selection under a p99 budget, the confirmation pass, the report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import search_report
from benchmarks.config_search import (
    Candidate,
    Measurement,
    SearchResult,
    aggregate,
    grid,
    run_search,
    select,
    to_confirm,
)
from benchmarks.perf_analyzer import PerfPoint
from export.errors import ModelConfigError
from export.model_config import (
    ServingOptions,
    Target,
    build_config,
    read_tuned,
    with_tuned,
    write_tuned,
)
from export.models import minilm


def _point(c: int, tp: float, p99: float) -> PerfPoint:
    return PerfPoint("grpc", c, 1, tp, p99 / 2, p99 * 0.8, p99 * 0.9, p99, p99 / 2,
                     1.0, 0.1, 5.0, 0.1, 0.0, 0.0)  # fmt: skip


def _m(c: Candidate, tp: float, p99: float, repeat: int = 0) -> Measurement:
    return Measurement(c, repeat, [_point(32, tp, p99)], mean_batch=4.0)


A = Candidate(1, 0, 2000, (8, 16, 32), 256)
B = Candidate(2, 1, 500, (), 256)
C = Candidate(2, 1, 2000, (), 256)


def test_grid_splits_the_cores_between_instances() -> None:
    cands = grid(instances=(1, 2, 4), delays_us=(500,), preferred=((),), cores=2)
    assert [(c.instance_count, c.intra_op_threads) for c in cands] == [(1, 0), (2, 1), (4, 1)]
    assert len(grid(cores=2)) == 3 * 2 * 2


def test_select_takes_the_best_throughput_under_the_budget() -> None:
    ms = [_m(A, 200, 90), _m(B, 450, 140), _m(C, 300, 99)]
    assert select(ms, budget_ms=100).candidate == C  # B is faster but over budget
    assert select(ms, budget_ms=150).candidate == B
    assert select(ms, budget_ms=50) is None


def test_ties_go_to_the_lower_p99_and_repeats_are_median_and_worst() -> None:
    ms = [_m(B, 300, 80), _m(C, 300, 60)]
    assert select(ms, 100).candidate == C
    agg = {
        a.candidate: a for a in aggregate([_m(B, 300, 80), _m(B, 500, 120, 1), _m(B, 400, 90, 1)])
    }
    assert agg[B].throughput == 400 and agg[B].p99_ms == 120


def test_a_second_run_over_budget_disqualifies() -> None:
    ms = [_m(B, 450, 90), _m(B, 440, 130, repeat=1), _m(C, 300, 95)]
    assert select(ms, 100).candidate == C


def test_confirmation_remeasures_the_current_config_and_the_best_few() -> None:
    ms = [_m(A, 200, 90), _m(B, 450, 140), _m(C, 300, 99)]
    assert to_confirm(ms, 150, current=A, top=1) == [A, B]
    seen: list[tuple[Candidate, int]] = []
    fake = {A: (200.0, 90.0), B: (450.0, 95.0), C: (300.0, 99.0)}

    def measure(c: Candidate, repeat: int) -> Measurement:
        seen.append((c, repeat))
        return _m(c, *fake[c], repeat)

    measurements, chosen = run_search([B, C, A], A, measure, budget_ms=100, confirm=1)
    assert seen == [(A, 0), (B, 0), (C, 0), (A, 1), (B, 1)]  # current first, never twice per pass
    assert chosen is not None and chosen.candidate == B
    assert len(measurements) == 5


def test_candidate_maps_onto_serving_options_and_the_protobuf_config() -> None:
    spec = minilm.load(module=torch.nn.Identity())
    options = B.options(ServingOptions())
    config = build_config(spec, options)
    assert config.instance_group[0].count == 2
    assert config.parameters["intra_op_num_threads"].string_value == "1"
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(config.dynamic_batching.preferred_batch_size) == []
    assert Candidate.from_options(options) == B
    off = Candidate(1, 0, 2000, (8,), 0).options(ServingOptions())
    assert not build_config(spec, off).dynamic_batching.HasField("default_queue_policy")


def test_tuned_record_round_trips_and_applies_to_cpu_only(tmp_path: Path) -> None:
    assert with_tuned(ServingOptions(), tmp_path) == ServingOptions()  # no record
    write_tuned(tmp_path, B.options(ServingOptions()), evidence="results/x.md")
    assert read_tuned(tmp_path) == {
        "instance_count": 2, "intra_op_threads": 1, "max_queue_delay_us": 500,
        "preferred_batch_sizes": [], "max_queue_size": 256,
    }  # fmt: skip
    assert Candidate.from_options(with_tuned(ServingOptions(), tmp_path)) == B
    gpu = ServingOptions(target=Target.GPU)
    assert with_tuned(gpu, tmp_path) == gpu
    (tmp_path / "tuned_options.json").write_text('{"options": {"max_batch_size": 4}}')
    with pytest.raises(ModelConfigError, match="unknown options"):
        read_tuned(tmp_path)


def test_report_names_the_change_and_marks_rows(tmp_path: Path) -> None:
    ms = [_m(A, 200, 600), _m(B, 450, 140), _m(A, 210, 620, 1), _m(B, 440, 135, 1)]
    chosen = select(ms, 150)
    result = SearchResult(ms, chosen, A, tmp_path / "config.pbtxt", "tritonstack bench search",
                          "perf_analyzer -m minilm")  # fmt: skip
    json_path, md_path = search_report.save_search(tmp_path, result, 150)
    data = search_report.summary(result, 150)
    assert data["chosen"]["changes"] == {
        "instance_count": [1, 2], "intra_op_threads": [0, 1], "max_queue_delay_us": [2000, 500],
        "preferred_batch_sizes": [[8, 16, 32], []],
    }  # fmt: skip
    assert data["chosen"]["throughput_gain"] == pytest.approx(445 / 205, abs=1e-3)
    md = md_path.read_text()
    assert "**chosen**" in md and "current" in md and "instance_count: 1 → 2" in md
    assert json_path.is_file()


def test_report_when_nothing_fits(tmp_path: Path) -> None:
    ms = [_m(A, 200, 600)]
    result = SearchResult(ms, None, A, None, "cmd", "")
    (_, md) = search_report.save_search(tmp_path, result, 100)
    assert "No candidate met" in md.read_text()


@pytest.mark.parametrize(("chosen", "code"), [(None, 3), ("A", 0)])
def test_search_cli_exits_3_when_nothing_fits_so_make_bench_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chosen: str | None, code: int
) -> None:
    """`make bench` runs `bench search ... || [ $? -eq 3 ]`: only 'measured, nothing within the
    budget' may let the peers run; the search itself is faked here (it needs perf_analyzer)."""
    from typer.testing import CliRunner

    from benchmarks import config_search
    from tritonstack.bench_cli import NOTHING_FITS, bench_app

    ms = [_m(A, 200, 600)]
    winner = aggregate(ms)[0] if chosen else None
    monkeypatch.setattr(
        config_search, "search", lambda *a, **k: SearchResult(ms, winner, A, None, "cmd", "")
    )
    result = CliRunner().invoke(bench_app, ["search", "--save", str(tmp_path)])
    assert result.exit_code == code, result.output
    assert (code == NOTHING_FITS) == ("no candidate met" in result.output)
