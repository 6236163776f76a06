"""Write a model into a Triton model repository: ``NAME/config.pbtxt`` + ``NAME/VERSION/``."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from export.model_config import write_config

RUNNER = Path(__file__).parent / "python_backend" / "model.py"


def write_entry(
    repository: Path,
    config: mc.ModelConfig,
    version: int,
    onnx_path: Path,
    report: dict[str, Any],
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Install a verified artefact as ``repository/NAME/VERSION`` and write ``config.pbtxt``.

    The version directory is assembled beside its final place and renamed into it, so a
    running Triton never sees a half-written version.
    """
    model_dir = repository / config.name
    model_dir.mkdir(parents=True, exist_ok=True)
    final = model_dir / str(version)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
    staging.chmod(0o755)
    try:
        shutil.copy2(onnx_path, staging / "model.onnx")
        if config.backend == "python":
            shutil.copy2(RUNNER, staging / "model.py")
        for name, source in (extra_files or {}).items():
            shutil.copy2(source, staging / name)
        (staging / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    write_config(config, model_dir / "config.pbtxt")
    return final
