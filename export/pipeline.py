"""The export pipeline: torch2onnx -> verify -> model repository, with one report."""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from export.model_config import ServingOptions, build_config, to_text, with_tuned
from export.repository import write_entry
from export.spec import ModelSpec
from export.status import Status, StepResult
from export.torch2onnx import torch_to_onnx
from export.verify import FP32_BUDGET, verify_parity


@dataclass
class ExportResult:
    """What an export did: its steps, the version directory written (None when it failed)."""

    name: str
    steps: list[StepResult] = field(default_factory=list)
    version_dir: Path | None = None
    report_path: Path | None = None

    @property
    def ok(self) -> bool:
        return all(s.status is not Status.FAILED for s in self.steps) and bool(self.version_dir)

    @property
    def failure(self) -> StepResult | None:
        return next((s for s in self.steps if s.status is Status.FAILED), None)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("torch", "onnx", "onnxruntime", "transformers", "tritonclient"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    return found


def export_model(
    spec: ModelSpec,
    repository: Path,
    *,
    build_dir: Path,
    version: int = 1,
    options: ServingOptions | None = None,
    budget: float = FP32_BUDGET,
    seed: int | None = None,
) -> ExportResult:
    """Export, verify against the budget, and install into ``repository`` only when it passes.

    Whatever happens, ``build_dir/report.json`` tells what each step measured; on success the
    same report lies beside the artefact in the version directory.
    """
    # no options: the defaults plus what the config search recorded for this repository
    options = options or with_tuned(ServingOptions(), repository / spec.name)
    result = ExportResult(spec.name)
    if build_dir.exists():
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True)
    onnx_path = build_dir / "model.onnx"

    step = torch_to_onnx(spec, onnx_path)
    result.steps.append(step)
    if step.ok:
        result.steps.append(verify_parity(spec, onnx_path, budget=budget, seed=seed))

    config = build_config(spec, options)
    report: dict[str, Any] = {
        "model": spec.name,
        "description": spec.description,
        "version": version,
        "target": options.target.value,
        "created_unix": int(time.time()),
        "versions": versions(),
        "accuracy_budget": {"fp32_max_rel_l2": budget},
        "steps": [s.as_dict() for s in result.steps],
        "config": to_text(config),
    }
    if result.failure is None:
        report["status"] = "OK"
        result.version_dir = write_entry(
            repository, config, version, onnx_path, report, spec.extra_files
        )
        result.report_path = result.version_dir / "report.json"
    else:
        report["status"] = "FAILED"
        report["not_written"] = f"{repository / spec.name / str(version)} was left untouched"
    (build_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    result.report_path = result.report_path or build_dir / "report.json"
    return result
