"""Process CPU time from /proc, and py-spy profiles of a server under load.

``cpu_seconds(pid)`` is what a process (all its threads) has run on the CPU so far: user +
system time from ``/proc/<pid>/stat``, in clock ticks (10 ms). Read before and after a window of
load and divided by the requests completed in it, it is the server's own CPU per request, the
cost a user pays whatever the machine's other load.

``record(pid, stem, seconds)`` runs ``py-spy record`` twice against a running process (it
samples from outside, ``--nonblocking``: the process is never paused): a flame graph
(``stem.svg``) and the raw collapsed stacks (``stem.txt``), summarized by ``summarize`` into the
functions that hold the most samples, on their own (self) and with what they call (inclusive).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def py_spy() -> str | None:
    """The py-spy executable beside this Python (the dev extra installs it), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(pid: int, stem: Path, seconds: float, rate: int = 250) -> list[str]:
    """Profile ``pid`` for ``seconds`` twice (flame graph, raw stacks); the commands run."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    stem.parent.mkdir(parents=True, exist_ok=True)
    commands = []
    for fmt, suffix in (("flamegraph", ".svg"), ("raw", ".txt")):
        output = str(stem.with_suffix(suffix))
        duration = str(max(1, round(seconds)))
        command = [exe, "record", "--pid", str(pid), "--duration", duration, "--rate", str(rate)]
        command += ["--nonblocking", "--format", fmt, "--output", output]
        subprocess.run(command, check=True, capture_output=True, timeout=seconds + 60)
        commands.append(" ".join(command[1:]))
        scrub(stem.with_suffix(suffix))
    return commands


def scrub(path: Path) -> None:
    """File paths in a profile made relative: the checkout, the environment, the interpreter."""
    text = path.read_text()
    prefixes = {f"{Path.cwd()}/", f"{sys.prefix}/lib/", f"{sys.base_prefix}/lib/"}
    for prefix in sorted(prefixes, key=len, reverse=True):
        text = text.replace(prefix, "")
    path.write_text(text)


def _frame(raw: str) -> str:
    """``function (path/to/module.py:12)`` → ``module.py:function`` (lines dropped)."""
    name, _, where = raw.partition(" (")
    module = where.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{module}:{name}" if module else name


def summarize(collapsed: str, top: int = 25) -> dict[str, object]:
    """Sample counts from py-spy's raw output: total, idle (the event loop waiting), and the
    ``top`` functions by self and by inclusive samples, as shares of the busy samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if f]
        total += n
        if not frames or frames[-1].endswith(("select", "poll", ":_run_once")):
            idle += n
            continue
        own[frames[-1]] += n
        for name in set(frames):
            inclusive[name] += n
    busy = max(1, total - idle)

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / busy, 1)) for name, n in counter.most_common(top)]

    return {
        "samples": total,
        "idle_samples": idle,
        "self_pct_of_busy": share(own),
        "inclusive_pct_of_busy": share(inclusive),
    }
