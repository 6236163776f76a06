"""``tritonstack batch`` against the real Triton: embeddings equal the online answers, driver
scores equal ``/v1/score``, a SIGKILLed run resumes to exactly the rows of an uninterrupted
one, malformed rows land in the dead-letter file and nothing else is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch import BatchJob, BatchSettings, FeatureSource, ResumeMismatchError, run
from batch.errors import TooManyRejected, TritonUnavailable
from deploy.local.gateway import GatewayProcess
from deploy.local.process import free_port
from deploy.local.redis import RedisServer
from deploy.local.triton import TritonServer
from tests.fixtures_features import FeatureEnv, triton_scores
from tests.fixtures_gateway import AUTH, StartGateway

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
WORDS = [
    "batch", "scoring", "reads", "parquet", "row", "groups", "and", "sends", "them", "through",
    "triton", "with", "several", "requests", "in", "flight", "while", "a", "killed", "run",
]  # fmt: skip
TOO_LONG = "word " * 300  # 302 tokens; the model takes 256


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 14)))) for _ in range(n)]


def read_parts(output: Path) -> pa.Table:
    return pq.read_table(output / "parts").sort_by("row_index")


def dead_letters(output: Path) -> list[dict]:
    return [json.loads(line) for f in sorted((output / "dead_letters").glob("*.jsonl"))
            for line in f.read_text().splitlines()]  # fmt: skip


def vectors(table: pa.Table, column: str) -> np.ndarray:
    return np.stack(table.column(column).to_numpy(zero_copy_only=False)).astype(np.float32)


def test_embeddings_of_a_text_column_equal_the_online_answers(
    triton: TritonServer, gateway: GatewayProcess, tmp_path: Path
) -> None:
    """A folder of two files (a binary text column, several row groups) through minilm_text
    with shared memory; each good row's vector equals /v1/embeddings for the same text."""
    texts: list[bytes | None] = [s.encode() for s in sentences(26, seed=1)]
    bad = {3: None, 8: b"", 15: b"caf\xe9 latin-1", 21: TOO_LONG.encode()}
    for i, value in bad.items():
        texts[i] = value
    folder = tmp_path / "in"
    folder.mkdir()
    for name, part in (("a.parquet", slice(0, 12)), ("b.parquet", slice(12, 26))):
        rows = range(26)[part]
        table = pa.table(
            {"doc": [f"d{i}" for i in rows], "body": pa.array(texts[part], pa.binary())}
        )
        pq.write_table(table, folder / name, row_group_size=5)
    out = tmp_path / "out"
    settings = BatchSettings(shard_rows=10, batch_size=8, concurrency=3, shared_memory="system")
    summary = run(BatchJob("minilm", str(folder), str(out), columns=["body"]), settings,
                  triton.grpc_url)  # fmt: skip

    assert summary.model == "minilm_text" and summary.facts.shared_memory == "system"
    assert summary.complete and (summary.rows_in, summary.rows_out, summary.dead_letters) == (
        26,
        22,
        4,
    )
    assert summary.dead_letter_codes == {"empty": 1, "not_utf8": 1, "null": 1, "rejected": 1}
    parts = read_parts(out)
    letters = dead_letters(out)
    # nothing lost, nothing twice: every row index once, in a part or in the dead letters
    seen = parts.column("row_index").to_pylist() + [d["row_index"] for d in letters]
    assert sorted(seen) == list(range(26))
    assert {d["row_index"]: d["keys"]["doc"] for d in letters} == {i: f"d{i}" for i in bad}
    too_long = next(d for d in letters if d["row_index"] == 21)
    assert too_long["code"] == "rejected" and "302 tokens" in too_long["reason"]
    assert too_long["input"]["body"] == TOO_LONG  # enough to see and replay the row
    assert next(d for d in letters if d["row_index"] == 15)["input"]["body"] == {
        "base64": "Y2Fm6SBsYXRpbi0x"
    }

    good = [texts[i].decode() for i in parts.column("row_index").to_pylist()]
    assert parts.column("doc").to_pylist() == [
        f"d{i}" for i in parts.column("row_index").to_pylist()
    ]
    online = httpx.post(
        f"{gateway.url}/v1/embeddings", json={"input": good, "model": "minilm"},
        headers={**AUTH, "Cache-Control": "no-cache"}, timeout=60,
    )  # fmt: skip
    assert online.status_code == 200, online.text
    expected = np.asarray([d["embedding"] for d in online.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(vectors(parts, "sentence_embedding"), expected, atol=2e-5)
    assert sum(parts.column("token_count").to_pylist()) == online.json()["usage"]["total_tokens"]
    assert json.loads((out / "summary.json").read_text())["rows_out"] == 22


@pytest.fixture(scope="module")
def scoring_gateway(
    start_gateway: StartGateway,
    ranker_triton: TritonServer,
    redis_server: RedisServer,
    redis_features: FeatureEnv,
) -> GatewayProcess:
    return start_gateway(
        ranker_triton.grpc_url,
        redis_server.url,
        extra_env={"FEATURES_STATE_DIR": str(redis_features.settings.state_dir),
                   "FEATURES_REDIS_URL": str(redis_features.settings.redis_url),
                   "GATEWAY_SCORING_ENABLED": "true"},
    )  # fmt: skip


def test_driver_scores_equal_v1_score_at_the_materialization_time(
    scoring_gateway: GatewayProcess,
    ranker_triton: TritonServer,
    redis_features: FeatureEnv,
    tmp_path: Path,
) -> None:
    """Entities scored from Feast's offline store as of the materialization time get the
    features and scores /v1/score gives from the online store right after it; the entities
    /v1/score refuses (404 unknown, 422 null or stale) are dead letters saying the same."""
    drivers = redis_features.dataset.drivers
    ids = [d for cohort in drivers.values() for d in cohort] + [987_654]
    entities = tmp_path / "entities.parquet"
    pq.write_table(pa.table({"driver_id": pa.array(ids, pa.int64()),
                             "ride": [f"r{i}" for i in range(len(ids))]}), entities)  # fmt: skip
    source = FeatureSource(
        redis_features.settings, redis_features.materialized_at, store=redis_features.store
    )
    out = tmp_path / "out"
    summary = run(BatchJob("driver_ranker", str(entities), str(out), features=source),
                  BatchSettings(shard_rows=16), ranker_triton.grpc_url)  # fmt: skip
    assert (
        summary.complete and summary.rows_in == len(ids) == summary.rows_out + summary.dead_letters
    )
    parts = read_parts(out)
    scored = parts.column("driver_id").to_pylist()
    assert set(scored) == set(drivers["active"] + drivers["late"])

    online = httpx.post(
        f"{scoring_gateway.url}/v1/score",
        json={"entity_ids": scored, "include_features": True},
        headers=AUTH, timeout=60,
    )  # fmt: skip
    assert online.status_code == 200, online.text
    answers = online.json()["scores"]
    np.testing.assert_allclose(parts.column("score").to_numpy(),
                               [s["score"] for s in answers], rtol=1e-6)  # fmt: skip
    for name in ("conv_rate", "acc_rate", "avg_daily_trips"):
        assert parts.column(name).to_pylist() == [s["features"][name] for s in answers], name

    codes = {d["input"]["driver_id"]: d["code"] for d in dead_letters(out)}
    online_codes = {}
    for driver in codes:
        r = httpx.post(f"{scoring_gateway.url}/v1/score", json={"entity_ids": [driver]},
                       headers=AUTH, timeout=60)  # fmt: skip
        online_codes[driver] = r.status_code
        assert str(driver) in r.json()["error"]["message"]
    expected = {404: {"unknown_entity"}, 422: {"null_feature", "stale_feature"}}
    assert all(codes[d] in expected[status] for d, status in online_codes.items()), (
        codes,
        online_codes,
    )
    assert {codes[d] for d in drivers["idle"]} == {"stale_feature"}
    assert {codes[d] for d in drivers["gone"] + [987_654]} == {"unknown_entity"}
    assert {codes[d] for d in drivers["nullacc"]} == {"null_feature"}


def test_tensor_columns_by_name_and_dtype_and_a_resume_of_other_options_is_refused(
    ranker_triton: TritonServer, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    good = rng.uniform(0, 1, size=(40, 3)) * [1, 1, 20]
    rows = [list(r) for r in good] + [[0.1, float("nan"), 3.0], [0.2, 0.3], None]
    table = pa.table({"features": pa.array(rows, pa.list_(pa.float64())),
                      "driver": np.arange(len(rows)), "extra": ["x"] * len(rows)})  # fmt: skip
    source = tmp_path / "features.parquet"
    pq.write_table(table, source, row_group_size=9)
    out = tmp_path / "out"
    job = BatchJob("driver_ranker", str(source), str(out), keys=["driver"])
    settings = BatchSettings(shard_rows=9, concurrency=2, shared_memory="none")
    summary = run(job, settings, ranker_triton.grpc_url)
    assert (summary.rows_out, summary.dead_letter_codes) == (40, {"not_finite": 1, "null": 1,
                                                                  "wrong_length": 1})  # fmt: skip
    parts = read_parts(out)
    assert parts.column_names == ["row_index", "driver", "score"]
    x = good.astype(np.float32)
    direct = np.concatenate(
        [triton_scores(ranker_triton, x[:20]), triton_scores(ranker_triton, x[20:])]
    )[:, 0]
    np.testing.assert_allclose(parts.column("score").to_numpy(), direct, rtol=1e-6)

    again = run(job, settings, ranker_triton.grpc_url)  # every shard finished: none redone
    assert again.shards_skipped == again.shards and again.facts.requests == 0
    with pytest.raises(ResumeMismatchError, match="keys"):
        run(BatchJob("driver_ranker", str(source), str(out), keys=["extra"]), settings,
            ranker_triton.grpc_url)  # fmt: skip


def test_a_model_refusing_most_rows_stops_the_run_and_records_nothing(
    triton: TritonServer, tmp_path: Path
) -> None:
    source = tmp_path / "long.parquet"
    pq.write_table(pa.table({"text": [TOO_LONG + str(i) for i in range(10)]}), source)
    settings = BatchSettings(batch_size=4, concurrency=2, max_rejected_fraction=0.5)
    with pytest.raises(TooManyRejected, match="refused 10 of the 10 rows of shard 0"):
        run(BatchJob("minilm", str(source), str(tmp_path / "out"), columns=["text"]), settings,
            triton.grpc_url)  # fmt: skip
    assert not (tmp_path / "out" / "done").exists() and not (tmp_path / "out" / "parts").exists()


def test_an_unreachable_triton_stops_the_run_before_any_shard(tmp_path: Path) -> None:
    pq.write_table(pa.table({"features": [[1.0, 2.0, 3.0]]}), tmp_path / "x.parquet")
    with pytest.raises(TritonUnavailable, match="not ready"):
        run(BatchJob("driver_ranker", str(tmp_path / "x.parquet"), str(tmp_path / "out")),
            BatchSettings(ready_timeout_s=1), f"127.0.0.1:{free_port()}")  # fmt: skip
    assert not (tmp_path / "out" / "done").exists()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tritonstack.cli", "batch", *args]


def _written(folder: Path, pattern: str) -> list[Path]:
    """The files a run has finished writing: not its ``.tmp-*`` files (pathlib's glob matches
    hidden names, and a run killed mid-write leaves one: it was once counted as a finished
    shard's record)."""
    return [p for p in folder.glob(pattern) if not p.name.startswith(".")]


def test_a_killed_run_resumes_to_exactly_the_rows_of_an_uninterrupted_run(
    triton: TritonServer, tmp_path: Path
) -> None:
    texts = sentences(240, seed=2)
    source = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"id": [f"row{i}" for i in range(240)], "text": texts}), source,
                   row_group_size=12)  # fmt: skip
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    args = [
        "--model",
        "minilm",
        "--input",
        str(source),
        "--columns",
        "text",
        "--url",
        triton.grpc_url,
        "--shard-rows",
        "12",
        "--batch-size",
        "6",
        "--concurrency",
        "2",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    log = tmp_path / "killed.log"
    with log.open("wb") as err:
        process = subprocess.Popen(_cli(*args, "--output", str(killed)), env=env, cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=err,
                                   start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        while len(_written(killed / "done", "*.json")) < 4:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no shard finished within 120 s"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)  # mid-way: no chance to clean up
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finished = {p.name: p.read_bytes() for p in _written(killed / "done", "*.json")}
    assert 4 <= len(finished) < 20, "the run was not killed mid-way"
    parts_before = {p.name: p.stat().st_mtime_ns for p in _written(killed / "parts", "*.parquet")}

    resumed = subprocess.run(_cli(*args, "--output", str(killed), "--json"), env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["complete"] and summary["shards_skipped"] == len(finished)
    assert summary["facts"]["shards_run"] == 20 - len(finished)
    assert "resuming:" in resumed.stderr
    for name, content in finished.items():  # a finished shard is never redone
        assert (killed / "done" / name).read_bytes() == content
        part = f"part-{name.removesuffix('.json')}.parquet"
        assert (killed / "parts" / part).stat().st_mtime_ns == parts_before[part]

    run(BatchJob("minilm", str(source), str(whole), columns=["text"]),
        BatchSettings(shard_rows=50), triton.grpc_url)  # fmt: skip
    a, b = read_parts(killed), read_parts(whole)
    assert a.num_rows == b.num_rows == 240 and not (killed / "dead_letters").exists()
    for column in ("row_index", "id", "token_count"):
        assert a.column(column).to_pylist() == b.column(column).to_pylist(), column
    np.testing.assert_allclose(vectors(a, "sentence_embedding"), vectors(b, "sentence_embedding"),
                               atol=1e-5)  # fmt: skip
    assert not list(killed.rglob(".tmp-*"))
    # the resumed run removed the shared memory the killed one could not (nor its tracker)
    assert not list(Path("/dev/shm").glob(f"tsbatch-{process.pid}-*"))
