"""The supervisor's policy and its runner, on tiny real processes (``sh``/``sleep``, no servers):
backoff and budget, exit causes, orphans of a dead leader killed, a hung process replaced."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.local import stack
from deploy.local.errors import StackStartError
from deploy.local.logs import follow
from deploy.local.process import BackgroundProcess, exit_cause, pid_running
from deploy.local.services import ServiceSpec
from deploy.local.settings import StackSettings
from deploy.local.state import (
    ExitRecord,
    ServiceRecord,
    StackState,
    SupervisorRecord,
    read_state_file,
    write_state_file,
)
from deploy.local.supervisor import RestartPolicy, ServiceRunner, StateStore, exit_log_tail


def test_backoff_grows_per_restart_in_the_window_and_the_budget_ends_it() -> None:
    policy = RestartPolicy(backoff_s=0.2, backoff_max_s=30, multiplier=4, budget=3, window_s=60)
    assert policy.delay([], now=100) == pytest.approx(0.2)
    assert policy.delay([99], now=100) == pytest.approx(0.8)
    assert policy.delay([98, 99], now=100) == pytest.approx(3.2)
    assert policy.delay([97, 98, 99], now=100) is None  # budget spent
    assert policy.delay([10, 20, 99], now=100) == pytest.approx(0.8)  # two left the window
    capped = RestartPolicy(backoff_s=10, backoff_max_s=30, multiplier=4, budget=9, window_s=60)
    assert capped.delay([1, 2], now=3) == 30


def test_exit_causes_in_words() -> None:
    assert exit_cause(-signal.SIGKILL) == "killed by SIGKILL"
    assert exit_cause(-signal.SIGABRT) == "aborted (SIGABRT)"
    assert exit_cause(3) == "exited with code 3"


def test_exit_log_tail_drops_backtrace_frames(tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    log.write_text(
        "I1202 ready\nterminate called after throwing 'lock_exception'\nSignal (6) received.\n"
        " 0# 0x00005 in /bin/tritonserver\n17# 0x00007 in libc.so.6\n"
    )
    assert exit_log_tail(log).splitlines() == [
        "I1202 ready",
        "terminate called after throwing 'lock_exception'",
        "Signal (6) received.",
    ]


def _state(tmp_path: Path) -> StackState:
    record = ServiceRecord("redis", "127.0.0.1", {"redis": 1}, "redis://x", str(tmp_path / "l"))
    return StackState(
        settings={}, shm_prefix="tritonstack_test_", supervisor=SupervisorRecord(log="s.log"),
        services={"redis": record},
    )  # fmt: skip


def test_state_file_round_trips_and_is_replaced_atomically(tmp_path: Path) -> None:
    state = _state(tmp_path)
    state.services["redis"].exits.append(ExitRecord(1.0, "killed by SIGKILL", 2.5, "tail"))
    path = tmp_path / "state.json"
    write_state_file(path, state)
    assert read_state_file(path) == state
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    path.write_text('{"triton": {"pid": 1}}')  # a state file of the launcher before supervision
    assert read_state_file(path) is None


class Sleeper(BackgroundProcess):
    """``sh`` leading a group: it starts a ``sleep`` child (an orphan once ``sh`` dies)."""

    name = "sleeper"

    def __init__(self, directory: Path, script: str) -> None:
        self.directory = directory
        super().__init__(
            ["sh", "-c", script], log_path=directory / "sleeper.log",
            ready=lambda: (directory / "child.pid").exists(), cwd=directory,
            startup_timeout_s=10, shutdown_timeout_s=2,
        )  # fmt: skip

    def prepare(self) -> None:
        (self.directory / "child.pid").unlink(missing_ok=True)


GROUP = "sleep 60 & echo $! > child.pid; echo started; sleep 60"


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Callable[..., tuple[ServiceRunner, StateStore]]]:
    runners: list[ServiceRunner] = []

    def start(
        script: str = GROUP, live: Callable[[], bool] = lambda: True, **settings: float
    ) -> tuple[ServiceRunner, StateStore]:
        store = StateStore(tmp_path / "state.json", _state(tmp_path))
        spec = ServiceSpec("redis", lambda: Sleeper(tmp_path, script), live, lambda: None)
        options = {"restart_backoff_s": 0.05, "liveness_interval_s": 0.1, **settings}
        stack = StackSettings(home=tmp_path, **options)  # type: ignore[arg-type]
        runner = ServiceRunner(spec, store, stack, RestartPolicy.from_settings(stack))
        runners.append(runner)
        runner.thread.start()
        assert runner.started.wait(10) and runner.error is None, runner.error
        return runner, store

    yield start
    for runner in runners:
        runner.stop()


def _until(check: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_killed_process_is_restarted_and_its_orphans_are_killed(
    run: Callable[..., tuple[ServiceRunner, StateStore]], tmp_path: Path
) -> None:
    _, store = run()
    first = store.state.services["redis"].pid
    assert first is not None
    orphan = int((tmp_path / "child.pid").read_text())
    os.kill(first, signal.SIGKILL)  # the leader only: its `sleep` child stays, as stubs do
    _until(lambda: store.state.services["redis"].state == "running"
           and store.state.services["redis"].pid not in (None, first))  # fmt: skip
    record = store.state.services["redis"]
    assert not pid_running(orphan)
    assert record.restarts == 1 and [e.cause for e in record.exits] == ["killed by SIGKILL"]
    assert "started" in record.exits[0].log_tail
    assert (tmp_path / "sleeper.log.1").exists()  # the dead process's log is kept
    assert read_state_file(tmp_path / "state.json") == store.state  # written as it changed


def test_a_service_that_keeps_dying_stops_at_its_restart_budget(
    run: Callable[..., tuple[ServiceRunner, StateStore]],
) -> None:
    _, store = run("echo $$ > child.pid; sleep 0.2; exit 3", restart_budget=2)
    _until(lambda: store.state.services["redis"].state == "failed")
    record = store.state.services["redis"]
    assert record.restarts == 2
    assert [e.cause for e in record.exits] == ["exited with code 3"] * 3
    assert record.message is not None and "restart budget" in record.message


def test_a_hung_process_fails_its_liveness_checks_and_is_replaced(
    run: Callable[..., tuple[ServiceRunner, StateStore]],
) -> None:
    answers = iter([False] * 3 + [True] * 10_000)  # hung once, then the new process answers
    _, store = run(live=lambda: next(answers), liveness_failures=3)
    _until(lambda: store.state.services["redis"].restarts == 1
           and store.state.services["redis"].state == "running")  # fmt: skip
    assert store.state.services["redis"].exits[0].cause.startswith("liveness check failed 3")


def test_stop_stops_the_group_and_records_it(
    run: Callable[..., tuple[ServiceRunner, StateStore]], tmp_path: Path
) -> None:
    runner, store = run()
    pid = store.state.services["redis"].pid
    orphan = int((tmp_path / "child.pid").read_text())
    runner.stop()
    assert pid is not None and not pid_running(pid) and not pid_running(orphan)
    assert store.state.services["redis"].state == "stopped"
    assert not runner.thread.is_alive()


def test_follow_reads_a_log_to_its_end_and_goes_on_in_the_next_process_log(
    tmp_path: Path,
) -> None:
    log = tmp_path / "tritonserver.log"
    log.write_text("before\n")  # already there: not printed by -f -n 0
    seen: list[str] = []
    done = threading.Event()
    follower = threading.Thread(
        target=follow, args=(log, seen.append), kwargs={"poll_s": 0.02, "until": done.is_set}
    )
    follower.start()
    try:
        time.sleep(0.1)
        with log.open("a") as fh:
            fh.write("one\n")
            fh.flush()
            log.rename(tmp_path / "tritonserver.log.1")  # the supervisor keeps it as .1 ...
            fh.write("last words \u00e9\n")  # ... written before the follower saw them
        time.sleep(0.1)
        log.write_text("fresh\n")  # the restarted process
        _until(lambda: "fresh" in "".join(seen), 5)
    finally:
        done.set()
        follower.join(5)
    text = "".join(seen)
    assert "before" not in text
    assert text.index("one") < text.index("last words \u00e9") < text.index("a new process")
    assert text.index("a new process") < text.index("fresh")


def test_down_stops_a_stack_recorded_before_supervision_and_up_refuses_it(
    tmp_path: Path,
) -> None:
    """A state file of the launcher before supervision (no format): `up` refuses to start a
    second stack beside it, `down` stops its recorded groups that still run their commands."""
    settings = StackSettings(home=tmp_path)
    redis = subprocess.Popen(["sh", "-c", "sleep 60", "redis-server"], start_new_session=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    settings.state_file.write_text(
        json.dumps({"redis": {"pid": redis.pid, "url": "x"}, "triton": {"pid": dead.pid}})
    )
    try:
        with pytest.raises(StackStartError, match="older tritonstack"):
            stack.up(settings)
        stack.down(settings)  # Triton's recorded pid runs nothing now: left alone
        assert not pid_running(redis.pid)  # (stop_process_group reaped it: it is our child)
        assert not settings.state_file.exists()
        assert stack.down(settings) is None  # nothing left to stop: safe to repeat
    finally:
        redis.kill()
        redis.wait()
