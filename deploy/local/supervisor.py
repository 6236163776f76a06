"""The local stack's supervisor: one small daemon that runs Triton, redis-server and the gateway.

``tritonstack up`` starts it (``python -m deploy.local.supervisor STATE_FILE``) in a session of
its own. It starts the services in order, each on the ports recorded in the state, waiting for
each to be ready; a failure there stops what did start and ends the supervisor (``up`` reports
it). Then one thread per service watches its process:

- an exit (or ``liveness_failures`` failed liveness probes in a row: a hung process) is
  recorded with its cause and uptime; what is left of the process group (a killed
  tritonserver's python-backend stubs) is killed, the dead Triton's shared-memory regions are
  removed, its log is kept as ``*.log.1``;
- the service is started again on the same ports after a backoff (``restart_backoff_s`` x4 per
  restart in the window, at most ``restart_backoff_max_s``), unless ``restart_budget``
  restarts happened within ``restart_window_s``: then it stays ``failed`` (``status`` says so).

SIGTERM (``tritonstack down``) stops the gateway, Redis and Triton in that order, removes the
stack's shared-memory regions and records ``stopped``. Why not supervisord: see
docs/architecture.md ("Local supervision").
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from deploy.local.errors import DeployError
from deploy.local.process import (
    BackgroundProcess,
    exit_cause,
    group_alive,
    kill_process_group,
    log_tail,
)
from deploy.local.services import ServiceSpec, specs
from deploy.local.settings import StackSettings
from deploy.local.state import (
    MAX_EXITS,
    ExitRecord,
    StackState,
    read_state_file,
    write_state_file,
)
from deploy.local.triton import is_noise, remove_shm_regions

log = logging.getLogger("tritonstack.supervisor")


@dataclass(frozen=True)
class RestartPolicy:
    """Backoff and budget: ``backoff_s * multiplier**n`` (capped) before a restart, where ``n``
    restarts already happened within ``window_s``; none once ``n`` reaches ``budget``."""

    backoff_s: float = 0.2
    backoff_max_s: float = 30.0
    multiplier: float = 4.0
    budget: int = 5
    window_s: float = 300.0

    @classmethod
    def from_settings(cls, settings: StackSettings) -> RestartPolicy:
        return cls(
            backoff_s=settings.restart_backoff_s,
            backoff_max_s=settings.restart_backoff_max_s,
            budget=settings.restart_budget,
            window_s=settings.restart_window_s,
        )

    def delay(self, restarts: list[float], now: float) -> float | None:
        """Seconds to wait before the next restart, or None when the budget is spent."""
        recent = sum(1 for t in restarts if now - t < self.window_s)
        if recent >= self.budget:
            return None
        return float(min(self.backoff_max_s, self.backoff_s * self.multiplier**recent))


def exit_log_tail(path: Path, lines: int = 8) -> str:
    """The last lines of a dead process's log, without backtrace frames (``12# 0x... in``) and
    without the CUDA noise a CPU-only Triton always logs (a red herring above the cause)."""
    kept = [
        line
        for line in log_tail(path, lines=60).splitlines()
        if line.strip() and not re.match(r"\s*\d+# ", line) and not is_noise(line)
    ]
    return "\n".join(kept[-lines:])


class StateStore:
    """The state file, owned by the supervisor: every change is written at once, atomically."""

    def __init__(self, path: Path, state: StackState) -> None:
        self.path = path
        self.state = state
        self._lock = threading.Lock()

    def service(self, name: str, **changes: Any) -> None:
        with self._lock:
            record = self.state.services[name]
            self.state.services[name] = replace(record, **changes)
            write_state_file(self.path, self.state)

    def exited(self, name: str, exit_record: ExitRecord) -> None:
        with self._lock:
            record = self.state.services[name]
            exits = [*record.exits, exit_record][-MAX_EXITS:]
            self.state.services[name] = replace(record, exits=exits, pid=None, health="unknown")
            write_state_file(self.path, self.state)

    def supervisor(self, **changes: Any) -> None:
        with self._lock:
            self.state.supervisor = replace(self.state.supervisor, **changes)
            write_state_file(self.path, self.state)


class ServiceRunner:
    """Starts one service, then watches it and restarts it by the policy (its own thread)."""

    def __init__(
        self, spec: ServiceSpec, store: StateStore, settings: StackSettings, policy: RestartPolicy
    ) -> None:
        self.spec = spec
        self.store = store
        self.settings = settings
        self.policy = policy
        self.current: BackgroundProcess | None = None
        self.error: str | None = None  # why the first start failed
        self.started = threading.Event()  # the first start is over (ok or not)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=spec.name, daemon=True)
        self._restarts: list[float] = []  # monotonic times of restarts (the budget's window)

    @property
    def name(self) -> str:
        return self.spec.name

    def _run(self) -> None:
        try:
            self._start()
        except Exception as exc:  # whatever it was, `up` reports it and stops the rest
            if self.stopping.is_set():  # `down` while starting: not a failure of its own
                return
            self.error = str(exc) or type(exc).__name__
            self.store.service(self.name, state="failed", message=self.error.splitlines()[0])
            return
        finally:
            self.started.set()
        self._supervise()

    def _start(self) -> None:
        self.spec.cleanup()
        process = self.spec.make()
        self.current = process
        self.store.service(self.name, state="starting", pid=None, next_restart_unix=None)
        process.start()  # waits until ready; raises (with the log tail) and stops it otherwise
        if self.stopping.is_set():
            process.stop()
            raise DeployError(f"{self.name}: stopped while starting")
        self.store.service(
            self.name, state="running", pid=process.pid, started_unix=time.time(), health="healthy"
        )
        log.info("%s running (pid %s)", self.name, process.pid)

    def _supervise(self) -> None:
        while not self.stopping.is_set():
            process = self.current
            assert process is not None and process.process is not None
            started = time.monotonic()
            cause = self._watch(process)
            if cause is None:  # stopping
                return
            self._bury(process, cause, time.monotonic() - started)
            if not self._restart():
                return

    def _watch(self, process: BackgroundProcess) -> str | None:
        """Block until the process exits or stays unresponsive; the cause, or None to stop."""
        assert process.process is not None
        failures = 0
        while True:
            try:
                code = process.process.wait(timeout=self.settings.liveness_interval_s)
            except subprocess.TimeoutExpired:
                if self.stopping.is_set():
                    return None
                if self.spec.live():
                    if failures:
                        self.store.service(self.name, health="healthy")
                    failures = 0
                    continue
                failures += 1
                if failures == 1:
                    self.store.service(self.name, health="unhealthy")
                if failures >= self.settings.liveness_failures:
                    return f"liveness check failed {failures} times in a row (hung)"
                continue
            return None if self.stopping.is_set() else exit_cause(code)

    def _bury(self, process: BackgroundProcess, cause: str, uptime_s: float) -> None:
        """Record the exit; kill what is left of its group, clean up, keep its log as .1."""
        assert process.pid is not None and process.process is not None
        log.warning("%s %s after %.1f s", self.name, cause, uptime_s)
        if group_alive(process.pid):  # a killed tritonserver's stubs, or a hung process
            kill_process_group(process.pid)
        process.process.wait()
        self.spec.cleanup()
        tail = exit_log_tail(process.log_path)
        if process.log_path.exists():
            process.log_path.replace(process.log_path.with_name(process.log_path.name + ".1"))
        self.store.exited(self.name, ExitRecord(time.time(), cause, round(uptime_s, 3), tail))

    def _restart(self) -> bool:
        """Start again after the backoff; False when the budget is spent or we are stopping."""
        while True:
            delay = self.policy.delay(self._restarts, time.monotonic())
            if delay is None:
                message = (
                    f"gave up: {len(self._restarts)} restarts within "
                    f"{self.policy.window_s:g} s (restart budget)"
                )
                log.error("%s %s", self.name, message)
                self.store.service(self.name, state="failed", message=message)
                return False
            log.info("%s restarts in %.1f s", self.name, delay)
            self.store.service(self.name, state="restarting", next_restart_unix=time.time() + delay)
            if self.stopping.wait(delay):
                return False
            self._restarts.append(time.monotonic())
            record = self.store.state.services[self.name]
            self.store.service(self.name, restarts=record.restarts + 1)
            try:
                self._start()
                return True
            except Exception as exc:  # a failed start counts against the budget like an exit
                if self.stopping.is_set():
                    return False
                first = (str(exc) or type(exc).__name__).splitlines()[0]
                log.warning("%s start failed: %s", self.name, first)
                # start() stopped what it started; its log tail is part of the message
                self.store.exited(self.name, ExitRecord(time.time(), f"start failed: {first}"))

    def stop(self) -> None:
        """Stop supervising and stop the process (SIGTERM, SIGKILL after its timeout)."""
        self.stopping.set()
        while True:  # a start in progress sees its process die and returns
            process = self.current
            if process is not None and process.pid is not None and group_alive(process.pid):
                process.stop()
            if not self.thread.is_alive():
                break
            self.thread.join(0.2)
        self.spec.cleanup()
        failed = self.store.state.services[self.name].state == "failed"  # keep why
        self.store.service(
            self.name, state="failed" if failed else "stopped", pid=None, health="unknown"
        )


class Supervisor:
    def __init__(self, state_file: Path) -> None:
        state = read_state_file(state_file)
        if state is None:
            raise DeployError(f"no stack plan in {state_file}")
        self.settings = StackSettings.model_validate(state.settings)
        self.store = StateStore(state_file, state)
        self.policy = RestartPolicy.from_settings(self.settings)
        self.runners: list[ServiceRunner] = []
        self._stop = threading.Event()

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def run(self) -> int:
        self.store.supervisor(pid=os.getpid(), phase="starting", started_unix=time.time())
        for spec in specs(self.settings, self.store.state):
            runner = ServiceRunner(spec, self.store, self.settings, self.policy)
            self.runners.append(runner)
            runner.thread.start()
            while not runner.started.wait(0.1) and not self._stop.is_set():
                pass
            if self._stop.is_set() or runner.error is not None:
                error = f"{spec.name}: {runner.error}" if runner.error else None
                self._shutdown("failed" if error else "stopped", error)
                return 1 if error else 0
        self.store.supervisor(phase="running")
        log.info("stack running; supervising %s", ", ".join(r.name for r in self.runners))
        while not self._stop.wait(1.0):
            pass
        self._shutdown("stopped", None)
        return 0

    def _shutdown(self, phase: str, error: str | None) -> None:
        if error:
            log.error("start failed, stopping what started: %s", error)
        self.store.supervisor(phase="stopping", error=error)
        for runner in reversed(self.runners):
            runner.stop()
            log.info("%s stopped", runner.name)
        remove_shm_regions(self.store.state.shm_prefix)
        self.store.supervisor(phase=phase, pid=None)


def _detach() -> None:
    """Leave the caller: ``up`` waits only for this first process, the daemon lives on."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m deploy.local.supervisor STATE_FILE", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    supervisor = Supervisor(Path(args[0]))
    _detach()
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return supervisor.run()


if __name__ == "__main__":
    raise SystemExit(main())
