"""The peers' request/response adapters and the side-by-side report writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import report
from benchmarks.loadgen import Point, binary_body, random_ids
from benchmarks.peers.common import (
    cosine,
    decode_request,
    decode_response,
    decode_v2_binary,
    encode_request,
    encode_response,
    pad_batch,
)


def test_request_round_trip_and_validation() -> None:
    ids = random_ids(np.random.default_rng(0), 32)
    assert ids.shape == (1, 32) and ids[0, 0] == 101 and ids[0, -1] == 102
    body = json.loads(json.dumps(encode_request(ids)))
    got_ids, mask = decode_request(body)
    assert np.array_equal(got_ids, ids[0]) and mask.tolist() == [1] * 32
    assert decode_request({"input_ids": [101, 5, 102]})[1].tolist() == [1, 1, 1]
    with pytest.raises(ValueError):
        decode_request({"input_ids": [101, 102], "attention_mask": [1]})
    with pytest.raises(ValueError):
        decode_request({"input_ids": []})


def test_response_round_trip() -> None:
    vec = np.linspace(-1, 1, 384, dtype=np.float32)
    text = json.dumps(encode_response(vec[None]))
    assert np.allclose(decode_response(text), vec)
    assert np.allclose(decode_response(text.encode()), vec)


def test_v2_binary_answer_decodes() -> None:
    vec = np.arange(2 * 384, dtype=np.float32).reshape(2, 384)
    out = {"name": "sentence_embedding", "datatype": "FP32", "shape": [2, 384]}
    head = json.dumps({"outputs": [out]}).encode()
    assert np.array_equal(decode_v2_binary(head + vec.tobytes(), len(head)), vec)
    body, headers = binary_body(random_ids(np.random.default_rng(1), 8))
    assert int(headers["Inference-Header-Content-Length"]) + 3 * 8 * 8 == len(body)


def test_pad_batch_pads_right_with_mask_zero_and_cosine() -> None:
    feeds = pad_batch([(np.array([101, 7, 102]), np.ones(3, np.int64)),
                       (np.array([101, 102]), np.ones(2, np.int64))])  # fmt: skip
    assert feeds["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert feeds["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert feeds["token_type_ids"].shape == (2, 3)
    assert cosine(np.array([1.0, 0.0]), np.array([2.0, 0.0])) == pytest.approx(1.0)
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(0.0)


def _points() -> list[Point]:
    pts = []
    for repeat, scale in ((0, 1.0), (1, 1.1)):
        for system, tp in (("naive-fastapi", 40), ("ray-serve", 120), ("litserve", 160),
                           ("triton-grpc", 400), ("gateway-miss", 360)):  # fmt: skip
            for c in (1, 32):
                pts.append(Point(system, c, repeat, 100, 0, 5.0, tp * scale * (c / 32 + 0.5),
                                 10.0 * c, 12.0 * c, 15.0 * c))  # fmt: skip
        for b, tp in ((1, 250), (32, 500)):
            pts.append(Point("ceiling", b, repeat, 50, 0, 5.0, tp * scale, 4.0, 5.0, 6.0))
    return pts


def test_summary_medians_ranges_and_ratios() -> None:
    rows = report.summarize(_points())
    assert [r["system"] for r in rows][:2] == ["naive-fastapi", "naive-fastapi"]
    assert rows[-1]["system"] == "ceiling"
    triton = next(r for r in rows if r["system"] == "triton-grpc" and r["concurrency"] == 32)
    assert triton["throughput_range"] == [600.0, pytest.approx(660.0)]
    assert triton["throughput"] == pytest.approx(630.0) and triton["repeats"] == 2
    ratios = report.ratios(rows)
    assert ratios["triton_vs_naive-fastapi"] == pytest.approx(10.0)
    assert ratios["gateway_vs_triton"] == pytest.approx(0.9)
    assert ratios["triton_vs_ceiling"] == pytest.approx(630 / 525, abs=1e-3)


def test_save_writes_json_markdown_and_two_pngs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    checks = [{"system": "triton-grpc", "min_cosine": 0.99999, "samples": 4, "ok": True}]
    paths = report.save(tmp_path, _points(), checks, command="tritonstack bench peers")
    assert [p.suffix for p in paths] == [".json", ".md", ".png", ".png"]
    for png in paths[2:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    data = json.loads(paths[0].read_text())
    assert data["checks"] == checks and len(data["points"]) == len(_points())
    md = paths[1].read_text()
    assert "| triton-grpc | 32 |" in md and "triton_vs_ray-serve" in md and ".png)" in md


def test_reduced_precision_run_compares_with_the_fp32_ceiling(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    points = _points() + [
        Point("ceiling-fp32", b, 0, 50, 0, 5.0, tp, 4.0, 5.0, 6.0)
        for b, tp in ((1, 200), (32, 300))
    ]
    rows = report.summarize(points)
    assert rows[-1]["system"] == "ceiling-fp32"
    ratios = report.ratios(rows)
    assert ratios["triton_vs_fp32_ceiling"] == pytest.approx(630 / 300, abs=1e-3)
    assert ratios["triton_vs_ceiling"] == pytest.approx(630 / 525, abs=1e-3)  # fp32 not mixed in
    paths = report.save(tmp_path, points, [], command="bench", variant="int8")
    assert json.loads(paths[0].read_text())["served_variant"] == "int8"
    assert "Served variant: **int8**" in paths[1].read_text()


def test_cpu_model_names_the_cpu_and_its_int8_instruction_sets(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    block = (
        "processor\t: {n}\nmodel name\t: Intel(R) Xeon(R) Platinum  8481C\n"
        "flags\t\t: fpu sse avx2 avx512f avx512_vnni amx_int8\n"
    )
    cpuinfo.write_text(block.format(n=0) + "\n" + block.format(n=1).replace("amx_int8", ""))
    assert (
        report.cpu_model(cpuinfo) == "Intel(R) Xeon(R) Platinum 8481C, avx512_vnni/amx_int8/avx512f"
    )
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: sse avx2\n")
    assert report.cpu_model(cpuinfo) == "AMD EPYC, avx2"
    assert report.cpu_model(tmp_path / "absent") not in ("", None)
