"""Issue 22, item 3: every error and hint is one honest line, `--debug` shows the traceback, and
`export` checks its options before it builds (or even imports) anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from deploy.local.errors import DeployError
from export.options import BUILTIN_NAME, check_options, check_version
from export.signature import SpecError, describe, parse_input
from tritonstack.cli import app

ROOT = Path(__file__).resolve().parents[2]


class Broken(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom inside forward")


def build_broken() -> torch.nn.Module:
    return Broken()


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tritonstack.cli", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def test_bad_specs_and_existing_versions_are_refused_before_torch_is_imported(
    tmp_path: Path,
) -> None:
    """`--input x:float99:3` used to be refused after 21.5 s (the model was built first)."""
    (tmp_path / "repo" / "tiny" / "7").mkdir(parents=True)
    script = textwrap.dedent(
        f"""
        import json, sys
        from typer.testing import CliRunner
        from tritonstack.cli import app
        runs = [
            ["export", "--model", "pkg.mod:build", "--input", "x:float99:3"],
            ["export", "--model", "pkg.mod:build", "--input", "x:float32:3a"],
            ["export", "--model", "pkg.mod:build", "--input", "x:float32:4", "--name", "tiny",
             "--repository", {str(tmp_path / "repo")!r}, "--version", "7"],
        ]
        out = [CliRunner().invoke(app, r) for r in runs]
        print(json.dumps({{"torch": "torch" in sys.modules,
                          "runs": [[r.exit_code, r.stderr] for r in out]}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["torch"] is False  # nothing heavy was imported, let alone built
    (dtype, axis, version) = found["runs"]
    assert dtype[0] == 1 and "dtype 'float99' is not one of" in dtype[1]
    assert axis[0] == 1 and "dimension '3a' is neither a size" in axis[1]
    assert version[0] == 1 and "--version 7" in version[1] and "--force" in version[1]
    for _, stderr in found["runs"]:
        assert len(stderr.strip().splitlines()) == 1, stderr  # one line each


def test_the_axis_name_rule() -> None:
    """A dynamic axis is -1 or an identifier; `abc` is one, and what was understood is spelled
    out (the export prints it before building); what is neither is refused."""
    abc = parse_input("x:float32:abc")
    assert abc.tensor.shape == (-1,) and abc.tensor.axis_names == ("abc",)
    assert describe(abc) == "x float32 (batch, abc); dynamic: batch, abc"
    ids = parse_input("ids:int64:seq:0..30522")
    assert describe(ids) == "ids int64 (batch, seq) in 0..30522; dynamic: batch, seq"
    for bad in ("x:float32:3a", "x:float32:seq-len", "x:float32:1.5", "x:float32:--3"):
        with pytest.raises(SpecError, match="neither a size"):
            parse_input(bad)


def test_version_checks(tmp_path: Path) -> None:
    model = tmp_path / "m"
    for v in (1, 2, 5):
        (model / str(v)).mkdir(parents=True)
    with pytest.raises(SpecError, match="exists; pass --force"):
        check_version(model, 2, force=False, serve_versions=1)
    assert check_version(model, 6, force=False, serve_versions=1) == []
    assert check_version(model, None, force=False, serve_versions=1) == []
    (warning,) = check_version(model, 3, force=False, serve_versions=1)
    assert warning.startswith("version 3 will not be served") and "latest 1 (5)" in warning
    assert check_version(model, 3, force=False, serve_versions=2) == []  # serves 3 and 5
    assert check_version(model, 2, force=True, serve_versions=3) == []  # replaces 2; 2, 5 (+1)


def test_builtin_name_matches_the_builtin_model() -> None:
    from export.models import minilm

    assert minilm.NAME == BUILTIN_NAME == check_options(None, [], None, None).name
    with pytest.raises(SpecError, match="describe a --model"):
        check_options(None, ["x:float32:4"], None, None)


def test_debug_shows_the_traceback_of_a_failing_forward() -> None:
    args = ["export", "--model", f"{__name__}:build_broken", "--input", "x:float32:4"]
    plain = CliRunner().invoke(app, args)
    assert plain.exit_code == 1
    (line,) = plain.stderr.strip().splitlines()
    assert "forward raised RuntimeError" in line and "boom inside forward" in line
    assert "--debug" in line and "Traceback" not in plain.stderr
    debug = CliRunner().invoke(app, ["--debug", *args])
    assert debug.exit_code == 1
    assert "Traceback" in debug.stderr and 'raise RuntimeError("boom inside forward")' in (
        debug.stderr
    )
    assert debug.stderr.strip().splitlines()[-1].startswith("error: the module's forward")


def test_an_unhandled_error_is_one_line_and_debug_shows_its_traceback() -> None:
    bad = {"TRITONSTACK_HTTP_PORT": "abc"}  # StackSettings() fails: no command handles that
    plain = _run("status", env=bad)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    (line,) = plain.stderr.strip().splitlines()
    assert "http_port" in line and "'abc'" in line and "--debug" in line
    debug = _run("--debug", "status", env=bad)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


def test_hints_keep_their_brackets(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich markup swallowed `[bench]` from the pip hint: nothing is read as markup now."""
    import benchmarks.compare

    def no_peer(*_: object, **__: object) -> None:
        raise DeployError("ray-serve did not start: No module named 'ray' [serve]")

    monkeypatch.setattr(benchmarks.compare, "main", no_peer)
    result = CliRunner().invoke(app, ["bench", "peers"])
    assert result.exit_code == 1
    assert "pip install -e '.[bench]'" in result.stderr
    assert "No module named 'ray' [serve]" in result.stderr


def test_peers_without_the_bench_extra_fail_at_once_with_the_whole_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It used to fail after 15 s (a peer server that could not start)."""
    import benchmarks.compare

    monkeypatch.setitem(benchmarks.compare.EXTRAS, "ray-serve", "no_such_module_for_tests")
    result = CliRunner().invoke(app, ["bench", "peers", "--systems", "ray-serve"])
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert "ray-serve need no_such_module_for_tests, which is not installed" in line
    assert "`.venv/bin/pip install -e '.[bench]' -c requirements/cpu-constraints.txt`" in line
