"""Pure logic of rollouts: the route table, agreement, step figures, the route store, the
shadow mirror, the budgets of two export reports, the step verdicts, the repository writers."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from export.reader import pipelines_using, rollout_records, version_policy
from export.repository import pin_step, record_rollout, write_latest_policy, write_version_policy
from gateway.agreement import compare, passes, row_agreement, within
from gateway.rollout_stats import (
    StepRecorder,
    latency_bucket,
    parse_step,
    quantile,
    stats_key,
)
from gateway.shadow import ShadowJob, ShadowMirror
from gateway.traffic import Arm, ModelRoute, RouteTableError, Shadow, parse_table, sticky_key
from gateway.traffic_store import RouteStore, load_file, parse_replicas
from rollout import analysis
from rollout.budget import combined
from rollout.errors import PlanError
from rollout.settings import RolloutSettings
from tests.fake_redis import FakeRedis

ROOT = Path(__file__).resolve().parents[2]


def route(weight: float, *, shadow: Shadow | None = None, rollout: str = "r1") -> ModelRoute:
    return ModelRoute(
        "minilm",
        rollout,
        1,
        "1",
        (Arm("2", weight, "minilm", "2"), Arm("1", 100 - weight, "minilm", "1")),
        shadow,
    )


def table_doc(**model: Any) -> dict[str, Any]:
    entry = {
        "rollout": "r1",
        "step": 1,
        "stable": "1",
        "arms": [
            {"version": "2", "weight": 10, "model": "minilm", "model_version": "2"},
            {"version": "1", "weight": 90, "model": "minilm", "model_version": "1"},
        ],
    }
    entry.update(model)
    return {"revision": 5, "models": {"minilm": entry}}


# -- the route table ---------------------------------------------------------------------------
def test_the_split_follows_the_weights_and_a_key_always_gets_the_same_version() -> None:
    keys = [sticky_key("t", f"user-{i}") for i in range(20_000)]
    for weight in (10, 50, 90):
        chosen = Counter(route(weight).choose(k).version for k in keys)
        assert chosen["2"] / len(keys) == pytest.approx(weight / 100, abs=0.015)
    one = route(37)
    assert len({one.choose("k:same").version for _ in range(50)}) == 1


def test_raising_the_candidate_weight_never_moves_a_caller_back() -> None:
    keys = [sticky_key("t", f"user-{i}") for i in range(5_000)]
    on_candidate: set[str] = set()
    for weight in (0, 10, 50, 100):
        now = {k for k in keys if route(weight).choose(k).version == "2"}
        assert on_candidate <= now  # whoever saw the candidate keeps it
        on_candidate = now
    assert on_candidate == set(keys)


def test_another_rollout_shuffles_callers_and_the_tenant_is_the_default_key() -> None:
    keys = [sticky_key("t", f"user-{i}") for i in range(2_000)]
    first = {k for k in keys if route(50, rollout="a").choose(k).version == "2"}
    second = {k for k in keys if route(50, rollout="b").choose(k).version == "2"}
    assert 0.3 < len(first & second) / len(first) < 0.7  # independent halves
    assert sticky_key("acme", None) == "t:acme"
    assert sticky_key("acme", "x" * 10_000) == "k:" + "x" * 256


def test_a_table_round_trips_through_json() -> None:
    shadow = Shadow("2", "minilm", "2", "cosine", 0.999, 0.05)
    original = parse_table(table_doc())
    mine = route(10, shadow=None)
    assert original.get("minilm") == mine
    doc = table_doc(
        arms=[{"version": "1", "weight": 100, "model": "minilm", "model_version": "1"}],
        shadow={
            "version": "2",
            "model": "minilm",
            "model_version": "2",
            "metric": "cosine",
            "budget": 0.999,
            "sample": 0.05,
        },
    )
    parsed = parse_table(doc)
    again = parse_table(parsed.to_json())
    assert again == parsed and again.get("minilm").shadow == shadow  # type: ignore[union-attr]
    assert parsed.get("minilm").versions == {"1", "2"}  # type: ignore[union-attr]
    assert parsed.get("minilm").pinned("2") is None  # type: ignore[union-attr]  # shadow only


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"arms": []}, "arms"),
        ({"arms": [{"version": "1", "weight": 60, "model": "m"}]}, "add up to 60"),
        ({"arms": [{"version": "x", "weight": 100, "model": "m"}]}, "version"),
        ({"arms": [{"version": "1", "weight": 100, "model": "a/b"}]}, "model"),
        (
            {
                "arms": [
                    {"version": "1", "weight": 150, "model": "m"},
                    {"version": "2", "weight": -50, "model": "m"},
                ]
            },
            "weight",
        ),
        ({"stable": "7"}, "stable"),
        (
            {"shadow": {"version": "2", "model": "m", "metric": "cosine", "budget": 0.9}},
            "also answers",
        ),
        ({"shadow": {"version": "3", "model": "m", "metric": "l1", "budget": 0.9}}, "metric"),
        (
            {
                "shadow": {
                    "version": "3",
                    "model": "m",
                    "metric": "cosine",
                    "budget": 0.9,
                    "sample": 0,
                }
            },
            "sample",
        ),
        ({"step": True}, "step"),
    ],
)
def test_a_broken_table_is_refused_with_the_field_named(change: dict[str, Any], says: str) -> None:
    with pytest.raises(RouteTableError, match=says):
        parse_table(table_doc(**change))
    with pytest.raises(RouteTableError, match="not JSON"):
        parse_table(b"{")


# -- agreement ---------------------------------------------------------------------------------
def test_agreement_in_each_task_metric() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    b = np.array([[1.0, 0.0], [0.0, -2.0], [3.0, 4.4]])
    cos = row_agreement("cosine", a, b)
    assert cos[0] == pytest.approx(1) and cos[1] == pytest.approx(-1)
    assert row_agreement("top1", a, b).tolist() == [1.0, 0.0, 1.0]
    assert row_agreement("rel_l2", a, b)[2] == pytest.approx(0.4 / 5)
    assert within("rel_l2", np.array([0.01, 0.2]), 0.1).tolist() == [True, False]
    outputs = {"sentence_embedding": a.astype(np.float32), "token_count": np.array([[3], [4], [5]])}
    rows = compare("cosine", outputs, {**outputs, "sentence_embedding": b}, batched=True)
    assert rows is not None and rows.shape == (3,)
    assert compare("cosine", outputs, {"sentence_embedding": b[:2]}, batched=True) is None
    assert passes("top1", 0.95, 100, 96, 0.99) and not passes("top1", 0.95, 100, 94, 0.99)
    assert passes("cosine", 0.9, 100, 99, 0.99) and not passes("cosine", 0.9, 0, 0, 0.99)


# -- step figures ------------------------------------------------------------------------------
def test_latency_buckets_give_a_p99_within_ten_percent() -> None:
    rng = np.random.default_rng(0)
    samples = rng.lognormal(mean=math.log(0.02), sigma=0.5, size=20_000)
    buckets = Counter(latency_bucket(float(s)) for s in samples)
    assert quantile(dict(buckets), 0.99) == pytest.approx(np.quantile(samples, 0.99), rel=0.1)
    assert quantile({}, 0.99) is None


async def test_replicas_add_up_their_figures_and_keep_them_while_redis_is_down() -> None:
    redis = FakeRedis()
    shadow = Shadow("2", "minilm", "2", "cosine", 0.99, 1.0)
    r = route(0, shadow=shadow)
    one, two = StepRecorder("a"), StepRecorder("b")
    for recorder, worst in ((one, 0.995), (two, 0.98)):
        recorder.request(r, "1", True, 0.010)
        recorder.request(r, "2", False, 0.050)
        recorder.shadow(r, 4, 3, 3.9, worst)
    redis.down = True
    with pytest.raises(ConnectionError):
        await one.flush(redis)  # type: ignore[arg-type]
    assert one.pending  # kept for the next flush
    redis.down = False
    one.request(r, "1", True, 0.012)
    await one.flush(redis)  # type: ignore[arg-type]
    await two.flush(redis)  # type: ignore[arg-type]
    assert not one.pending
    figures = parse_step(redis.hash(stats_key("r1", 1)))
    assert figures.version("1").requests == 3 and figures.version("2").errors == 2
    assert figures.version("2").error_rate == 1.0
    assert figures.shadow.compared == 8 and figures.shadow.within == 6
    assert figures.shadow.worst == 0.98 and figures.shadow.mean == pytest.approx(7.8 / 8)


# -- the route store ---------------------------------------------------------------------------
async def test_the_store_takes_newer_tables_and_keeps_the_last_good_one(tmp_path: Path) -> None:
    redis = FakeRedis()
    file = tmp_path / "routes.json"
    file.write_text(json.dumps({**table_doc(), "revision": 1}))
    store = RouteStore(load_file(file), lambda: redis, "replica-1")  # type: ignore[arg-type,return-value]
    assert store.table.revision == 1 and store.source == "file"
    assert not await store.refresh()  # nothing in Redis: the file's table stays
    redis.data["tritonstack:routes"] = json.dumps(table_doc()).encode()  # revision 5
    assert await store.refresh() and store.table.revision == 5 and store.source == "redis"
    redis.data["tritonstack:routes"] = b'{"revision": 9, "models": {"m": {}}}'  # broken
    assert not await store.refresh() and store.table.revision == 5
    assert store.errors == {"invalid": 1}
    redis.down = True
    assert not await store.refresh() and store.table.revision == 5
    redis.down = False
    redis.data["tritonstack:routes"] = json.dumps({**table_doc(), "revision": 3}).encode()
    assert not await store.refresh() and store.table.revision == 5  # older: ignored
    del redis.data["tritonstack:routes"]  # Redis lost its data: the last table stays
    assert not await store.refresh() and store.table.revision == 5
    seen = parse_replicas(
        {
            b"replica-1": redis.data["tritonstack:routes:replicas"]["replica-1"].encode(),
            b"old": b"2 1.0",
        },
        10**10,
        10**10,
    )
    assert seen["replica-1"] == 5
    file.write_text("{}")
    with pytest.raises(RouteTableError, match=str(file)):
        load_file(file)
    assert load_file(tmp_path / "absent.json").routes == {}


# -- the shadow mirror -------------------------------------------------------------------------
async def test_shadow_copies_are_bounded_compared_and_never_raise() -> None:
    recorder = StepRecorder("a")
    r = route(0, shadow=Shadow("2", "minilm", "2", "cosine", 0.99, 1.0))
    seen: list[str] = []
    mirror = ShadowMirror(
        recorder,
        queue_size=2,
        workers=1,
        timeout_s=0.2,
        observe=lambda _r, outcome: seen.append(outcome),
    )
    primary = {"y": np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)}
    gate = asyncio.Event()

    async def same() -> dict[str, np.ndarray]:
        await gate.wait()
        return primary

    async def far() -> dict[str, np.ndarray]:
        return {"y": np.array([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32)}

    async def broken() -> dict[str, np.ndarray]:
        raise RuntimeError("shadow down")

    async def hangs() -> dict[str, np.ndarray]:
        await asyncio.sleep(10)
        return primary

    mirror.start()
    jobs = [ShadowJob(r, call, primary, True) for call in (same, far, broken, hangs)]
    accepted = [mirror.offer(job) for job in jobs]  # the worker holds one, the queue two
    await asyncio.sleep(0)
    assert accepted.count(False) >= 1 and mirror.dropped >= 1
    gate.set()
    for job in jobs[2:]:  # outcomes of the rest, run directly
        seen.append(await mirror.run(job))
    await mirror.stop()
    assert {"within", "outside", "error", "dropped"} <= set(seen)


# -- budgets of two export reports -------------------------------------------------------------
def report(variant: str, metric: str, budget: float, task: str = "embedding") -> dict[str, Any]:
    return {
        "task": task,
        "status": "OK",
        "served": {"variant": variant, "accuracy": {"metric": metric, "budget": budget}},
        "accuracy_budgets": {
            "parity": {variant: {"metric": metric, "threshold": budget}},
            "task": {"top1_agreement": 0.95},
        },
    }


def test_the_budget_of_two_versions_adds_their_own() -> None:
    fp32 = report("fp32", "rel_l2", 1e-4)
    int8 = report("int8_blockwise", "cosine", 0.97)
    both_fp32 = combined(fp32, fp32)
    assert both_fp32.metric == "cosine"
    assert both_fp32.value == pytest.approx(math.cos(2 * math.asin(1e-4)))
    mixed = combined(fp32, int8)
    assert mixed.value == pytest.approx(math.cos(math.acos(0.97) + math.asin(1e-4)))
    assert combined(
        report("fp32", "rel_l2", 0.01, "regressor"), report("fp32", "rel_l2", 0.02, "regressor")
    ).value == pytest.approx(0.03)
    top1 = combined(
        report("int8", "top1", 0.95, "classifier"), report("fp32", "rel_l2", 1e-4, "classifier")
    )
    assert top1.metric == "top1" and top1.value == pytest.approx(0.9)
    with pytest.raises(PlanError, match="task"):
        combined({"task": "?"}, {})


# -- verdicts ----------------------------------------------------------------------------------
def figures(
    stable: tuple[int, int, float], candidate: tuple[int, int, float], slow: int = 0
) -> Any:
    """Step figures: (calls, errors, latency) per version; ``slow`` candidate calls at 0.2 s."""
    recorder, redis = StepRecorder("a"), FakeRedis()
    r = route(10)
    for version, (n, errors, latency) in (("1", stable), ("2", candidate)):
        for i in range(n):
            recorder.request(r, version, i >= errors, latency)
    for _ in range(slow):
        recorder.request(r, "2", True, 0.2)
    asyncio.run(recorder.flush(redis))  # type: ignore[arg-type]
    return parse_step(redis.hash(stats_key("r1", 1)))


def test_a_step_fails_on_errors_and_latency_and_passes_in_time() -> None:
    s = RolloutSettings()
    judge = analysis.judge_canary
    bad = judge(figures((500, 0, 0.01), (10, 6, 0.01)), "1", "2", {}, 1.0, 60, s)
    assert bad.kind == "fail" and "failed 6 of 10" in bad.reason
    slow = judge(figures((500, 0, 0.01), (60, 0, 0.08)), "1", "2", {}, 1.0, 60, s)
    assert slow.kind == "fail" and "p50" in slow.reason  # everything moved: at once
    tail = figures((500, 0, 0.01), (147, 0, 0.0105), slow=3)  # only its tail is long
    assert judge(tail, "1", "2", {}, 1.0, 60, s).kind == "continue"
    late = judge(tail, "1", "2", {}, 61.0, 60, s)
    assert late.kind == "fail" and "p99" in late.reason and "150 calls" in late.reason
    few = figures((500, 0, 0.01), (58, 0, 0.0105), slow=2)  # a p99 of 60 calls: not enough
    assert judge(few, "1", "2", {}, 61.0, 60, s).kind == "pass"
    good = figures((500, 0, 0.01), (60, 0, 0.0105))
    assert judge(good, "1", "2", {}, 1.0, 60, s).kind == "continue"
    assert judge(good, "1", "2", {}, 61.0, 60, s).kind == "pass"
    quiet = figures((500, 0, 0.01), (10, 0, 0.01))
    assert judge(quiet, "1", "2", {}, 61.0, 60, s).kind == "continue"  # waits for traffic
    assert judge(quiet, "1", "2", {}, 181.0, 60, s).kind == "fail"
    # at 100 % the stable's figures of the previous step are the baseline
    alone = figures((0, 0, 0.01), (60, 0, 0.08))
    baseline = {"error_rate": 0, "p50_ms": 10.5, "p99_ms": 10.5}
    assert judge(alone, "1", "2", baseline, 1, 60, s).kind == "fail"


TENSORS = (
    'input { name: "x" data_type: TYPE_FP32 dims: 4 }\n'
    'output { name: "y" data_type: TYPE_FP32 dims: 4 }\n'
)


# -- the repository writers --------------------------------------------------------------------
def test_policy_pins_and_records_are_written_whole(tmp_path: Path) -> None:
    from export.ensemble import write_text_pipeline  # noqa: F401  (keeps the writer importable)

    repo = tmp_path / "repo"
    (repo / "enc" / "1").mkdir(parents=True)
    (repo / "enc" / "config.pbtxt").write_text(
        'name: "enc"\nbackend: "python"\nmax_batch_size: 8\n'
        "version_policy { latest { num_versions: 1 } }\n" + TENSORS
    )
    (repo / "enc_text" / "1").mkdir(parents=True)
    (repo / "enc_text" / "config.pbtxt").write_text(
        'name: "enc_text"\nplatform: "ensemble"\nmax_batch_size: 8\n' + TENSORS + ""
        'ensemble_scheduling { step { model_name: "enc" model_version: -1 '
        'input_map { key: "x" value: "x" } output_map { key: "y" value: "y" } } }\n'
    )
    assert version_policy(repo, "enc") is None
    write_version_policy(repo, "enc", [2, 1, 2])
    assert version_policy(repo, "enc") == [1, 2]
    tracked = (ROOT / "model_repository" / "minilm" / "config.pbtxt").read_text()
    (repo / "minilm").mkdir()
    (repo / "minilm" / "config.pbtxt").write_text(tracked)
    write_version_policy(repo, "minilm", [4])
    write_latest_policy(repo, "minilm")  # the demo, after its promotion: the tracked text again
    assert (repo / "minilm" / "config.pbtxt").read_text() == tracked
    assert pipelines_using(repo, "enc") == ["enc_text"]
    assert pin_step(repo, "enc_text", "enc", 1).ensemble_scheduling.step[0].model_version == 1
    assert "model_version: 1" in (repo / "enc_text" / "config.pbtxt").read_text()
    (repo / "enc" / "1" / "report.json").write_text(json.dumps({"status": "OK"}))
    record_rollout(repo, "enc", 1, {"id": "a", "result": "aborted", "started_unix": 2})
    record_rollout(repo, "enc", 1, {"id": "b", "result": "promoted", "started_unix": 3})
    record_rollout(repo, "enc", 1, {"id": "a", "result": "aborted", "started_unix": 1})
    found = rollout_records(repo, "enc")
    assert [r["id"] for r in found] == ["a", "b"] and found[0]["version"] == 1
    assert json.loads((repo / "enc" / "1" / "report.json").read_text())["status"] == "OK"
    assert not list(repo.rglob("*.tmp"))


def test_importing_the_rollout_controller_loads_no_torch() -> None:
    code = "import sys, rollout.controller, tritonstack.rollout_cli; print('torch' in sys.modules)"
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert found.stdout.strip() == "False"


def test_a_version_published_again_is_hard_links_and_its_own_report(tmp_path: Path) -> None:
    from export.repository import copy_version

    source = tmp_path / "m" / "3"
    source.mkdir(parents=True)
    (source / "model.onnx").write_bytes(b"weights")
    (source / "report.json").write_text(json.dumps({"version": 3, "rollouts": [{"id": "a"}]}))
    made = copy_version(tmp_path, "m", 3)
    assert (
        made.name == "4"
        and (made / "model.onnx").stat().st_ino == (source / "model.onnx").stat().st_ino
    )
    report = json.loads((made / "report.json").read_text())
    assert report["version"] == 4 and report["copied_from"] == 3 and "rollouts" not in report
    assert json.loads((source / "report.json").read_text())["rollouts"] == [{"id": "a"}]


def test_every_table_a_rollout_publishes_is_one_the_gateways_accept(redis_server: Any) -> None:
    """The promotion once published the candidate alone without its stable arm: the gateways
    refused that table and kept the previous one while the controller went on to unload."""
    import redis

    from rollout.errors import StoreError
    from rollout.routes import promoted_arms, publish, routes_for
    from rollout.state import RolloutState

    state = RolloutState(
        "r-test", "minilm", "1", "2", {}, [50, 100], True, 1.0, 3,
        {"metric": "cosine", "budget": 0.99},
    )  # fmt: skip
    client = redis.Redis.from_url(redis_server.url)
    try:
        published = [
            [(state.stable, 100)],  # shadow, abort
            [(state.candidate, 50), (state.stable, 50)],  # canary
            promoted_arms(state),
        ]
        for arms in published:
            revision = publish(client, state, routes_for(state, arms, shadow=False))
            table = parse_table(client.get("tritonstack:routes"))
            assert table.revision == revision
            assert {a.version: a.weight for a in table.routes["minilm"].arms} == dict(arms)
        with pytest.raises(StoreError, match="stable: '1' is not one of the arms"):
            publish(client, state, routes_for(state, [(state.candidate, 100)], shadow=False))
        assert parse_table(client.get("tritonstack:routes")).revision == revision  # unchanged
    finally:
        client.delete("tritonstack:routes")
        client.close()
