"""The monitoring image (the capture sink and the monitor) holds what `python -m monitoring`
imports: its modules, the gateway's record format and the features it reuses, and a
requirement for every third-party import (no Docker engine here: the image is not built)."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement

from tests.deploy.conftest import DEPLOY
from tests.deploy.test_images import _imports, _requirements, copied_modules, unrequired_imports

ROOT = DEPLOY.parent
DOCKERFILE = DEPLOY / "docker" / "monitoring.Dockerfile"
REQUIREMENTS = DEPLOY / "docker" / "monitoring-requirements.txt"
OURS = ("monitoring", "gateway", "features", "export", "deploy", "batch", "tritonstack")
# imported only inside functions the services never reach: the training-window reference
# (`tritonstack monitor reference`, where Feast and the model repository are), training itself
LAZY_ONLY = {"onnxruntime", "features.store", "torch", "export", "feast"}


def _copied_modules() -> set[str]:
    return copied_modules(DOCKERFILE, "monitoring", ("gateway", "features"))


def _lazy(name: str) -> bool:
    return name in LAZY_ONLY or name.split(".")[0] in LAZY_ONLY


def test_the_image_copies_every_first_party_module_the_services_import() -> None:
    copied = _copied_modules()
    assert {"monitoring.sink", "monitoring.exporter", "gateway.capture"} <= copied
    needed = set()
    for module in copied:
        needed |= {m for m in _imports(module) if m.split(".")[0] in OURS and not _lazy(m)}
    missing = {m for m in needed if m not in copied and f"{m}.__init__" not in copied}
    assert missing - {"monitoring", "gateway", "features"} == set(), (
        f"add to {DOCKERFILE.name}: {sorted(missing)}"
    )
    # the web stack stays out: only the record format of the gateway
    assert not {m for m in copied if m.startswith("gateway.")} - {
        "gateway.capture",
        "gateway.__init__",
    }


def test_the_image_requirements_cover_every_third_party_import() -> None:
    found = unrequired_imports(_copied_modules(), REQUIREMENTS, OURS, frozenset(LAZY_ONLY))
    assert found == []


def test_the_image_requirements_agree_with_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ours = {
        Requirement(r).name.lower(): Requirement(r) for r in pyproject["project"]["dependencies"]
    }
    for name, requirement in _requirements(REQUIREMENTS).items():
        if name in ours:
            assert requirement.specifier == ours[name].specifier, name
        else:  # s3fs: only in the image
            assert name == "s3fs", f"{name} is not a dependency in pyproject.toml"


def test_the_image_runs_both_services_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert 'ENTRYPOINT ["python", "-m", "monitoring"]' in text
    assert "CAPTURE_METRICS_HOST=0.0.0.0" in text and "MONITOR_METRICS_HOST=0.0.0.0" in text
