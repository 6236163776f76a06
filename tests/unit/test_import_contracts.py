"""The import rules of pyproject.toml ([tool.importlinter]) hold, and a breaking import fails.

`make lint` runs `lint-imports` on the tree; here it also runs on a copy of the packages with
one module that breaks a contract, which must fail naming that contract. What import-linter
cannot say (benchmarks import export's readers, but never *call* a writer that sits in the
same module) is checked on the syntax tree.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "export", "features", "gateway", "batch", "monitoring", "rollout", "deploy", "benchmarks",
    "tritonstack",
)  # fmt: skip
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
# export's functions that write into a model repository (or build and install a model)
WRITERS = {"export_model", "export_pytorch", "write_entry", "install_version"} | {
    "write_config",
    "write_tuned",
    "apply_tuned",
    "write_text_pipeline",
}


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tree_keeps_every_contract() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout and "KEPT" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # the loop the layering once had: features -> deploy (-> gateway -> features)
        ("features/_broken.py", "from deploy.local.settings import StackSettings", "layers:"),
        ("export/_broken.py", "import gateway.tenants", "layers:"),
        ("batch/_broken.py", "import gateway.tenants", "layers:"),  # siblings, not layers
        ("gateway/_broken.py", "from export.reader import served_dir", "gateway: features only"),
        # the gateway writes capture records; it never imports what reads them
        ("gateway/_broken.py", "import monitoring.store", "layers:"),
        (
            "monitoring/_broken.py",
            "from gateway.app import create_app",
            "monitoring: gateway.capture",
        ),
        (
            "benchmarks/_broken.py",
            "from export.tuning import apply_tuned",
            "benchmarks and batch read",
        ),
        ("gateway/_broken.py", "import rollout.errors", "layers:"),  # below the controller
        ("rollout/_broken.py", "import torch", "rollout: no torch"),
    ],
)
def test_a_breaking_import_fails_the_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    (tmp_path / module).write_text(f"{line}\n")
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    broken = [row for row in done.stdout.splitlines() if row.endswith(" BROKEN")]
    assert len(broken) == 1 and broken[0].startswith(contract), done.stdout
    assert module.replace("/", ".").removesuffix(".py") in done.stdout  # the chain is named


def test_no_benchmark_calls_an_export_writer() -> None:
    found = []
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            name = getattr(node, "id", None) or getattr(node, "attr", None)
            if isinstance(node, ast.alias):
                name = node.name.rpartition(".")[2]
            if name in WRITERS:
                found.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}: {name}")
    assert not found, "benchmarks only measure; export/ writes the repository: " + str(found)


def test_the_cli_modules_stay_thin() -> None:
    """tritonstack/ only parses, calls and prints: no module of it over 200 lines."""
    long = {
        p.name: n
        for p in sorted((ROOT / "tritonstack").glob("*.py"))
        if (n := len(p.read_text().splitlines())) > 200
    }
    assert not long, f"move the logic into the package that owns it: {long}"
