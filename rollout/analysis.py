"""Judging a step from the gateways' figures: continue, pass or fail (pure logic).

Judged at every check, not only at the end of a step, so a failing candidate is rolled back as
soon as the evidence is there:

- **errors**: the candidate fails once it has ``min_errors`` errors and its error rate passes
  the stable version's by more than ``max_error_rate_increase``;
- **latency**: the candidate's p99 may be at most ``max_p99_ratio`` times the stable's (or
  ``p99_slack_ms`` over it, whichever is larger): judged at every check once its whole
  distribution moved (p50 and p99, ``min_requests`` calls), and at the end of the step on its
  p99 alone (``min_latency_samples`` calls). At 100 % the stable version has no traffic: its
  figures of the previous step stand in;
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
from gateway.rollout_stats import StepFigures, VersionFigures, quantile
from gateway.traffic import Metric
from rollout.settings import RolloutSettings


@dataclass(frozen=True)
class Verdict:
    kind: str  # continue | pass | fail
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 2) if seconds is not None else None


def _version_figures(v: VersionFigures) -> dict[str, Any]:
    return {
        "requests": v.requests,
        "errors": v.errors,
        "error_rate": round(v.error_rate, 5),
        "p50_ms": _ms(quantile(v.latency, 0.5)),
        "p99_ms": _ms(v.p99()),
    }


def _slower(
    mine: VersionFigures, reference: dict[str, Any], ended: bool, settings: RolloutSettings
) -> str:
    """Why the candidate is too slow ("": it is not, or it cannot be told yet).

    At any check: its whole distribution moved (p50 and p99 both past the allowed ratio, on
    ``min_requests`` calls). At the end of the step: its p99 alone, on ``min_latency_samples``
    calls (a p99 of fewer calls is their slowest one, and the stable version's tail under the
    same load is as long)."""
    if not reference or mine.requests < settings.min_requests:
        return ""

    def allowed(stable_ms: float) -> float:
        return max(stable_ms * settings.max_p99_ratio, stable_ms + settings.p99_slack_ms)

    p50, p99 = _ms(quantile(mine.latency, 0.5)), _ms(mine.p99())
    stable_p50, stable_p99 = reference.get("p50_ms"), reference.get("p99_ms")
    if p50 is None or p99 is None or not stable_p50 or not stable_p99:
        return ""
    ratio = f"x {settings.max_p99_ratio:g}"
    if p50 > allowed(stable_p50) and p99 > allowed(stable_p99):
        return (
            f"candidate p50 {p50:.1f} ms and p99 {p99:.1f} ms > allowed "
            f"{allowed(stable_p50):.1f} / {allowed(stable_p99):.1f} ms "
            f"(stable {stable_p50:.1f} / {stable_p99:.1f} ms {ratio})"
        )
    if ended and mine.requests >= settings.min_latency_samples and p99 > allowed(stable_p99):
        return (
            f"candidate p99 {p99:.1f} ms > {allowed(stable_p99):.1f} ms allowed "
            f"(stable {stable_p99:.1f} ms {ratio}, {mine.requests} calls)"
        )
    return ""


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
    slow = _slower(mine, reference, elapsed_s >= step_s, settings)
    if slow:
        return Verdict("fail", slow, found)
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
