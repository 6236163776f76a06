"""Rollouts against a real Triton, a real Redis and two gateway processes, under a closed-loop
load of 16 sticky callers (bounded in time): a good candidate goes shadow → 10 → 50 → 100 %
and is promoted with no failed request, a candidate outside its accuracy budget is caught in
shadow, one that errors and one that is slow are rolled back, and the v1 → v2 → rollback → v2
history is in `rollout status` and the export reports.

One Triton (MiniLM version 1 and its text pipeline, from the session export), one Redis and two
gateways serve the module; the tests run in order, each from the version the last one left.
Candidates are hard-linked copies of a served version (MiniLM is 90 MB), some of them broken.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deploy.local.gateway import GatewayProcess
from deploy.local.redis import RedisServer
from deploy.local.runtime import TritonRuntime
from deploy.local.triton import TritonServer
from export.reader import rollout_records, version_policy
from gateway.traffic import BUCKETS, bucket, sticky_key
from rollout.controller import Controller
from rollout.settings import RolloutSettings
from rollout.state import RolloutState
from tests.fixtures_gateway import UNLIMITED_KEY, StartGateway
from tests.integration.rollouts import Load, break_version, copy_version, perturb_weights

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CONCURRENCY = 16
STEP_S = 4.0


@dataclass
class World:
    repository: Path
    triton: TritonServer
    redis: RedisServer
    gateways: list[GatewayProcess]
    settings: RolloutSettings

    @property
    def urls(self) -> list[str]:
        return [g.url for g in self.gateways]

    def controller(self, **update: object) -> Controller:
        return Controller.from_settings(self.settings.model_copy(update=update))

    def served(self) -> list[str]:
        return self.controller().admin.served_versions("minilm")

    def load(self) -> Load:
        return Load(self.urls, UNLIMITED_KEY, concurrency=CONCURRENCY, max_seconds=90)


@pytest.fixture(scope="module")
def world(
    runtime: TritonRuntime,
    model_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
    start_gateway: StartGateway,
) -> Iterator[World]:
    base = tmp_path_factory.mktemp("rollouts")
    repository = base / "repository"
    for name in ("minilm", "minilm_tokenizer", "minilm_text"):
        shutil.copytree(model_repository / name, repository / name, copy_function=os.link)
    for version in [p for p in (repository / "minilm").iterdir() if p.name.isdigit()]:
        if version.name != "1":
            shutil.rmtree(version)
    report = repository / "minilm" / "1" / "report.json"
    text = report.read_text()
    report.unlink()  # rollouts write into it: a file of its own, not the session export's
    report.write_text(text)
    triton = TritonServer(
        runtime, repository, work_dir=base / "triton", startup_timeout_s=120,
        model_control_mode="explicit",
        extra_args=[f"--load-model={n}" for n in ("minilm", "minilm_tokenizer", "minilm_text")],
    )  # fmt: skip
    with triton, RedisServer(base / "redis") as redis:
        gateways = [
            start_gateway(triton.grpc_url, redis.url, routes_poll_s=0.25, stats_flush_s=0.25)
            for _ in range(2)
        ]
        settings = RolloutSettings(
            redis_url=redis.url,
            triton_http_urls=[triton.http_url],
            repository=repository,
            state_dir=base / "state",
            steps=[10, 50, 100],
            step_seconds=STEP_S,
            shadow_sample=0.5,
            check_interval_s=0.5,
            min_requests=20,
            min_shadow_rows=20,
            p99_slack_ms=50,
            replica_wait_s=3,
            replica_fresh_s=2,
        )
        yield World(repository, triton, redis, gateways, settings)
        for gateway in gateways:
            gateway.stop()


def candidate(rollout: str, key: str, weight: float) -> bool:
    """Whether the caller with ``X-Routing-Key: key`` is on the candidate at ``weight`` %."""
    return bucket(rollout, sticky_key("unlimited", key)) < round(weight * BUCKETS / 100)


def windows(state: RolloutState) -> list[tuple[str, int, float, float]]:
    """Each step's (phase, weight, start, end): while every replica used its routes."""
    found = []
    for step in state.steps:
        assert step.ended_unix is not None
        found.append((step.phase, step.weight, step.started_unix + 0.3, step.ended_unix))
    return found


def test_a_rollout_rolled_back_by_hand_leaves_the_stable_version(world: World) -> None:
    copy_version(world.repository / "minilm", 1, 2)
    controller = world.controller()
    controller.start("minilm", "2", shadow=True)
    state = controller.drive("minilm", stop=lambda s: s.phase == "shadow")
    assert state.phase == "shadow" and world.served() == ["1", "2"]
    state = controller.request("minilm", "abort")  # no controller drives it: done here
    assert state.phase == "aborted" and state.reason == "aborted by hand"
    assert world.served() == ["1"]
    assert version_policy(world.repository, "minilm") == [1]  # a restarted Triton agrees


