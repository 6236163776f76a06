"""The export pipeline, one step module each, one report:

torch2onnx -> verify (fp32, PyTorch reference) -> variants (optimize / fp16 / int8, each
checked: parity in its budget, batch invariance, the task's metrics against fp32) -> measure
(in-process, side by side) -> choose -> [onnx2tensorrt, gpu target] -> model repository (a new
version, or none when nothing changed) -> [text ensemble].

Every step returns a :class:`StepResult`; the artefacts and their per-step reports lie in the
build directory, and the whole report (what each step measured, what was chosen and why, what
changed since the previous version) lies beside the served artefact.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from export import variants as V
from export.budgets_text import explain
from export.checks import Evidence
from export.model_config import ServingOptions, Target, build_config, to_text, with_tuned
from export.reader import latest_version, read_report, version_policy
from export.repository import write_entry
from export.spec import ModelSpec
from export.status import Status, StepResult
from export.torch2onnx import sha256, torch_to_onnx
from export.verify import fresh_seed


@dataclass
class ExportResult:
    """What an export did: its steps, the version directory served (None when it failed)."""

    name: str
    steps: list[StepResult] = field(default_factory=list)
    variants: list[V.VariantResult] = field(default_factory=list)
    served: V.VariantResult | None = None
    version_dir: Path | None = None
    report_path: Path | None = None
    unchanged: bool = False  # the latest version already held this artefact and config

    @property
    def failure(self) -> StepResult | None:
        """The step that stopped the export (a rejected variant does not)."""
        return next(
            (s for s in self.steps if s.status is Status.FAILED and s.step in ESSENTIAL), None
        )

    @property
    def ok(self) -> bool:
        return self.failure is None and self.version_dir is not None


# The random parity inputs are drawn from a fixed seed unless told otherwise: a budget near a
# variant's accuracy (MiniLM's dynamic int8: min cosine 0.970-0.983 over seeds 0-5 vs 0.97) would
# otherwise flip the served variant, and the version, from one export to the next.
DEFAULT_SEED = 0
ESSENTIAL = ("torch2onnx", "verify", "invariance_fp32", "choose", "install", "text_pipeline")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("torch", "onnx", "onnxruntime", "transformers", "tritonclient"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    return found


def changes(previous: dict[str, Any] | None, current: dict[str, Any]) -> dict[str, Any]:
    """What differs from the previous version's report: artefact, variant, config, packages."""
    if not previous:
        return {"previous_version": None}
    old_served, new_served = previous.get("served", {}), current["served"]
    found: dict[str, Any] = {"previous_version": previous.get("version")}
    for key in ("variant", "sha256"):
        if old_served.get(key) != new_served.get(key):
            found[key] = [old_served.get(key), new_served.get(key)]
    diff = list(
        difflib.unified_diff(
            str(previous.get("config", "")).splitlines(),
            current["config"].splitlines(),
            "config (previous)",
            "config (this version)",
            lineterm="",
            n=0,
        )
    )
    if diff:
        found["config"] = diff
    old_pkgs, new_pkgs = previous.get("versions", {}), current["versions"]
    moved = {k: [old_pkgs.get(k), v] for k, v in new_pkgs.items() if old_pkgs.get(k) != v}
    if moved:
        found["packages"] = moved
    old_acc = old_served.get("accuracy", {}).get("value")
    new_acc = new_served.get("accuracy", {}).get("value")
    if old_acc != new_acc:
        found["accuracy"] = [old_acc, new_acc]
    return found


