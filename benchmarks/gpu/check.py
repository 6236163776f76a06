"""``make gpu-check``: the GPU path in one short call on a lent machine (or a dry run here).

``python -m benchmarks.gpu.check [--stage .gpu] [--out DIR] [--budget-s 420] [--steps ...]``

Steps, in order; each reports OK, SKIPPED (with the reason) or FAILED, never a made-up figure,
and a step that cannot run never stops the others that can:

- ``environment``: GPU, driver, CUDA (driver and torch), torch, ONNX Runtime, libpython, CPU;
- ``stage``: the staged files of ``make gpu-prepare`` are there and whole; unpack the runtime;
- ``load``: the carried MiniLM in fp32 and fp16 on ``cuda:0``;
- ``parity_fp32`` / ``parity_fp16``: answers under the export budgets (see ``inprocess.py``);
- ``ceiling_torch``: in-process items/s at batch 1/8/32; ``ceiling_ort_cuda`` where it can;
- ``triton``: tritonserver (carried) with KIND_GPU python-backend models (PyTorch on CUDA);
- ``triton_parity_fp32`` / ``_fp16``: Triton's answers under the same budgets;
- ``perf_analyzer``: gRPC, concurrency 1/8/32 per model, and Triton against the ceiling.

The results (JSON + markdown, named after the date and the GPU) go to ``--out``; a step that
would not finish inside ``--budget-s`` is SKIPPED for time. Exit 1 when a step FAILED.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.gpu import carry, probe
from benchmarks.gpu.report import write_report
from export.status import Status, StepResult

ROOT = Path(__file__).resolve().parents[2]
STEPS = ("environment", "stage", "load", "parity_fp32", "parity_fp16", "ceiling_torch",
         "ceiling_ort_cuda", "triton", "triton_parity_fp32", "triton_parity_fp16",
         "perf_analyzer")  # fmt: skip
# seconds a step needs at most (ceiling_torch: plus 6 points of --seconds)
ESTIMATE_S = {"stage": 30, "load": 60, "parity_fp32": 20, "parity_fp16": 20,
              "ceiling_torch": 20, "ceiling_ort_cuda": 120, "triton": 200,
              "triton_parity_fp32": 20, "triton_parity_fp16": 20, "perf_analyzer": 40}  # fmt: skip
NO_LIBPYTHON = "no shared libpython{minor} for the python-backend stub ({python} is static)"
DEVICE_STEPS = set(STEPS) - {"environment", "stage"}
TRITON_STEPS = {"triton", "triton_parity_fp32", "triton_parity_fp16", "perf_analyzer"}
# what a step needs of the steps before it (a FAILED or SKIPPED one skips it)
AFTER = {"parity_fp32": "load", "parity_fp16": "load", "ceiling_torch": "load",
         "ceiling_ort_cuda": "load", "triton": "stage", "triton_parity_fp32": "triton",
         "triton_parity_fp16": "triton", "perf_analyzer": "triton", "load": "stage"}  # fmt: skip


def runtime_problem(stage: carry.Stage, runtime_dir: Path | None, python: str) -> str:
    """Why no Triton runtime can be had ('' when one can): the staged archive, or an unpacked
    runtime folder given with --runtime-dir; either must hold the stub for this Python."""
    minor = ".".join(python.split(".")[:2])
    stub = f"pytriton/tritonserver/python_backend_stubs/{minor}/triton_python_backend_stub"
    if runtime_dir is not None:
        found = (runtime_dir / stub).exists()
        return "" if found else f"{runtime_dir} has no {stub} (--runtime-dir)"
    problem = stage.runtime_problem()
    if not problem and stub not in stage.manifest().get("runtime_files", []):
        problem = f"no python-backend stub for Python {minor} was carried"
    return problem


def plan(facts: probe.Facts, stage: carry.Stage, args: argparse.Namespace) -> dict[str, str]:
    """Each step -> why it cannot run here ('' when it can), known before anything runs."""
    problems = stage.problems()
    runtime = runtime_problem(stage, args.runtime_dir, facts.python)
    minor = ".".join(facts.python.split(".")[:2])
    on_gpu = args.device == "cuda"
    reasons: dict[str, str] = {}
    for step in STEPS:
        reason = ""
        if step not in args.steps:
            reason = "not requested (--steps)"
        elif step == "stage" and problems:
            reason = "; ".join(problems)
        elif step in DEVICE_STEPS and on_gpu and not facts.cuda_available:
            reason = f"no CUDA device: {facts.cuda_reason or facts.nvidia_smi}"
        elif step in DEVICE_STEPS and problems:
            reason = "no usable staged model (see the stage step)"
        elif step == "ceiling_ort_cuda" and "CUDAExecutionProvider" not in facts.ort_providers:
            reason = (f"onnxruntime {facts.onnxruntime or '(absent)'} has no "
                      f"CUDAExecutionProvider (has {facts.ort_providers})")  # fmt: skip
        elif step in TRITON_STEPS and runtime:
            reason = runtime
        elif step in TRITON_STEPS and not facts.libpython:
            reason = NO_LIBPYTHON.format(minor=minor, python=facts.python_executable)
        reasons[step] = reason
    return reasons


class Run:
    """One check: the plan, a time budget, the results so far."""

    def __init__(self, facts: probe.Facts, stage: carry.Stage, args: argparse.Namespace) -> None:
        self.facts, self.stage, self.args = facts, stage, args
        self.started = time.monotonic()
        self.deadline = self.started + args.budget_s
        self.plan = plan(facts, stage, args)
        self.results: dict[str, StepResult] = {}
        self.state: dict[str, Any] = {}

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f} s] {text}", flush=True)

    def estimate(self, step: str) -> float:
        extra = 6 * self.args.seconds if step == "ceiling_torch" else 0.0
        return ESTIMATE_S.get(step, 0) + extra

    def step(self, name: str, body: Callable[[], StepResult]) -> StepResult:
        reason = self.plan[name]
        before = self.results.get(AFTER.get(name, ""))
        if not reason and before is not None and not before.ok:
            reason = f"needs {before.step}, which is {before.status.value}"
        left = self.deadline - time.monotonic()
        if not reason and left < self.estimate(name):
            reason = (
                f"time budget: {left:.0f} s left, the step needs up to {self.estimate(name):.0f} s"
            )
        if reason:
            result = StepResult(name, Status.SKIPPED, reason=reason)
        else:
            self.log(f"{name} ...")
            start = time.perf_counter()
            try:
                result = body()
            except Exception as exc:  # a broken step is reported; the others still run
                trace = {"traceback": traceback.format_exc()[-3000:]}
                result = StepResult(name, Status.FAILED, reason=f"{type(exc).__name__}: {exc}",
                                    metrics=trace)  # fmt: skip
            result.step = name
            result.duration_s = result.duration_s or time.perf_counter() - start
        self.results[name] = result
        self.log(f"{name}: {result.status.value}{' - ' + result.reason if result.reason else ''}")
        return result


def run_all(run: Run) -> None:
    from benchmarks.gpu import steps  # torch and friends: imported once the plan is made

    run.step(
        "environment", lambda: StepResult("environment", Status.OK, metrics=run.facts.as_dict())
    )
    run.step("stage", lambda: steps.stage(run))
    run.step("load", lambda: steps.load(run))
    for dtype in ("fp32", "fp16"):
        run.step(f"parity_{dtype}", lambda d=dtype: steps.parity(run, d))  # type: ignore[misc]
    run.step("ceiling_torch", lambda: steps.ceiling(run))
    run.step("ceiling_ort_cuda", lambda: steps.ort(run))
    steps.release_models(run)
    try:
        run.step("triton", lambda: steps.triton(run))
        for dtype in ("fp32", "fp16"):
            run.step(f"triton_parity_{dtype}", lambda d=dtype: steps.triton_parity(run, d))  # type: ignore[misc]
        run.step("perf_analyzer", lambda: steps.perf(run))
    finally:
        steps.stop_triton(run)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", type=Path, default=ROOT / carry.STAGE_DIR)
    parser.add_argument("--out", type=Path, default=ROOT / carry.STAGE_DIR / "out")
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "tritonstack-gpu"
    )
    parser.add_argument("--budget-s", type=float, default=420.0, help="whole check (default 7 min)")
    parser.add_argument("--seconds", type=float, default=2.0, help="per in-process point")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma list (default: all)")
    parser.add_argument("--name", default="", help="result file name (default: DATE-GPU-gpu-check)")
    # a rehearsal of the same path on the CPU (the test suite's), never GPU figures
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--runtime-dir", type=Path, help="an unpacked runtime, not the archive")
    parser.add_argument("--models", default="", help="comma list of staged Triton models")
    parser.add_argument("--concurrency", default="1,8,32", help="perf_analyzer concurrency")
    parser.add_argument("--perf-interval-ms", type=int, default=2000)
    args = parser.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(args.steps) - set(STEPS))
    if unknown:
        parser.error(f"unknown steps {unknown}; steps: {', '.join(STEPS)}")
    if "environment" not in args.steps:
        args.steps.append("environment")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    facts = probe.collect()
    run = Run(facts, carry.Stage(args.stage.absolute()), args)
    where = facts.gpu_label if args.device == "cuda" else f"the CPU (rehearsal; {facts.cpu})"
    run.log(f"GPU check on {where}; budget {args.budget_s:.0f} s")
    for step, reason in run.plan.items():
        run.log(f"plan {step}: {'run' if not reason else 'SKIPPED - ' + reason}")
    try:
        run_all(run)
    finally:
        slug = facts.slug if args.device == "cuda" else "cpu-rehearsal"
        name = args.name or f"{datetime.now(UTC):%Y-%m-%d}-{slug}-gpu-check"
        paths = write_report(run.results, facts, args.out, name, device=args.device)
        log = run.state.get("triton_log")
        if log and Path(log).is_file():
            shutil.copyfile(log, args.out / "tritonserver.log")
        run.log(f"wrote {', '.join(str(p) for p in paths)}")
        print(paths[-1].read_text(), flush=True)
    return 1 if any(r.status is Status.FAILED for r in run.results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
