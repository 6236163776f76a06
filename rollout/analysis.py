"""Judging a step from the gateways' figures: continue, pass or fail (pure logic).

Judged at every check, not only at the end of a step, so a failing candidate is rolled back as
soon as the evidence is there:

- **errors**: the candidate fails once it has ``min_errors`` errors and its error rate passes
  the stable version's by more than ``max_error_rate_increase``;
- **latency**: once both have ``min_requests`` calls in the step, the candidate's p99 may be at
  most ``max_p99_ratio`` times the stable's (or ``p99_slack_ms`` over it, whichever is larger).
  At 100 % the stable version has no traffic: its figures of the previous step stand in;
- **shadow**: once ``min_shadow_rows`` rows were compared, the share within the budget must
  hold (``gateway.agreement.passes``); failed copies count as errors of the candidate.

A step passes when its time is up and the candidate had ``min_requests`` calls (shadow:
``min_shadow_rows`` rows) without failing; without that much traffic it waits, and fails after
``step_timeout_factor`` times its time ("not enough traffic to judge").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.agreement import passes
from gateway.rollout_stats import StepFigures, VersionFigures
from gateway.traffic import Metric
from rollout.settings import RolloutSettings


@dataclass(frozen=True)
class Verdict:
    kind: str  # continue | pass | fail
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


def _version_figures(v: VersionFigures) -> dict[str, Any]:
    p99 = v.p99()
    return {
        "requests": v.requests,
        "errors": v.errors,
        "error_rate": round(v.error_rate, 5),
        "p99_ms": round(p99 * 1000, 2) if p99 is not None else None,
    }


def summary(figures: StepFigures, stable: str, candidate: str) -> dict[str, Any]:
    shadow = figures.shadow
    return {
        "stable": _version_figures(figures.version(stable)),
        "candidate": _version_figures(figures.version(candidate)),
        "shadow": {
            "rows": shadow.compared,
            "within": shadow.within,
            "mean": round(shadow.mean, 8) if shadow.mean is not None else None,
            "worst": shadow.worst,
            "errors": shadow.errors,
            "dropped": shadow.dropped,
        },
    }


def judge_canary(
    figures: StepFigures,
    stable: str,
    candidate: str,
    baseline: dict[str, Any],
    elapsed_s: float,
    step_s: float,
    settings: RolloutSettings,
) -> Verdict:
    mine, theirs = figures.version(candidate), figures.version(stable)
    found = summary(figures, stable, candidate)
    reference = found["stable"] if theirs.requests >= settings.min_requests else baseline
    stable_rate = float(reference.get("error_rate") or 0.0) if reference else 0.0
    limit = stable_rate + settings.max_error_rate_increase
    if mine.errors >= settings.min_errors and mine.error_rate > limit:
        return Verdict(
            "fail",
            f"candidate failed {mine.errors} of {mine.requests} requests "
            f"({mine.error_rate:.1%}; stable {stable_rate:.1%}, allowed {limit:.1%})",
            found,
        )
    p99 = mine.p99()
    stable_p99_ms = reference.get("p99_ms") if reference else None
    if mine.requests >= settings.min_requests and p99 is not None and stable_p99_ms:
        allowed = max(stable_p99_ms * settings.max_p99_ratio, stable_p99_ms + settings.p99_slack_ms)
        if p99 * 1000 > allowed:
            return Verdict(
                "fail",
                f"candidate p99 {p99 * 1000:.1f} ms > {allowed:.1f} ms allowed "
                f"(stable {stable_p99_ms:.1f} ms x {settings.max_p99_ratio:g})",
                found,
            )
    return _at_time(
        mine.requests, settings.min_requests, "requests", elapsed_s, step_s, settings, found
    )


def judge_shadow(
    figures: StepFigures,
    stable: str,
    candidate: str,
    metric: Metric,
    budget: float,
    elapsed_s: float,
    step_s: float,
    settings: RolloutSettings,
) -> Verdict:
    shadow = figures.shadow
    found = summary(figures, stable, candidate)
    calls = shadow.errors + shadow.compared
    if shadow.errors >= settings.min_errors and shadow.errors > settings.max_shadow_errors * calls:
        return Verdict("fail", f"{shadow.errors} shadow copies failed (of {calls})", found)
    if shadow.compared >= settings.min_shadow_rows and not passes(
        metric, budget, shadow.compared, shadow.within, settings.shadow_min_within
    ):
        bound = ">=" if metric != "rel_l2" else "<="
        return Verdict(
            "fail",
            f"in shadow only {shadow.within} of {shadow.compared} rows agree with the stable "
            f"version within the budget ({metric} {bound} {budget:.8g}; worst {shadow.worst}, "
            f"mean {shadow.mean})",
            found,
        )
    return _at_time(
        shadow.compared, settings.min_shadow_rows, "shadow rows", elapsed_s, step_s, settings, found
    )


def _at_time(
    seen: int,
    needed: int,
    what: str,
    elapsed_s: float,
    step_s: float,
    settings: RolloutSettings,
    found: dict[str, Any],
) -> Verdict:
    if elapsed_s < step_s:
        return Verdict("continue", figures=found)
    if seen >= needed:
        return Verdict("pass", f"{seen} {what} within the thresholds", found)
    if elapsed_s >= step_s * settings.step_timeout_factor:
        return Verdict(
            "fail",
            f"not enough traffic to judge: {seen} {what} in {elapsed_s:.0f} s (needs {needed})",
            found,
        )
    return Verdict("continue", f"waiting for traffic: {seen}/{needed} {what}", found)
