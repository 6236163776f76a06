"""A stack started by `up` heals itself: tritonserver, redis-server or the gateway killed under
load, or Triton aborting after a stalled python-backend stub, comes back on the same ports with no
command typed, the gateway follows, and `down` leaves no process and no shared memory behind.

One supervised stack (the real supervisor, Triton with the MiniLM text pipeline, Redis, the
gateway) is shared by the tests of this module, which run in order.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploy.local import stack
from deploy.local.harness import tenants_env
from deploy.local.process import group_members, pid_running
from deploy.local.runtime import TritonRuntime
from deploy.local.settings import StackSettings
from deploy.local.state import ServiceRecord, process_cmdline
from deploy.local.triton import shm_regions
from gateway.settings import GatewaySettings
from tests.fixtures_gateway import TENANTS, UNLIMITED_KEY
from tests.reliability.conftest import Outcome, drive, summarize

pytestmark = pytest.mark.integration
LOAD = {"Authorization": f"Bearer {UNLIMITED_KEY}"}
NO_CACHE = {**LOAD, "Cache-Control": "no-cache"}
RECOVERY_S = 10.0  # the bound: 200s again within 10 s of a kill


@dataclass
class Stack:
    settings: StackSettings
    repository: Path
    gateway: str  # URL

    def record(self, name: str) -> ServiceRecord:
        state = stack.read_stack(self.settings)
        assert state is not None, "the stack's state file is gone"
        return state.services[name]

    @property
    def shm_prefix(self) -> str:
        state = stack.read_stack(self.settings)
        assert state is not None
        return state.shm_prefix


@pytest.fixture(scope="module")
def supervised(
    model_repository: Path, runtime: TritonRuntime, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """`up` of a stack serving the MiniLM text pipeline (hard links to the session's export)."""
    base = tmp_path_factory.mktemp("supervised")
    repository = base / "repository"
    for name in ("minilm", "minilm_tokenizer", "minilm_text"):
        shutil.copytree(model_repository / name, repository / name, copy_function=os.link)
    settings = StackSettings(
        home=base / "home", model_repository=repository, runtime_env=runtime.env_dir,
        startup_timeout_s=120, shutdown_timeout_s=15,
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as env:  # the supervisor passes these to the gateway
        for name, value in tenants_env(TENANTS).items():  # a tenant load cannot rate-limit
            env.setenv(name, value)
        env.setenv("GATEWAY_SCORING_ENABLED", "false")
        # the supervisor's own remedies under test: the gateway's pipeline probes (which reload
        # a model whose stub died, tests/reliability/test_backend_failures.py) stay off here
        env.setenv("GATEWAY_PROBE_INTERVAL_S", "0")
        stack.up(settings)
    gateway = stack.read_service(settings, "gateway")
    assert gateway is not None
    try:
        yield Stack(settings, repository, gateway.url)
    finally:
        if stack.read_stack(settings) is not None:
            stack.down(settings)


def _embed(text: str, headers: dict[str, str] = NO_CACHE) -> Callable[[Any, int], Any]:
    def send(session: Any, i: int) -> Any:
        return session.post(
            "/v1/embeddings", json={"input": f"{text} {i}", "model": "minilm"}, headers=headers
        )

    return send


def _triton_text(text: str) -> Callable[[Any, int], Any]:
    """Raw strings straight to Triton's text pipeline (KServe v2 JSON), no gateway between."""

    def send(session: Any, i: int) -> Any:
        tensor = {"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": [f"{text} {i}"]}
        return session.post("/v2/models/minilm_text/infer", json={"inputs": [tensor]})

    return send


def _get(url: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=LOAD)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError:
        return 0, b""


async def _until(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``check`` (in a thread: it may do I/O) until true; the monotonic time it became so."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"not within {timeout_s:g} s: {what}"
        await asyncio.sleep(0.05)
    return time.monotonic()


def _restarted(supervised: Stack, name: str, old_pid: int | None) -> Callable[[], bool]:
    def check() -> bool:
        record = supervised.record(name)
        return record.state == "running" and record.pid not in (None, old_pid)

    return check


_FIELDS = GatewaySettings.model_fields  # the gateway's defaults (this stack sets neither)
SETTLE_S = float(_FIELDS["health_interval_s"].default) + float(
    _FIELDS["breaker_cooldown_s"].default
)


def _members(pgid: int) -> dict[int, str]:
    return {pid: process_cmdline(pid) for pid in group_members(pgid)}


def _after(outcomes: list[Outcome], start: float) -> list[Outcome]:
    return [o for o in outcomes if o.started >= start]


# -- tritonserver killed under load --------------------------------------------------------------
async def test_triton_sigkill_under_load_comes_back_on_the_same_ports(
    supervised: Stack, figures: dict
) -> None:
    before = supervised.record("triton")
    gateway_pid = supervised.record("gateway").pid
    assert before.pid is not None
    old_group = _members(before.pid)  # tritonserver + one python-backend stub per instance
    old_regions = shm_regions(supervised.shm_prefix)
    assert len(old_group) >= 3 and old_regions, (old_group, old_regions)
    # the gateway has minilm's metadata (version 1) cached; a version 2 is exported meanwhile:
    # only a new Triton process serves it (explicit model control)
    status, body = _get(f"{supervised.gateway}/v2/models/minilm")
    assert status == 200 and json.loads(body)["versions"] == ["1"], body
    minilm = supervised.repository / "minilm"
    shutil.copytree(minilm / "1", minilm / "2", copy_function=os.link)

    marks: dict[str, float] = {}
    stop = False

    async def controller() -> None:
        nonlocal stop
        try:
            await asyncio.sleep(2.0)
            marks["killed"] = time.monotonic()
            os.kill(before.pid, signal.SIGKILL)  # the server alone: a crash leaves its stubs
            marks["restarted"] = await _until(
                _restarted(supervised, "triton", before.pid), 60, "Triton restarted"
            )
            # /readyz is the gateway's last health round, and the breaker of a model that
            # failed stays open for its cooldown: wait out both before reading it
            await asyncio.sleep(SETTLE_S)
            marks["readyz"] = await _until(
                lambda: _get(f"{supervised.gateway}/readyz")[0] == 200, 30, "/readyz true"
            )
            await asyncio.sleep(2.0)
        finally:
            stop = True

    outcomes, _ = await asyncio.gather(
        drive(supervised.gateway, _embed("sigkill"), clients=8, until=lambda: stop), controller()
    )
    killed = marks["killed"]
    after = supervised.record("triton")
    outage = [o for o in outcomes if killed <= o.started < marks["readyz"] and o.status != 200]
    recovered = min(o.finished for o in _after(outcomes, killed) if o.status == 200)
    fast = sorted(o.latency_s for o in outage)
    figures.update(
        summarize(outcomes),
        time_to_restart_ms=round((marks["restarted"] - killed) * 1000, 1),
        time_to_recover_ms=round((recovered - killed) * 1000, 1),
        time_to_readyz_ms=round((marks["readyz"] - killed) * 1000, 1),
        outage_errors=len(outage),
        outage_p50_ms=round(fast[len(fast) // 2] * 1000, 1) if fast else None,
        outage_max_ms=round(fast[-1] * 1000, 1) if fast else None,
    )
    assert {o.status for o in outcomes} <= {200, 503}, summarize(outcomes)  # nothing else
    assert outage and fast[len(fast) // 2] < 0.1 and fast[-1] < 2.5  # fast 503s, no pile-up
    assert recovered - killed < RECOVERY_S, figures
    assert all(o.status == 200 for o in _after(outcomes, marks["readyz"] + 0.5))
    # same addresses, recorded cause; the gateway was not restarted: it followed
    assert after.ports == before.ports and after.restarts == before.restarts + 1
    assert after.last_exit is not None and after.last_exit.cause == "killed by SIGKILL"
    assert supervised.record("gateway").pid == gateway_pid
    # the dead server's orphaned stubs were killed and its shared memory removed, exactly
    assert not [pid for pid in old_group if pid_running(pid)]
    regions = shm_regions(supervised.shm_prefix)
    assert regions and not set(old_regions) & set(regions)
    live = " ".join(_members(after.pid or 0).values())
    assert all(region.name in live for region in regions)  # each one a live stub's
    # the gateway reloaded the metadata of the restarted Triton (not after its 30 s TTL)
    status, body = _get(f"{supervised.gateway}/v2/models/minilm")
    assert status == 200 and json.loads(body)["versions"] == ["2"], body


# -- redis-server killed under load --------------------------------------------------------------
async def test_redis_sigkill_under_load_comes_back_on_the_same_port(
    supervised: Stack, figures: dict
) -> None:
    before = supervised.record("redis")
    assert before.pid is not None
    marks: dict[str, float] = {}
    stop = False

    async def controller() -> None:
        nonlocal stop
        try:
            await asyncio.sleep(2.0)
            marks["killed"] = time.monotonic()
            os.kill(before.pid, signal.SIGKILL)
            marks["restarted"] = await _until(
                _restarted(supervised, "redis", before.pid), 30, "redis-server restarted"
            )
            await asyncio.sleep(3.0)
        finally:
            stop = True

    def send(session: Any, i: int) -> Any:  # 20 distinct texts: the cache has work to do
        return session.post(
            "/v1/embeddings", json={"input": f"redis {i % 20}", "model": "minilm"}, headers=LOAD
        )

    outcomes, _ = await asyncio.gather(
        drive(supervised.gateway, send, clients=8, until=lambda: stop), controller()
    )
    killed, restarted = marks["killed"], marks["restarted"]
    hits = [o for o in _after(outcomes, restarted) if o.headers.get("x-cache") == "HIT"]
    after = supervised.record("redis")
    figures.update(
        summarize(outcomes),
        time_to_restart_ms=round((restarted - killed) * 1000, 1),
        time_to_cache_hit_after_restart_ms=round((min(o.finished for o in hits) - killed) * 1000, 1)
        if hits
        else None,
    )
    assert {o.status for o in outcomes} == {200}, summarize(outcomes)  # Redis loss fails nothing
    assert hits and min(o.finished for o in hits) - killed < RECOVERY_S  # the gateway follows
    assert after.ports == before.ports and after.restarts == before.restarts + 1
    assert after.last_exit is not None and after.last_exit.cause == "killed by SIGKILL"


# -- a stalled python-backend stub: Triton 2.51 aborts on SIGCONT ---------------------------------
async def test_stub_stall_ends_with_triton_restarted_and_answering(
    supervised: Stack, figures: dict
) -> None:
    before = supervised.record("triton")
    assert before.pid is not None
    stub = next(
        pid for pid, cmd in _members(before.pid).items()
        if "triton_python_backend_stub" in cmd and "minilm_tokenizer" in cmd
    )  # fmt: skip
    marks: dict[str, float] = {}
    stop = False

    async def controller() -> None:
        nonlocal stop
        try:
            await asyncio.sleep(1.0)
            os.kill(stub, signal.SIGSTOP)
            await asyncio.sleep(5.0)  # requests arrive and wait on the stopped tokenizer
            marks["continued"] = time.monotonic()
            os.kill(stub, signal.SIGCONT)
            marks["restarted"] = await _until(
                _restarted(supervised, "triton", before.pid), 60, "Triton restarted after abort"
            )
            await _until(lambda: _get(f"{supervised.gateway}/readyz")[0] == 200, 30, "/readyz true")
            await asyncio.sleep(2.0)
        finally:
            stop = True
            if pid_running(stub):
                os.kill(stub, signal.SIGCONT)

    # requests arrive at Triton itself while the stub is stopped (the case); the gateway
    # only has to follow the restarted Triton on the same address
    triton = f"http://{before.host}:{before.ports['http']}"
    outcomes, _ = await asyncio.gather(
        drive(triton, _triton_text("stall"), clients=4, until=lambda: stop), controller()
    )
    status, _ = _get(f"{supervised.gateway}/readyz")
    through_gateway = await drive(
        supervised.gateway, _embed("after the stall"), clients=2, requests_per_client=5
    )
    after = supervised.record("triton")
    continued = marks["continued"]
    answered = [o for o in _after(outcomes, marks["restarted"]) if o.status == 200]
    figures.update(
        summarize(outcomes),
        exit_cause=after.last_exit.cause if after.last_exit else None,
        time_to_restart_after_sigcont_ms=round((marks["restarted"] - continued) * 1000, 1),
        time_to_recover_after_sigcont_ms=round((min(o.finished for o in answered) - continued)
                                               * 1000, 1) if answered else None,
    )  # fmt: skip
    assert after.restarts == before.restarts + 1 and after.ports == before.ports
    # tritonserver 2.51 throws boost's lock_exception on SIGCONT and dies of it: seen as SIGABRT,
    # and now and then as SIGSEGV while it aborts
    assert after.last_exit is not None
    assert after.last_exit.cause in ("aborted (SIGABRT)", "killed by SIGSEGV"), after.last_exit
    assert "lock_exception" in after.last_exit.log_tail  # the recorded reason, from its log
    assert answered and outcomes[-1].status == 200  # the restarted Triton answers
    assert status == 200 and {o.status for o in through_gateway} == {200}  # the gateway follows
    assert not pid_running(stub)


# -- the gateway killed; logs -f follows the supervisor's account --------------------------------
def _cli(supervised: Stack, *args: str, **popen: Any) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "TRITONSTACK_HOME": str(supervised.settings.home),
        "TRITONSTACK_MODEL_REPOSITORY": str(supervised.repository),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tritonstack.cli", *args], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen,
    )  # fmt: skip


def test_gateway_sigkill_comes_back_and_logs_follow_shows_it(
    supervised: Stack, figures: dict
) -> None:
    before = supervised.record("gateway")
    assert before.pid is not None
    follower = _cli(supervised, "logs", "supervisor", "-f", "-n", "1")
    first = ""
    try:
        # the CLI is up and at the end of the log once it printed the last line (a fixed sleep
        # was too short on a loaded machine)
        assert follower.stdout is not None
        ready, _, _ = select.select([follower.stdout], [], [], 60)
        assert ready, "`tritonstack logs -f` printed nothing in 60 s"
        first = follower.stdout.readline()
        killed = time.monotonic()
        os.kill(before.pid, signal.SIGKILL)
        deadline = killed + 30
        while not _restarted(supervised, "gateway", before.pid)():
            assert time.monotonic() < deadline, "the gateway did not come back"
            time.sleep(0.05)
        restarted = time.monotonic()
        while _get(f"{supervised.gateway}/healthz")[0] != 200:  # the same URL
            assert time.monotonic() < deadline, "the gateway does not answer"
            time.sleep(0.05)
        figures["time_to_restart_ms"] = round((restarted - killed) * 1000, 1)
        time.sleep(0.6)  # one more poll of the follower
    finally:
        follower.terminate()
        followed, _ = follower.communicate(timeout=10)
        followed = first + followed
    after = supervised.record("gateway")
    assert after.ports == before.ports and after.restarts == before.restarts + 1
    assert "gateway killed by SIGKILL" in followed and "gateway running" in followed, followed


def test_status_shows_health_uptime_restarts_and_last_exit(supervised: Stack) -> None:
    shown = _cli(supervised, "status", "--json")
    out, errors = shown.communicate(timeout=60)
    assert shown.returncode == 0, errors
    info = json.loads(out)
    for name in ("triton", "redis", "gateway"):
        record = supervised.record(name)
        entry = info[name]
        assert entry["state"] == "running" and entry["health"] == "healthy", entry
        assert entry["pid"] == record.pid and entry["uptime_s"] >= 0
        assert entry["restarts"] == record.restarts
        last = record.last_exit
        assert (entry["last_exit"] or {}).get("cause") == (last.cause if last else None)
    assert info["triton"]["ready"] and info["gateway"]["ready"]
    previous = _cli(supervised, "logs", "triton", "--previous", "-n", "200")
    assert "lock_exception" in previous.communicate(timeout=60)[0]  # the aborted process's log


# -- down ------------------------------------------------------------------------------------------
def test_down_leaves_no_process_and_no_shared_memory(supervised: Stack) -> None:
    state = stack.read_stack(supervised.settings)
    assert state is not None and state.supervisor.pid is not None
    pids = {state.supervisor.pid}
    for record in state.services.values():
        assert record.pid is not None
        pids |= set(group_members(record.pid))  # Triton's group: the server and its stubs
    assert len(pids) >= 6 and shm_regions(state.shm_prefix)
    stack.down(supervised.settings)
    assert not [pid for pid in pids if pid_running(pid)]
    home = str(supervised.settings.home)
    assert not [p for p in Path("/proc").glob("[0-9]*") if home in process_cmdline(int(p.name))]
    assert shm_regions(state.shm_prefix) == []
    assert not supervised.settings.state_file.exists()