def export_model(
    spec: ModelSpec,
    repository: Path,
    *,
    build_dir: Path,
    version: int | None = None,
    options: ServingOptions | None = None,
    budgets: V.Budgets | None = None,
    budget: float | None = None,
    variants: tuple[V.Variant, ...] | None = None,
    serve: V.Variant | None = None,
    seed: int | None = DEFAULT_SEED,
    sample_data: dict[str, np.ndarray] | None = None,
    measure_s: float = 1.5,
    choose_batch: int = 8,
    min_gain: float = 1.10,
) -> ExportResult:
    """Export, verify every variant against its budget, serve the best one that passed.

    - ``variants``: what to make (None: ``variants.DEFAULTS`` of the target; fp32 always).
    - ``budget`` (fp32 max relative L2 error) is a shortcut for ``budgets.rel_l2``.
    - ``serve`` forces a variant (it must have passed); else :func:`variants.choose` decides.
    - ``seed`` draws the random parity inputs: fixed by default, so exporting the same model
      twice decides the same way (and writes no new version); None draws a fresh seed.
    - ``version``: None writes latest + 1, or nothing when the latest version already holds
      the same artefact and config; a number writes (or replaces) that version.

    Whatever happens, ``build_dir/report.json`` tells what each step measured; nothing is
    written into ``repository`` unless the export passed.
    """
    options = options or with_tuned(ServingOptions(), repository / spec.name)
    budgets = budgets or V.Budgets()
    if budget is not None:
        budgets = dataclasses.replace(budgets, rel_l2=budget)
    wanted = tuple(
        v
        for v in V.Variant
        if v in set(variants or V.DEFAULTS[options.target.value]) | {V.Variant.FP32}
    )
    seed = fresh_seed() if seed is None else seed
    result = ExportResult(spec.name)
    if build_dir.exists():
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True)
    onnx_path = build_dir / "model.onnx"

    step = torch_to_onnx(spec, onnx_path)
    step.write_report()
    result.steps.append(step)
    config = build_config(spec, options)
    report: dict[str, Any] = {
        "model": spec.name,
        "description": spec.description,
        "task": spec.task.value,
        "target": options.target.value,
        "created_unix": int(time.time()),
        "versions": versions(),
        "seed": seed,
        "accuracy_budgets": budgets.as_dict(spec.task),
        "config": to_text(config),
    }
    if step.ok:
        _variants(
            result,
            spec,
            onnx_path,
            build_dir,
            wanted,
            budgets,
            options,
            seed=seed,
            sample_data=sample_data,
            measure_s=measure_s,
            batch=choose_batch,
            min_gain=min_gain,
            serve=serve,
        )
    report["variants"] = [r.as_dict() for r in result.variants]
    evaluated = next((r.task.metrics for r in result.variants if r.task), {})
    report["budgets_in_words"] = explain(spec.task, budgets, evaluated.get("evaluation"))
    if result.failure is None and result.served is not None and result.served.path is not None:
        _install(result, spec, repository, config, version, report, options)
        if spec.tokenizer is not None and result.version_dir is not None:
            from export.ensemble import write_text_pipeline

            # raw strings -> <name>_tokenizer -> this encoder (latest version): <name>_text
            text = write_text_pipeline(
                repository, config, spec.tokenizer, max_length=spec.max_length
            )
            result.steps.append(text)
    report["steps"] = [s.as_dict() for s in result.steps]
    if result.failure is not None:
        report["status"] = "FAILED"
        report["not_written"] = f"{repository / spec.name} was left untouched"
    (build_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    result.report_path = result.report_path or build_dir / "report.json"
    return result


def _variants(
    result: ExportResult,
    spec: ModelSpec,
    onnx_path: Path,
    build_dir: Path,
    wanted: tuple[V.Variant, ...],
    budgets: V.Budgets,
    options: ServingOptions,
    *,
    seed: int,
    sample_data: dict[str, np.ndarray] | None,
    measure_s: float,
    batch: int,
    min_gain: float,
    serve: V.Variant | None,
) -> None:
    """Make and check each variant (fp32 first: when it fails, nothing else is tried)."""
    evidence = Evidence(spec, seed=seed, sample_data=sample_data)
    gpu = options.target is Target.GPU
    made = V.make_and_check(spec, onnx_path, build_dir / "variants", wanted, budgets, evidence)
    for outcome in made:
        if outcome.variant is not V.Variant.FP32:
            result.steps.append(outcome.make)
        result.steps.extend(outcome.checks)
    result.variants.extend(made)
    if not made[0].ok:
        return
    passing = [r for r in result.variants if r.ok]
    if gpu:  # in-process timing here runs on the CPU: it would not predict the GPU
        result.steps.append(
            StepResult(
                "measure",
                Status.SKIPPED,
                "target gpu: timing on this host's CPU does not predict GPU speed; the most "
                "faithful passing variant is served unless --serve names another",
            )
        )
    elif len(passing) > 1 and measure_s > 0:
        started = time.perf_counter()
        # with the ONNX Runtime threads the served config gives each instance (0: all cores)
        speeds = V.measure_side_by_side(
            {r.variant.value: r.path for r in passing if r.path}, spec, (batch,),
            seconds=measure_s, threads=options.intra_op_threads,
        )  # fmt: skip
        for r in passing:
            r.items_per_s = speeds[r.variant.value]
        result.steps.append(
            StepResult(
                "measure",
                Status.OK,
                artefact=None,
                metrics={
                    "batch": batch,
                    "seconds_each": measure_s,
                    "rounds": 3,  # interleaved turns, median (load hits every variant alike)
                    "intra_op_threads": options.intra_op_threads,
                    "length": 32,
                    "items_per_s": {r.variant.value: r.items_per_s[batch] for r in passing},
                },
                duration_s=time.perf_counter() - started,
            )
        )
    if serve is not None:
        forced = next((r for r in passing if r.variant is serve), None)
        chosen, why = forced, f"{serve.value}: asked for with --serve"
        if forced is None:
            why = f"--serve {serve.value}: that variant was not made or failed a check"
    else:
        chosen, why = V.choose(passing, batch, min_gain)
    result.served = chosen
    metrics = {
        "served": chosen.variant.value if chosen else None,
        "min_gain": min_gain,
        "rejected": {r.variant.value: r.as_dict()["reason"] for r in result.variants if not r.ok},
    }
    result.steps.append(
        StepResult(
            "choose",
            Status.OK if chosen else Status.FAILED,
            why,
            artefact=chosen.path if chosen else None,
            metrics=metrics,
        )
    )
    if gpu and chosen is not None and chosen.path is not None:
        from export.tensorrt import build_engine

        engine = build_engine(
            onnx_path,
            spec,
            options,
            build_dir / "tensorrt",
            timing_cache=build_dir.parent / "tensorrt-timing.cache",
            budgets=budgets.as_dict(spec.task),
        )
        result.steps.append(engine)


def _install(
    result: ExportResult,
    spec: ModelSpec,
    repository: Path,
    config: Any,
    version: int | None,
    report: dict[str, Any],
    options: ServingOptions,
) -> None:
    served = result.served
    assert served is not None and served.path is not None
    model_dir = repository / spec.name
    report["served"] = {
        "variant": served.variant.value,
        "sha256": sha256(served.path),
        "bytes": served.path.stat().st_size,
        "accuracy": served.as_dict()["accuracy"],
        "items_per_s": served.items_per_s,
    }
    latest = latest_version(model_dir)
    previous = read_report(model_dir / str(latest)) if latest else None
    if (
        version is None
        and previous is not None
        and (
            previous.get("served", {}).get("sha256") == report["served"]["sha256"]
            and previous.get("config") == report["config"]
        )
    ):
        result.unchanged = True
        result.version_dir = model_dir / str(latest)
        result.report_path = result.version_dir / "report.json"
        report.update(status="UNCHANGED", version=latest, changes={"previous_version": latest})
        result.steps.append(
            StepResult(
                "install",
                Status.SKIPPED,
                f"version {latest} already serves this artefact with this config: nothing written",
            )
        )
        return
    report["version"] = version or (latest or 0) + 1
    if version is not None and version != latest:
        previous = read_report(model_dir / str(version)) or previous
    report["changes"] = changes(previous, report)
    report["version_policy"] = f"latest {options.num_versions}"
    has_config = (model_dir / "config.pbtxt").is_file()
    pinned = version_policy(repository, spec.name) if latest and has_config else None
    if pinned:  # rollouts decide what is served: the new version waits for one
        config.version_policy.ClearField("latest")
        config.version_policy.specific.versions.extend(pinned)
        report["version_policy"] = (
            f"specific {pinned} (kept: rollouts decide what is served; roll this version out "
            f"with `tritonstack rollout start --model {spec.name} --version {report['version']}`)"
        )
    report["status"] = "OK"
    report["steps"] = [s.as_dict() for s in result.steps]
    extra = dict(spec.extra_files)
    result.version_dir = write_entry(
        repository, config, report["version"], served.path, report, extra
    )
    result.report_path = result.version_dir / "report.json"
    result.steps.append(
        StepResult(
            "install",
            Status.OK,
            artefact=result.version_dir,
            metrics={"version": report["version"], "variant": served.variant.value},
        )
    )
