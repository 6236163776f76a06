"""Step: batch invariance. An input's answer must not depend on what it is batched with.

Triton's dynamic batcher puts concurrent callers' requests into one batch, and the python
backend pads ragged inputs to the batch's longest (mask 0). A model whose answer for one input
moves with its batch companions or with the padding gives a caller an answer that depends on
other callers, and the response cache then freezes whichever answer came first. ONNX Runtime's
*dynamic* int8 is such a model: it computes activation scales over the whole batch tensor.

Each probe (a real input where the spec has some) is run alone, at its own length, and then:

- in batches of ``batch`` rows with different companions, at the first, a middle and the last
  position (ragged companions pad it to their longest);
- alone but padded (ragged specs): a few tokens longer, and (the first two probes) to the
  model's maximum length.

The worst movement of any output, ``||context - alone|| / ||alone||`` per row, must stay within
:data:`TOLERANCE`: fp32 level. Summation order legitimately changes with the batch shape in
fp32 kernels (measured ~1e-7 for MiniLM in fp32, fp16 and static int8), while a batch-dependent
quantizer moves answers by 1e-2 and more (MiniLM dynamic int8: ~1.5e-1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export import rows as R
from export.spec import ModelSpec, Row
from export.status import Status, StepResult
from export.verify import session

TOLERANCE = 1e-5  # max relative L2 movement of an answer between contexts (fp32 level)
PROBES = 8
BATCH = 8
COMPANION_DRAWS = 3
EXTRA_PADDING = 13  # tokens of padding added to every probe
MAX_PADDED = 2  # probes also padded to the model's maximum length (the costly context)


@dataclass
class Movement:
    probe: int
    context: str
    rel_l2: float
    max_abs: float


def _contexts(
    probe: Row, companions: list[Row], spec: ModelSpec, rng: np.random.Generator, to_max: bool
) -> list[tuple[str, dict[str, np.ndarray], int]]:
    """(description, batch, row of the probe in it) for each context of one probe."""
    ragged = spec.ragged_inputs
    found = []
    size = min(BATCH, len(companions) + 1)
    if size > 1:
        positions = sorted({0, size // 2, size - 1})
        for draw in range(COMPANION_DRAWS):
            pos = positions[draw % len(positions)]
            others = [companions[i] for i in rng.choice(len(companions), size - 1, replace=False)]
            batch = R.stack([*others[:pos], probe, *others[pos:]], ragged)
            found.append((f"in a batch of {size} at row {pos} (companions {draw})", batch, pos))
    if ragged:
        own = R.length(probe, ragged)
        targets = {own + EXTRA_PADDING} | ({spec.max_length} if to_max else set())
        for target in sorted(targets):
            if target > own:
                padded = R.stack([probe], ragged, pad_to=target)
                found.append((f"padded from {own} to {target} (mask 0)", padded, 0))
    return found


def check_invariance(
    spec: ModelSpec,
    onnx_path: Path,
    probes: list[Row],
    companions: list[Row],
    *,
    tolerance: float = TOLERANCE,
    seed: int = 0,
    step: str = "invariance",
) -> StepResult:
    """Run each probe alone and in other contexts; FAILED when an answer moves > tolerance."""
    started = time.perf_counter()
    runner = session(onnx_path)
    names = [t.name for t in spec.outputs]
    ragged = spec.ragged_inputs
    rng = np.random.default_rng(seed)
    movements: list[Movement] = []
    for i, probe in enumerate(probes):
        alone = runner.run(names, R.stack([probe], ragged))
        for described, batch, pos in _contexts(probe, companions, spec, rng, i < MAX_PADDED):
            got = runner.run(names, batch)
            rel, diff = 0.0, 0.0
            for a, g in zip(alone, got, strict=True):
                want, have = a[0].astype(np.float64).ravel(), g[pos].astype(np.float64).ravel()
                norm = max(float(np.linalg.norm(want)), 1e-12)
                rel = max(rel, float(np.linalg.norm(have - want)) / norm)
                diff = max(diff, float(np.max(np.abs(have - want), initial=0.0)))
            movements.append(Movement(i, described, rel, diff))
    worst = max(movements, key=lambda m: m.rel_l2)
    passed = bool(np.isfinite(worst.rel_l2) and worst.rel_l2 <= tolerance)
    metrics = {
        "tolerance": tolerance,
        "describe": "max relative L2 movement of an input's answer between running it alone and "
        "running it batched with other inputs or padded (mask 0)",
        "max_rel_l2": worst.rel_l2,
        "max_abs": max(m.max_abs for m in movements),
        "worst": {"probe": worst.probe, "context": worst.context},
        "probes": len(probes),
        "contexts": len(movements),
        "worst_batched": max((m.rel_l2 for m in movements if "batch" in m.context), default=None),
        "worst_padded": max((m.rel_l2 for m in movements if "padded" in m.context), default=None),
        "passed": passed,
    }
    reason = ""
    if not passed:
        reason = (
            f"not batch invariant: probe {worst.probe}'s answer moves by {worst.rel_l2:.2e} "
            f"(relative L2; max abs {worst.max_abs:.2e}) {worst.context}, tolerance "
            f"{tolerance:.0e}: with dynamic batching one caller's answer would depend on others"
        )
    return StepResult(
        step,
        Status.OK if passed else Status.FAILED,
        reason,
        artefact=onnx_path,
        metrics=metrics,
        duration_s=time.perf_counter() - started,
    )
