"""Reading a Triton model repository: the one place that knows its layout for reading.

``NAME/config.pbtxt`` (parsed by :func:`export.model_config.load_config`, never searched as
text) and numbered version directories ``NAME/N/`` holding the artefact and the export's
``report.json``. Writing belongs to :mod:`export.repository` and :mod:`export.tuning`; this
module writes nothing, so the benchmarks and the local launcher may use it freely.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.errors import ModelConfigError
from export.model_config import ENSEMBLE, load_config


def version_dirs(model_dir: Path) -> list[Path]:
    """The numbered version directories of a model, oldest first."""
    if not model_dir.is_dir():
        return []
    found = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(found, key=lambda p: int(p.name))


def latest_version(model_dir: Path) -> int | None:
    found = version_dirs(model_dir)
    return int(found[-1].name) if found else None


def served_dir(repository: Path, name: str) -> Path:
    """The latest version directory of ``name`` (what Triton serves under ``latest 1``)."""
    found = version_dirs(repository / name)
    if not found:
        raise FileNotFoundError(
            f"{repository / name} has no version directory: run `tritonstack export` first"
        )
    return found[-1]


def served_file(repository: Path, name: str, filename: str) -> Path:
    """``filename`` in the newest version of ``name`` (under version 1 when none exists yet,
    so that the caller's "not found" names a plausible path)."""
    found = version_dirs(repository / name)
    return (found[-1] if found else repository / name / "1") / filename


def max_batch_size(repository: Path, name: str) -> int:
    """``max_batch_size`` of ``name``'s config (0: the model does not batch, a request holds
    one item); FileNotFoundError when the repository has no such model."""
    path = repository / name / "config.pbtxt"
    if not path.is_file():
        raise FileNotFoundError(f"no model {name!r} in {repository} (no {path})")
    return int(load_config(path).max_batch_size)


def read_report(version_dir: Path) -> dict[str, Any] | None:
    path = version_dir / "report.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Served:
    """What the newest version of a model serves, from its export report."""

    version_dir: Path
    variant: str  # fp32 | optimized | fp16 | int8
    metric: str | None  # the accuracy metric its budget is in: cosine | top1 | rel_l2
    budget: float | None

    @property
    def artefact(self) -> Path:
        return self.version_dir / "model.onnx"

    def cosine_floor(self, faithful: float) -> float:
        """The cosine its answers owe PyTorch's: its own cosine budget for a reduced variant,
        else ``faithful`` (the caller's bar for an fp32-faithful model)."""
        return self.budget if self.metric == "cosine" and self.budget is not None else faithful


def served(repository: Path, name: str) -> Served:
    """The served variant of ``name`` and its accuracy budget (fp32, no budget, when the
    report is missing); FileNotFoundError when nothing is exported."""
    version_dir = served_dir(repository, name)
    report = (read_report(version_dir) or {}).get("served", {})
    accuracy = report.get("accuracy", {})
    budget = accuracy.get("budget")
    return Served(
        version_dir,
        str(report.get("variant", "fp32")),
        accuracy.get("metric"),
        float(budget) if budget is not None else None,
    )


def is_current(repository: Path, name: str) -> bool:
    """True when the latest version of ``name`` holds the artefact its OK report describes."""
    try:
        version_dir = served_dir(repository, name)
        report = read_report(version_dir) or {}
        with (version_dir / "model.onnx").open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        return bool(
            report.get("status") == "OK"
            and (repository / name / "config.pbtxt").is_file()
            and digest == report["served"]["sha256"]
        )
    except (OSError, KeyError):
        return False


def is_ensemble(repository: Path, name: str) -> bool:
    """True when ``name``'s config is a Triton ensemble (False when it cannot be read)."""
    try:
        return bool(load_config(repository / name / "config.pbtxt").platform == ENSEMBLE)
    except ModelConfigError:
        return False


def servable_models(repository: Path) -> tuple[list[str], list[str]]:
    """Models of a repository that have an exported version, and those that only have a config.

    Ensembles (e.g. ``minilm_text``: tokenizer -> encoder) come after the models they compose,
    so loading them one by one into a running server finds their steps already loaded.
    """
    ready: list[str] = []
    unexported: list[str] = []
    for config in sorted(repository.glob("*/config.pbtxt")):
        name = config.parent.name
        (ready if version_dirs(config.parent) else unexported).append(name)
    ready.sort(key=lambda name: is_ensemble(repository, name))
    return ready, unexported


def version_policy(repository: Path, name: str) -> list[int] | None:
    """The versions ``name``'s config pins (``specific``: a rollout decided them), or None when
    it serves the newest ones (``latest``)."""
    config = load_config(repository / name / "config.pbtxt")
    if config.version_policy.WhichOneof("policy_choice") != "specific":
        return None
    return sorted(int(v) for v in config.version_policy.specific.versions)


def pipelines_using(repository: Path, name: str) -> list[str]:
    """The ensembles of ``repository`` with a step on ``name`` (e.g. ``minilm_text``)."""
    found = []
    for path in sorted(repository.glob("*/config.pbtxt")):
        try:
            config = load_config(path)
        except ModelConfigError:
            continue
        steps = config.ensemble_scheduling.step
        if config.platform == ENSEMBLE and any(s.model_name == name for s in steps):
            found.append(config.name or path.parent.name)
    return found


def rollout_records(repository: Path, name: str) -> list[dict[str, Any]]:
    """The rollouts recorded in the export reports of ``name``'s versions, oldest first."""
    records = []
    for version_dir in version_dirs(repository / name):
        for record in (read_report(version_dir) or {}).get("rollouts", []):
            if isinstance(record, dict):
                records.append({**record, "version": int(version_dir.name)})
    return sorted(records, key=lambda r: float(r.get("started_unix", 0)))
