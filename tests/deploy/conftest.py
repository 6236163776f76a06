"""Helpers of the deployment tests: the deploy/ tree, and copies of it to break."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from deploy.local.errors import RuntimeMissingError
from deploy.validate import manifests

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture(scope="session")
def kubectl() -> str:
    """kubectl for `kubectl kustomize` (Debian 12 has no current package: skip, saying so)."""
    try:
        return manifests.kubectl_binary()
    except RuntimeMissingError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Callable[[str, str, str], Path]:
    """Copy deploy/k8s and deploy/monitoring to tmp; ``edit(file, old, new)`` breaks a file."""
    root = tmp_path / "deploy"
    for part in ("k8s", "monitoring", "compose"):
        shutil.copytree(DEPLOY / part, root / part)

    def edit(relative: str, old: str, new: str) -> Path:
        path = root / relative
        text = path.read_text()
        assert old in text, f"{old!r} not in {relative}"
        path.write_text(text.replace(old, new, 1))
        return root

    return edit
