"""``tritonstack logs SERVICE [-f]``: a service's log, followed across restarts.

The supervisor keeps a dead process's log as ``<log>.1`` and the next process writes a fresh
``<log>``; following notices the new file (another inode, or a shorter one) and goes on there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from deploy.local.services import LOG_FILES, log_path
from deploy.local.settings import StackSettings
from deploy.local.state import read_state_file

LOG_SERVICES = tuple(LOG_FILES)


def log_file(settings: StackSettings, service: str, previous: bool = False) -> Path:
    """The log of ``service`` (``previous``: the one of the process before the last restart)."""
    if service not in LOG_FILES:
        raise ValueError(f"no service {service!r}: choose one of {', '.join(LOG_SERVICES)}")
    state = read_state_file(settings.state_file)
    record = state.services.get(service) if state is not None else None
    path = Path(record.log) if record is not None else log_path(settings, service)
    return path.with_name(path.name + ".1") if previous else path


def follow(
    path: Path,
    write: Callable[[str], None],
    *,
    poll_s: float = 0.25,
    until: Callable[[], bool] = lambda: False,
) -> None:
    """Write what is appended to ``path`` from its current end on, until ``until()``."""
    position = path.stat().st_size if path.exists() else 0
    inode = path.stat().st_ino if path.exists() else None
    while not until():
        try:
            stat = path.stat()
        except FileNotFoundError:
            time.sleep(poll_s)
            continue
        if stat.st_ino != inode or stat.st_size < position:  # restarted: a fresh log
            if inode is not None:
                write(f"--- {path.name}: a new process (the previous log is {path.name}.1) ---\n")
            inode, position = stat.st_ino, 0
        if stat.st_size > position:
            with path.open("rb") as fh:
                fh.seek(position)
                chunk = fh.read(stat.st_size - position)
            position += len(chunk)
            write(chunk.decode("utf-8", "replace"))
        time.sleep(poll_s)
