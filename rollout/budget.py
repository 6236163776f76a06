"""The accuracy budget a shadow comparison holds two versions to, from their export reports.

Each export checked its served variant against the same reference (PyTorch) under a budget in
one metric (``served.accuracy``, ``accuracy_budgets``). The comparison uses the model's task
metric (cosine for embeddings, top-1 agreement for classifiers, relative L2 for regressors),
each version's budget is expressed in it, and the two are combined by the triangle
inequality, since both versions are compared with each other and not with the reference:

- cosine: angles add: ``cos(arccos(b_candidate) + arccos(b_stable))``; a relative-L2 budget
  ``e`` bounds the angle by ``arcsin(e)`` (fp32's 1e-4 is a cosine of 0.999999995);
- relative L2: ``e_candidate + e_stable``;
- top-1: disagreements add: ``b_candidate + b_stable - 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gateway.traffic import Metric
from rollout.errors import PlanError

TASK_METRICS: dict[str, Metric] = {
    "embedding": "cosine",
    "classifier": "top1",
    "regressor": "rel_l2",
}


@dataclass(frozen=True)
class Budget:
    metric: Metric
    value: float
    why: str

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "budget": self.value, "why": self.why}


def _own(report: dict[str, Any], metric: Metric) -> tuple[float, str]:
    """One version's budget in ``metric`` (its figure against PyTorch), and where it came from."""
    served = report.get("served") or {}
    variant = str(served.get("variant", "?"))
    accuracy = served.get("accuracy") or {}
    budgets = report.get("accuracy_budgets") or {}
    parity = (budgets.get("parity") or {}).get(variant) or {}
    declared: list[tuple[str, float]] = []
    if "metric" in parity and "threshold" in parity:
        declared.append((str(parity["metric"]), float(parity["threshold"])))
    if accuracy.get("metric") and accuracy.get("budget") is not None:
        declared.append((str(accuracy["metric"]), float(accuracy["budget"])))
    if metric == "top1":
        task = (budgets.get("task") or {}).get("top1_agreement")
        if task is not None:
            return float(task), f"{variant}: top-1 agreement >= {float(task):g}"
    for name, value in declared:
        if name == metric:
            return value, f"{variant}: {name} {'<=' if name == 'rel_l2' else '>='} {value:g}"
    for name, value in declared:
        if name == "rel_l2" and metric == "cosine":
            angle = math.asin(min(1.0, value))
            return math.cos(angle), f"{variant}: rel L2 <= {value:g}, a cosine >= cos(asin(e))"
        if name == "cosine" and metric == "rel_l2":
            return 2 * math.sin(math.acos(value) / 2), f"{variant}: cosine >= {value:g}"
    raise PlanError(
        f"the export report of this version has no accuracy budget in {metric} terms "
        f"(served.accuracy: {accuracy or 'missing'}); pass --metric and --budget"
    )


def combined(candidate: dict[str, Any], stable: dict[str, Any]) -> Budget:
    """The budget two versions' answers must meet against each other."""
    task = str(candidate.get("task") or stable.get("task") or "")
    metric = TASK_METRICS.get(task)
    if metric is None:
        raise PlanError(f"unknown task {task!r} in the export report; pass --metric and --budget")
    own_c, why_c = _own(candidate, metric)
    own_s, why_s = _own(stable, metric)
    if metric == "cosine":
        value = math.cos(min(math.pi, math.acos(min(1.0, own_c)) + math.acos(min(1.0, own_s))))
    elif metric == "rel_l2":
        value = own_c + own_s
    else:
        value = max(0.0, own_c + own_s - 1.0)
    why = f"{task} -> {metric}; candidate {why_c}; stable {why_s}; combined"
    return Budget(metric, value, why)