def test_a_good_candidate_is_promoted_step_by_step_with_no_failed_request(world: World) -> None:
    controller = world.controller()
    with world.load() as load:
        load.wait_for(200)
        state = controller.start("minilm", "2", shadow=True)
        state = controller.drive("minilm")
        time.sleep(1.0)  # every replica on the promoted table
        after = len(load.answers)
        load.wait_for(after + 100)
    assert state.phase == "promoted", state.reason
    answers = load.answers
    assert len(answers) > 500
    failed = [a for a in answers if a.status != 200]
    assert failed == [], f"{len(failed)} failed, first: {failed[:3]}"
    assert {a.version for a in answers} <= {"1", "2"}
    for phase, weight, start, end in windows(state):
        seen = load.between(start, end)
        share = 100 * sum(a.version == "2" for a in seen) / len(seen)
        # each answer is the version its caller's bucket names (the split is the hash's)
        wrong = [
            a for a in seen if a.version != ("2" if candidate(state.id, a.key, weight) else "1")
        ]
        assert not wrong, (phase, weight, len(wrong), wrong[:3])
        assert abs(share - weight) <= 5, (phase, weight, share, len(seen))
    flipped = set()
    candidate_seen: set[str] = set()
    for answer in sorted(answers, key=lambda a: a.at):  # sticky: never back to the stable
        if answer.version == "2":
            candidate_seen.add(answer.key)
        elif answer.key in candidate_seen:
            flipped.add(answer.key)
    assert not flipped, sorted(flipped)[:5]
    assert {a.version for a in answers[after:]} == {"2"}
    assert world.served() == ["2"]
    shadow = state.steps[0]
    assert shadow.phase == "shadow" and shadow.figures["shadow"]["within"] >= 20


def test_a_candidate_outside_its_budget_is_caught_in_shadow(world: World) -> None:
    perturb_weights(copy_version(world.repository / "minilm", 2, 3))
    controller = world.controller()
    with world.load() as load:
        load.wait_for(100)
        controller.start("minilm", "3", shadow=True)
        state = controller.drive("minilm")
    assert state.phase == "aborted"
    assert state.steps[-1].phase == "shadow" and "budget" in state.reason, state.reason
    assert {a.version for a in load.answers} == {"2"}  # no client was ever answered by it
    assert all(a.status == 200 for a in load.answers)
    assert world.served() == ["2"]


@pytest.mark.parametrize(("fault", "version"), [("errors", 4), ("slow", 5)])
def test_a_failing_candidate_is_rolled_back_with_bounded_harm(
    world: World, fault: str, version: int
) -> None:
    break_version(copy_version(world.repository / "minilm", 2, version), fault)
    controller = world.controller()
    with world.load() as load:
        load.wait_for(100)
        controller.start("minilm", str(version), shadow=False)
        state = controller.drive("minilm")
    assert state.phase == "aborted"
    step = state.steps[-1]
    assert step.phase == "canary" and step.weight == 10, state.reason
    assert ("failed" if fault == "errors" else "p99") in state.reason, state.reason
    assert world.served() == ["2"]
    failed = [a for a in load.answers if a.status != 200]  # only the candidate ever fails
    if fault == "slow":
        assert failed == []
        return
    # the candidate's share of the traffic, for as long as it took to see it fail and to send
    # every caller back (+ the calls in flight then)
    detection = float(state.result["detected_after_s"]) + float(state.result["rolled_back_after_s"])
    seen = load.between(step.started_unix, state.ended_unix or time.time())
    rate = len(seen) / max(1e-3, (state.ended_unix or time.time()) - step.started_unix)
    bound = 0.10 * rate * (detection + 1.0) * 1.5 + CONCURRENCY
    reported = int(state.result["candidate_failed_requests"])
    assert 0 < len(failed) <= bound, (len(failed), bound, detection, rate)
    assert 0 < reported <= len(failed)  # the figures (flushed every 0.25 s) lag the clients
    print(
        f"erroring candidate: {len(failed)} failed answers (bound {bound:.0f}, reported "
        f"{reported}), detected after {state.result['detected_after_s']} s, every caller back "
        f"after {state.result['rolled_back_after_s']} s more, {rate:.0f} answers/s"
    )
    assert all(a.version in ("", str(version)) for a in failed)


def test_the_history_is_in_rollout_status_and_the_export_reports(world: World) -> None:
    records = rollout_records(world.repository, "minilm")
    two = [(r["version"], r["from"], r["result"]) for r in records if r["version"] == 2]
    assert two == [(2, 1, "aborted"), (2, 1, "promoted")]
    assert [r["result"] for r in records if r["version"] in (3, 4, 5)] == ["aborted"] * 3
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ROLLOUT_REDIS_URL": world.redis.url,
        "ROLLOUT_TRITON_HTTP_URLS": json.dumps([world.triton.http_url]),
        "ROLLOUT_REPOSITORY": str(world.repository),
        "ROLLOUT_STATE_DIR": str(world.settings.state_dir),
    }
    cli = Path(sys.executable).parent / "tritonstack"
    shown = subprocess.run(
        [str(cli), "rollout", "status", "--model", "minilm"],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    lines = [line for line in shown.stdout.splitlines() if " -> v" in line]
    assert [line.split()[2:5] for line in lines[:2]] == [
        ["v1", "->", "v2"], ["v1", "->", "v2"]
    ], shown.stdout  # fmt: skip
    assert "aborted: aborted by hand" in lines[0] and "promoted" in lines[1]
    answer = httpx.post(
        world.urls[0] + "/v2/models/minilm/versions/2/infer",
        json={"inputs": [{"name": n, "datatype": "INT64", "shape": [1, 3], "data": d}
                         for n, d in (("input_ids", [101, 2000, 102]),
                                      ("attention_mask", [1, 1, 1]),
                                      ("token_type_ids", [0, 0, 0]))]},
        headers={"Authorization": f"Bearer {UNLIMITED_KEY}"}, timeout=30,
    )  # fmt: skip
    assert answer.status_code == 200 and answer.json()["model_version"] == "2"
    assert answer.headers["x-model-version"] == "2"
