"""The rollout controller: a state machine driven by checks, one controller per rollout.

``start`` plans a rollout (stable = the one version Triton serves, candidate = the version
asked for, the pipelines in front of the model, the accuracy budget of the two export
reports) and records it; ``drive`` runs it, check by check, until it is promoted or aborted:

loading   the route table pins every caller to the stable version (and the replicas use it)
          → the pipelines are pinned to the stable version → Triton serves both versions
          (``specific`` policy, on disk and as a config override) → a pipeline pinned to the
          candidate is loaded in memory beside each pipeline
shadow    (``--shadow``) callers stay on stable; a sample of their requests is copied to the
          candidate and compared within the budget
canary    one step per weight (10 → 50 → 100 %): the candidate arm first, so callers only
          ever move to it; each step judged by ``rollout.analysis`` at every check
promoting the candidate takes every caller → the pipelines follow the newest version → Triton
          serves the candidate only → the route entries go → the pinned pipelines unload
aborting  every caller back on stable first (the replicas confirm) → the candidate and its
          pinned pipelines unload → Triton serves the stable version only → routes go

Each step is saved before it is acted on, and each action is idempotent, so a controller that
died (or the CLI's Ctrl-C) is resumed by running ``drive`` again. The result is written into
the candidate's export report (``rollouts``) and kept in Redis.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from redis import Redis

from export.reader import read_report, version_dirs
from export.repository import record_rollout
from gateway.rollout_stats import parse_step, stats_key
from rollout import analysis
from rollout.budget import Budget, combined
from rollout.errors import ConflictError, PlanError, TritonAdminError
from rollout.routes import (
    promoted_arms,
    publish,
    republish_if_lost,
    routes_for,
    wait_for_replicas,
)
from rollout.serving import Serving
from rollout.settings import RolloutSettings
from rollout.state import RolloutState, StateStore, Step, owner
from rollout.triton_admin import TritonAdmin

Say = Callable[[str], None]


class Controller:
    def __init__(
        self, settings: RolloutSettings, redis: Redis, admin: TritonAdmin, say: Say | None = None
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.admin = admin
        self.store = StateStore(redis, settings.state_dir)
        writable = settings.repository if settings.repository_writes else None
        self.serving = Serving(admin, writable)
        self.say: Say = say or (lambda _: None)
        self.me = owner()

    @classmethod
    def from_settings(cls, settings: RolloutSettings, say: Say | None = None) -> Controller:
        """A controller for ``settings`` (Redis and Triton addresses set)."""
        if not settings.redis_url:
            raise PlanError("ROLLOUT_REDIS_URL is not set (the Redis the gateways read)")
        password = settings.redis_password
        redis = Redis.from_url(
            settings.redis_url,
            username=settings.redis_username,
            password=password.get_secret_value() if password else None,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
        )
        key = settings.triton_admin_key
        admin = TritonAdmin(
            settings.triton_http_urls,
            admin_header=settings.triton_admin_header,
            admin_key=key.get_secret_value() if key else None,
            timeout_s=settings.triton_timeout_s,
            load_timeout_s=settings.load_timeout_s,
        )
        return cls(settings, redis, admin, say)

    # -- planning ----------------------------------------------------------------------------
    def start(
        self, model: str, candidate: str, *, shadow: bool, budget: Budget | None = None
    ) -> RolloutState:
        """Record a new rollout (or return the unfinished one of the same version)."""
        found = self.store.load(model)
        if found is not None and not found.done:
            if found.candidate == candidate:
                return found
            raise ConflictError(
                f"a rollout of {model} version {found.candidate} is in progress ({found.phase}): "
                f"`tritonstack rollout status` / `abort` first"
            )
        served = self.admin.served_versions(model)
        if len(served) != 1:
            raise PlanError(
                f"{model}: Triton serves versions {served or 'none'}; a rollout starts from "
                "exactly one stable version"
            )
        stable = served[0]
        if candidate == stable:
            raise PlanError(f"{model} version {candidate} already serves every caller")
        budget = budget or self._budget(model, stable, candidate)
        s = self.settings
        state = RolloutState(
            id=f"{model}-v{candidate}-{secrets.token_hex(3)}",
            model=model,
            stable=stable,
            candidate=candidate,
            pipelines={p: f"{p}__v{candidate}" for p in self.admin.pipelines_using(model)},
            plan=list(s.steps),
            shadow=shadow,
            shadow_sample=s.shadow_sample,
            step_seconds=s.step_seconds,
            budget=budget.as_dict(),
        )
        state.event("start", f"{stable} -> {candidate}; steps {s.steps}; shadow {shadow}")
        self.store.save(state)
        return state

    def _budget(self, model: str, stable: str, candidate: str) -> Budget:
        repository = self.settings.repository
        if repository is None:
            raise PlanError("no model repository to read the budgets from: pass --budget")
        on_disk = [p.name for p in version_dirs(repository / model)]
        if candidate not in on_disk:
            raise PlanError(f"{model} has no version {candidate} in {repository} ({on_disk})")
        reports = {v: read_report(repository / model / v) for v in (stable, candidate)}
        if (reports[candidate] or {}).get("status") not in ("OK", "UNCHANGED"):
            raise PlanError(f"{model} version {candidate} has no OK export report")
        return combined(reports[candidate] or {}, reports[stable] or {})

    # -- driving -------------------------------------------------------------------------------
    def drive(self, model: str, stop: Callable[[RolloutState], bool] | None = None) -> RolloutState:
        """Run the model's rollout until it is done (or ``stop`` says so); resumable."""
        holder = self.store.claim(model, self.me, self.settings.lease_s)
        if holder is not None:
            raise ConflictError(f"another controller ({holder}) drives the rollout of {model}")
        try:
            while True:
                state = self.store.load(model)
                if state is None:
                    raise PlanError(f"no rollout of {model}: `tritonstack rollout start` first")
                if state.done or (stop is not None and stop(state)):
                    return state
                self.store.claim(model, self.me, self.settings.lease_s)
                self._act(state)
                if state.phase in ("shadow", "canary"):
                    time.sleep(self.settings.check_interval_s)
        finally:
            self.store.release(model, self.me)

    def _act(self, state: RolloutState) -> None:
        asked = self.store.take_request(state.model)
        if asked == "promote" and state.phase == "loading":
            self.store.request(state.model, asked)  # once both versions are served
        elif (asked == "abort" and state.phase not in ("promoting", "aborting")) or (
            asked == "promote" and state.phase in ("shadow", "canary")
        ):
            state.phase = "aborting" if asked == "abort" else "promoting"
            state.reason = "aborted by hand" if asked == "abort" else "promoted by hand"
            state.result["by_hand"] = True
        try:
            if state.phase == "loading":
                self._load(state)
                self._next(state)
            elif state.phase in ("shadow", "canary"):
                self._check(state)
            elif state.phase == "promoting":
                self._promote(state)
            elif state.phase == "aborting":
                self._abort(state)
        except TritonAdminError as exc:
            if state.phase == "aborting":
                raise
            self._fail(state, f"Triton: {exc}")

    def _publish(
        self, state: RolloutState, arms: list[tuple[str, float]] | None, shadow: bool = False
    ) -> float:
        """Publish the routes (None: remove them), wait for the replicas; seconds it took."""
        started = time.monotonic()
        routes = routes_for(state, arms, shadow) if arms is not None else None
        revision = publish(self.redis, state, routes)
        self.store.save(state)
        behind = wait_for_replicas(
            self.redis, revision, self.settings.replica_wait_s, self.settings.replica_fresh_s
        )
        if behind:
            self.say(f"replicas still on an older route table after the wait: {sorted(behind)}")
        return time.monotonic() - started

    def _load(self, state: RolloutState) -> None:
        self._publish(state, [(state.stable, 100)])
        served = self.serving.both(state.model, state.stable, state.candidate, state.pipelines)
        state.event("loaded", f"Triton serves {state.model} versions {served}")
        self.say(f"Triton serves {state.model} versions {', '.join(served)} side by side")

    def _next(self, state: RolloutState) -> None:
        passed = [st.weight for st in state.steps if st.phase == "canary" and st.verdict == "pass"]
        index = len(state.steps) + 1
        if state.shadow and not state.steps:
            step = Step("shadow", 0, index, time.time())
        elif len(passed) < len(state.plan):
            step = Step("canary", state.plan[len(passed)], index, time.time())
        else:
            state.phase, state.reason = "promoting", "every step passed"
            self.store.save(state)
            self._promote(state)
            return
        state.phase = step.phase
        state.steps.append(step)
        self._publish(state, *self._arms(state))
        step.started_unix = time.time()  # the replicas use it now
        state.event(f"step {index}", f"{step.phase} {step.weight}%")
        self.store.save(state)
        self.say(f"step {index}: {step.phase}" + (f" {step.weight}%" if step.weight else ""))

    @staticmethod
    def _arms(state: RolloutState) -> tuple[list[tuple[str, float]], bool]:
        step = state.current
        assert step is not None
        if step.phase == "shadow":
            return [(state.stable, 100)], True
        return [(state.candidate, step.weight), (state.stable, 100 - step.weight)], False

    def _check(self, state: RolloutState) -> None:
        step = state.current
        assert step is not None
        metric = str(state.budget["metric"])
        raw = self.store.redis.hgetall(stats_key(state.id, step.index))
        figures = parse_step(raw, metric_worst_is_max=metric == "rel_l2")
        elapsed = time.time() - step.started_unix
        s = self.settings
        if step.phase == "shadow":
            verdict = analysis.judge_shadow(
                figures,
                state.stable,
                state.candidate,
                metric,  # type: ignore[arg-type]
                float(state.budget["budget"]),
                elapsed,
                state.step_seconds,
                s,
            )
        else:
            verdict = analysis.judge_canary(
                figures,
                state.stable,
                state.candidate,
                state.baseline,
                elapsed,
                state.step_seconds,
                s,
            )
        step.figures = verdict.figures
        arms, shadow = self._arms(state)  # Redis may have lost the table (no persistence here)
        if republish_if_lost(self.redis, state, routes_for(state, arms, shadow)):
            self.say("the route table was missing from Redis: written again")
        if verdict.kind == "continue":
            self.store.save(state)
            return
        step.ended_unix, step.verdict, step.reason = time.time(), verdict.kind, verdict.reason
        self.say(f"step {step.index} {verdict.kind}: {verdict.reason}")
        if verdict.kind == "fail":
            self._fail(state, f"step {step.index} ({step.phase} {step.weight}%): {verdict.reason}")
            return
        if step.phase == "canary" and figures.version(state.stable).requests >= s.min_requests:
            state.baseline = verdict.figures["stable"]
        self._next(state)

    def _fail(self, state: RolloutState, reason: str) -> None:
        state.phase, state.reason = "aborting", reason
        state.result["detected_unix"] = time.time()
        self.store.save(state)
        self._abort(state)

    def _promote(self, state: RolloutState) -> None:
        self._publish(state, promoted_arms(state))  # every replica on it before stable unloads
        self.serving.only_candidate(state.model, state.candidate, state.pipelines)
        self._publish(state, None)
        for line in self.serving.unload(state.pipelines):
            self.say(line)
        self._finish(state, "promoted")

    def _abort(self, state: RolloutState) -> None:
        state.result["rolled_back_after_s"] = round(self._publish(state, [(state.stable, 100)]), 3)
        for line in self.serving.only_stable(state.model, state.stable, state.pipelines):
            self.say(line)
        self._publish(state, None)
        self._finish(state, "aborted")

    def _finish(self, state: RolloutState, phase: str) -> None:
        state.phase, state.ended_unix = phase, time.time()
        failed = 0
        for step in state.steps:
            failed += int((step.figures.get("candidate") or {}).get("errors") or 0)
        state.result["candidate_failed_requests"] = failed
        detected = state.result.get("detected_unix")
        if detected and state.current is not None:
            state.result["detected_after_s"] = round(detected - state.current.started_unix, 3)
        state.event(phase, state.reason)
        self.store.save(state)
        repo = self.serving.repository
        if repo is not None and (repo / state.model / state.candidate).is_dir():
            record_rollout(repo, state.model, int(state.candidate), record(state))
        self.say(f"{phase}: {state.reason}")

    # -- from another terminal -----------------------------------------------------------------
    def request(self, model: str, what: str) -> RolloutState:
        """Ask the driving controller to promote or abort now; drive it here when none does."""
        state = self.store.load(model)
        if state is None or state.done:
            raise PlanError(f"no rollout of {model} in progress")
        self.store.request(model, what)
        if self.store.holder(model) is None:
            return self.drive(model)
        deadline = time.monotonic() + self.settings.load_timeout_s
        while time.monotonic() < deadline:
            time.sleep(0.2)
            state = self.store.load(model)
            if state is None or state.done:
                break
            if self.store.holder(model) is None:  # its controller went away meanwhile
                return self.drive(model)
        assert state is not None
        return state


def record(state: RolloutState) -> dict[str, object]:
    """The rollout as the candidate's export report keeps it."""
    return {
        "id": state.id,
        "from": int(state.stable),
        "to": int(state.candidate),
        "result": state.phase,
        "reason": state.reason,
        "started_unix": round(state.started_unix, 3),
        "ended_unix": round(state.ended_unix or time.time(), 3),
        "budget": state.budget,
        "steps": [
            {
                "phase": s.phase,
                "weight": s.weight,
                "verdict": s.verdict,
                "reason": s.reason,
                "figures": s.figures,
            }
            for s in state.steps
        ],
        **state.result,
    }
