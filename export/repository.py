"""Write a model into a Triton model repository: ``NAME/config.pbtxt`` + ``NAME/VERSION/``.

Reading the repository back (versions, what is served) is :mod:`export.reader`'s.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from export.model_config import write_config

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
