"""perf_analyzer's CSV (a real one from 2.51), its input data and its command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from benchmarks.perf_analyzer import (
    PerfAnalyzerError,
    parse_csv,
    perf_analyzer_command,
    render_table,
    run_sweep,
    to_markdown,
    write_input_data,
)
from deploy.local.runtime import TritonRuntime
from export.models.minilm import model_path

DATA = Path(__file__).parent / "data" / "perf_analyzer_2.51_grpc.csv"
HTTP_DATA = Path(__file__).parent / "data" / "perf_analyzer_2.51_http.csv"


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


def test_parse_real_http_csv_maps_every_column() -> None:
    low, high = parse_csv(HTTP_DATA, batch_size=1, protocol="http")
    assert (low.concurrency, high.concurrency) == (1, 4)
    assert low.throughput_infer_per_s == pytest.approx(138.662)
    assert (low.p50_ms, low.p90_ms, low.p95_ms, low.p99_ms) == pytest.approx(
        (6.836, 8.708, 9.134, 9.565)
    )
    assert low.avg_ms == pytest.approx(7.195)
    assert (low.client_send_ms, low.client_recv_ms) == pytest.approx((0.063, 0.0))
    assert low.server_queue_ms == pytest.approx(2.124)
    assert (
        low.server_compute_input_ms,
        low.server_compute_infer_ms,
        low.server_compute_output_ms,
    ) == pytest.approx((0.024, 4.641, 0.081))
    assert high.p99_ms == pytest.approx(511.571) and high.protocol == "http"
    # The split adds up to the average (plus the network column, not kept): 7.195 - 0.261 ms.
    parts = (
        low.client_send_ms
        + low.server_queue_ms
        + low.server_compute_input_ms
        + low.server_compute_infer_ms
        + low.server_compute_output_ms
        + low.client_recv_ms
    )
    assert parts == pytest.approx(low.avg_ms - 0.261, abs=0.01)
    assert render_table([low, high]).row_count == 2


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
    assert "--measurement-interval 1500" in joined and "--max-trials 3" in joined
    assert "--concurrency-range 2 " in " ".join(_command([2])) + " "


def test_uneven_concurrency_is_refused() -> None:
    with pytest.raises(ValueError, match="evenly spaced"):
        _command([1, 2, 8])
    with pytest.raises(ValueError, match="positive"):
        _command([0, 1])


def _fake_runtime(tmp_path: Path, script: str) -> TritonRuntime:
    """A runtime environment whose ``perf_analyzer`` is the shell ``script``."""
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "lib/python3.11/site-packages/nvidia/cuda_runtime/lib").mkdir(parents=True)
    (env / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.11.7\n")
    binary = env / "bin" / "perf_analyzer"
    binary.write_text("#!/bin/sh\n" + script)
    binary.chmod(0o755)
    return TritonRuntime(env)


def _sweep(runtime: TritonRuntime, tmp_path: Path, timeout_s: float = 30.0):
    return run_sweep(
        runtime,
        "minilm",
        "127.0.0.1:8000",
        protocol="http",
        input_data=tmp_path / "in.json",
        concurrency=[1, 4],
        out_dir=tmp_path / "out",
        timeout_s=timeout_s,
    )


def test_run_sweep_runs_the_binary_and_records_its_command(tmp_path: Path) -> None:
    runtime = _fake_runtime(
        tmp_path,
        'while [ $# -gt 0 ]; do [ "$1" = -f ] && out="$2"; shift; done\n'
        f'echo "$LD_LIBRARY_PATH" > "$out.env"; cp {HTTP_DATA} "$out"\n',
    )
    sweep = _sweep(runtime, tmp_path)
    assert [p.throughput_infer_per_s for p in sweep.points] == [138.662, 212.696]
    assert {p.protocol for p in sweep.points} == {"http"}
    assert sweep.command[0] == str(runtime.perf_analyzer)
    assert "--concurrency-range 1:4:3" in sweep.command_line
    csv_path = Path(sweep.command[sweep.command.index("-f") + 1])
    cudart = runtime.site_packages / "nvidia" / "cuda_runtime" / "lib"
    assert str(cudart) in Path(f"{csv_path}.env").read_text()


def test_run_sweep_reports_a_failure_with_its_output(tmp_path: Path) -> None:
    runtime = _fake_runtime(tmp_path, 'echo "error: failed to get model metadata" >&2; exit 99\n')
    with pytest.raises(PerfAnalyzerError, match=r"exited with 99(.|\n)*model metadata"):
        _sweep(runtime, tmp_path)


def test_run_sweep_refuses_a_success_without_csv(tmp_path: Path) -> None:
    with pytest.raises(PerfAnalyzerError, match="wrote no CSV"):
        _sweep(_fake_runtime(tmp_path, "exit 0\n"), tmp_path)


def test_run_sweep_kills_perf_analyzer_at_its_timeout(tmp_path: Path) -> None:
    runtime = _fake_runtime(tmp_path, "exec sleep 30\n")
    start = time.monotonic()
    with pytest.raises(PerfAnalyzerError, match=r"did not finish within 0.5 s \(killed\)"):
        _sweep(runtime, tmp_path, timeout_s=0.5)
    assert time.monotonic() - start < 10


def test_text_input_data_is_one_raw_string_per_request(tmp_path: Path) -> None:
    from benchmarks.perf_analyzer import write_text_input_data

    path = write_text_input_data(["hello world", "ünïcode ok"], tmp_path / "t.json")
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    assert data == [
        {"text": {"content": ["hello world"], "shape": [1]}},
        {"text": {"content": ["ünïcode ok"], "shape": [1]}},
    ]


def test_points_carry_their_model_into_the_tables() -> None:
    points = parse_csv(DATA, batch_size=1, protocol="grpc", model="minilm_text")
    assert {p.model for p in points} == {"minilm_text"}
    assert "| minilm_text | grpc | 1 | 1 | 57.2 |" in to_markdown(points)
