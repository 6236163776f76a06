"""Write a model into a Triton model repository: ``NAME/config.pbtxt`` + ``NAME/VERSION/``.

Reading the repository back (versions, what is served) is :mod:`export.reader`'s.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from export.model_config import load_config, to_text, validate_config, write_config

RUNNER = Path(__file__).parent / "python_backend" / "model.py"


def install_version(
    model_dir: Path,
    version: int,
    files: Mapping[str, Path],
    texts: Mapping[str, str] | None = None,
) -> Path:
    """Make ``model_dir/VERSION`` hold exactly ``files`` (name -> source) and ``texts``.

    The version directory is assembled in a hidden staging directory beside its final place
    and renamed into it, so a running Triton never sees a half-written version (an empty
    ``files`` gives the empty version directory an ensemble needs).
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    final = model_dir / str(version)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
    staging.chmod(0o755)
    try:
        for name, source in files.items():
            shutil.copy2(source, staging / name)
        for name, text in (texts or {}).items():
            (staging / name).write_text(text)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return final


def write_entry(
    repository: Path,
    config: mc.ModelConfig,
    version: int,
    onnx_path: Path,
    report: dict[str, Any],
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Install a verified artefact as ``repository/NAME/VERSION`` and write ``config.pbtxt``."""
    model_dir = repository / config.name
    files = {"model.onnx": onnx_path}
    if config.backend == "python":
        files["model.py"] = RUNNER
    files.update(extra_files or {})
    report_text = json.dumps(report, indent=2, default=str) + "\n"
    final = install_version(model_dir, version, files, {"report.json": report_text})
    write_config(config, model_dir / "config.pbtxt")
    return final


def _replace(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a running Triton may read it at any moment)."""
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(text)
    staging.replace(path)


def write_version_policy(repository: Path, name: str, versions: Sequence[int]) -> mc.ModelConfig:
    """Pin the versions Triton serves of ``name`` (``specific``); what a reload or a restarted
    Triton serves from now on, and what a later export keeps (rollouts decide it)."""
    path = repository / name / "config.pbtxt"
    config = load_config(path)
    config.version_policy.specific.CopyFrom(
        mc.ModelVersionPolicy.Specific(versions=sorted(set(versions)))
    )
    validate_config(config, str(path))
    _replace(path, to_text(config))
    return config


def write_latest_policy(repository: Path, name: str, num_versions: int = 1) -> mc.ModelConfig:
    """Serve the newest ``num_versions`` of ``name`` again (``latest``, what an export writes)."""
    path = repository / name / "config.pbtxt"
    config = load_config(path)
    config.version_policy.latest.CopyFrom(mc.ModelVersionPolicy.Latest(num_versions=num_versions))
    validate_config(config, str(path))
    _replace(path, to_text(config))
    return config


def pin_step(repository: Path, ensemble: str, model: str, version: int) -> mc.ModelConfig:
    """Make ``ensemble``'s step on ``model`` call ``version`` (-1: the newest served)."""
    path = repository / ensemble / "config.pbtxt"
    config = load_config(path)
    for step in config.ensemble_scheduling.step:
        if step.model_name == model:
            step.model_version = version
    validate_config(config, str(path))
    _replace(path, to_text(config))
    return config


def record_rollout(repository: Path, name: str, version: int, record: Mapping[str, Any]) -> None:
    """Add (or update, by ``id``) a rollout record in version ``version``'s export report."""
    path = repository / name / str(version) / "report.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        report = {"version": version, "note": "no export report: written by a rollout"}
    rollouts = [r for r in report.get("rollouts", []) if r.get("id") != record.get("id")]
    report["rollouts"] = [*rollouts, dict(record)]
    _replace(path, json.dumps(report, indent=2, default=str) + "\n")


def copy_version(repository: Path, name: str, source: int) -> Path:
    """Publish version ``source`` of ``name`` again as a new version (the next number): hard
    links to its files, its report marked ``copied_from`` (a rollout rehearsal, the demo)."""
    model_dir = repository / name
    numbers = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    target = max(numbers, default=0) + 1
    staging = Path(tempfile.mkdtemp(prefix=f".{target}.", dir=model_dir))
    staging.chmod(0o755)
    try:
        for item in (model_dir / str(source)).iterdir():
            if item.is_file() and item.name != "report.json":
                os.link(item, staging / item.name)
        report = json.loads((model_dir / str(source) / "report.json").read_text())
        report.update(version=target, copied_from=source)
        report.pop("rollouts", None)
        (staging / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        staging.rename(model_dir / str(target))
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return model_dir / str(target)
