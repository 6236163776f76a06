"""The README's runnable blocks: each follows a ``<!-- snippet: NAME -->`` line, so a test can
run exactly what a reader copies (and fails when a named block disappears)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_BLOCK = re.compile(
    r"<!-- snippet: (?P<name>[\w-]+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)\n```", re.DOTALL
)


def snippets() -> dict[str, tuple[str, str]]:
    """name -> (language, code) of every marked block of the README."""
    return {m["name"]: (m["lang"], m["code"]) for m in _BLOCK.finditer(README.read_text())}


def run_snippets(
    names: list[str], env: dict[str, str], timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the named blocks one after the other in one shell (bash) or interpreter (python),
    from the project root, as a reader would; a failing command fails the run."""
    found = snippets()
    missing = [n for n in names if n not in found]
    assert not missing, f"README.md has no snippet {missing} (markers: {sorted(found)})"
    languages = {found[n][0] for n in names}
    assert len(languages) == 1, f"one language per run, got {languages}"
    code = "\n".join(found[n][1] for n in names)
    command = (
        ["bash", "-euo", "pipefail", "-c", code]
        if languages == {"bash"}
        else [sys.executable, "-c", code]
    )
    return subprocess.run(
        command,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
