"""What every variant must pass before it may be served, and what it is checked against.

Three checks, each its own :class:`StepResult` written beside the artefact:

1. ``verify_<v>`` (``export/verify.py``): parity with the PyTorch fp32 reference on random
   inputs (and ``--sample-data``), in the variant's budget (rel L2 / cosine / top-1);
2. ``invariance_<v>`` (``export/invariance.py``): the same input gives the same answer alone,
   with other batch companions and padded, within an fp32-level tolerance;
3. ``task_<v>`` (``export/task_metrics.py``): the task's own terms against the fp32 export on
   real inputs (neighbour recall@10 and similarity rank correlation; AUC; top-1 / accuracy).

:class:`Evidence` holds what they compare with, made once per export and only when needed:
the PyTorch outputs, the evaluation set (``ModelSpec.evaluation``, else the user's sample
data, else generated rows), the calibration set of static int8, and fp32's outputs on the
evaluation set (recorded when the fp32 variant is checked, which comes first).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np

from export import rows as R
from export.invariance import check_invariance
from export.spec import EvalSet, ModelSpec, Row
from export.status import Status, StepResult
from export.task_metrics import TaskBudgets, check_task
from export.verify import Budget, ReferenceCase, reference, session, verify_parity

GENERATED_ROWS = 256
GENERATED_LENGTH = 64
PROBES = 8
COMPANIONS = 192


def _generated(spec: ModelSpec, seed: int, purpose: str) -> EvalSet:
    rng = np.random.default_rng([seed, 1 if purpose == "evaluation" else 2])
    length = min(GENERATED_LENGTH, spec.max_length)
    inputs = spec.sample_inputs(rng, GENERATED_ROWS, length)
    return EvalSet(
        f"{GENERATED_ROWS} generated inputs (the spec's sampler, seed {seed}): no real inputs "
        "were given (ModelSpec.evaluation or --sample-data)",
        R.split(inputs, spec.ragged_inputs),
        fingerprint=f"generated:{seed}:{purpose}",
    )


def _sample_rows(spec: ModelSpec, sample_data: dict[str, np.ndarray]) -> EvalSet:
    rows = R.split({t.name: sample_data[t.name] for t in spec.inputs}, spec.ragged_inputs)
    return EvalSet(f"{len(rows)} rows of --sample-data", rows, fingerprint="sample-data")


class Evidence:
    """What the variants of one export are checked against (each part made on first use)."""

    def __init__(
        self, spec: ModelSpec, *, seed: int, sample_data: dict[str, np.ndarray] | None = None,
        against: list[ReferenceCase] | None = None,
    ) -> None:  # fmt: skip
        self.spec, self.seed, self.sample_data = spec, seed, sample_data
        if against is not None:  # computed elsewhere: the cached property starts filled
            self.__dict__["against"] = against
        self.fp32_outputs: np.ndarray | None = None  # fp32 export on the evaluation rows

    @functools.cached_property
    def against(self) -> list[ReferenceCase]:
        """PyTorch fp32 outputs on the parity inputs."""
        return reference(self.spec, seed=self.seed, sample_data=self.sample_data)

    @functools.cached_property
    def evaluation(self) -> EvalSet:
        if self.spec.evaluation is not None:
            return self.spec.evaluation()
        if self.sample_data is not None and len(next(iter(self.sample_data.values()))) >= 16:
            return _sample_rows(self.spec, self.sample_data)
        return _generated(self.spec, self.seed, "evaluation")

    @functools.cached_property
    def calibration(self) -> EvalSet:
        if self.spec.calibration is not None:
            return self.spec.calibration()
        if self.sample_data is not None:
            return _sample_rows(self.spec, self.sample_data)
        return _generated(self.spec, self.seed, "calibration")

    @functools.cached_property
    def probes(self) -> tuple[list[Row], list[Row]]:
        """Batch-invariance probes and the companions they are batched with."""
        rows = self.evaluation.rows
        return rows[:PROBES], rows[PROBES : PROBES + COMPANIONS]


def _write(result: StepResult, path: Path, kind: str) -> StepResult:
    result.artefact = path
    result.write_report(path.with_name(f"{path.name}.{kind}.json"))
    return result


def parity(
    name: str, path: Path, spec: ModelSpec, budget: Budget, evidence: Evidence
) -> StepResult:
    step = "verify" if name == "fp32" else f"verify_{name}"
    result = verify_parity(
        spec, path, budget=budget, seed=evidence.seed, against=evidence.against, step=step
    )
    return _write(result, path, "verify")


def invariance(
    name: str, path: Path, spec: ModelSpec, tolerance: float, evidence: Evidence
) -> StepResult:
    probes, companions = evidence.probes
    result = check_invariance(
        spec, path, probes, companions, tolerance=tolerance, seed=evidence.seed,
        step=f"invariance_{name}",
    )  # fmt: skip
    return _write(result, path, "invariance")


def task(
    name: str, path: Path, spec: ModelSpec, budgets: TaskBudgets, evidence: Evidence
) -> StepResult:
    """The task metrics against fp32 (the fp32 variant records the reference outputs)."""
    started = time.perf_counter()
    evaluation = evidence.evaluation
    runner = session(path)
    output = spec.outputs[0].name
    got = R.run(runner, [output], evaluation.rows, spec.ragged_inputs)[0]
    if name == "fp32":
        evidence.fp32_outputs = got
    if evidence.fp32_outputs is None:
        return _write(
            StepResult(f"task_{name}", Status.SKIPPED, "fp32 was not checked first"), path, "task"
        )
    result = check_task(
        spec.task, evidence.fp32_outputs, got, evaluation, budgets, step=f"task_{name}",
        started=started,
    )  # fmt: skip
    return _write(result, path, "task")
