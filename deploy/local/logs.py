"""``tritonstack logs SERVICE [-f]``: a service's log, followed across restarts.

The supervisor keeps a dead process's log as ``<log>.1`` and the next process writes a fresh
``<log>``; following notices the new file (another inode, or a shorter one) and goes on there.
"""

from __future__ import annotations

import codecs
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

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
    """Write what is appended to ``path`` from its current end on, until ``until()``.

    The file is kept open, so the last lines of a process written just before its log was
    renamed to ``.1`` are read too, and then the new log from its start.
    """
    handle: BinaryIO | None = None
    decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a chunk may end mid-character
    try:
        if path.exists():
            handle = path.open("rb")
            handle.seek(0, 2)
        while not until():
            if handle is not None:
                write(decoder.decode(handle.read()))
            try:
                current = path.stat()
            except FileNotFoundError:
                time.sleep(poll_s)
                continue
            if handle is None or os.fstat(handle.fileno()).st_ino != current.st_ino:
                if handle is not None:  # drained above: the next process's log begins
                    write(decoder.decode(handle.read(), final=True))
                    write(f"--- {path.name}: a new process (the previous log: {path.name}.1) ---\n")
                    handle.close()
                handle = path.open("rb")
                decoder.reset()
                continue
            if current.st_size < handle.tell():  # truncated in place
                handle.seek(0)
            time.sleep(poll_s)
    finally:
        if handle is not None:
            handle.close()
