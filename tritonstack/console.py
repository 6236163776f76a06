"""The CLI's two consoles (stdout, stderr), its one way to fail a command, a list parser.

On a terminal, rich takes the terminal's width. Off one (``make demo > log``, a CI log) it
would take 80 columns and cut the wider tables ("mi…", "14…"); there it takes ``LOG_WIDTH``
instead, so every table keeps its columns. ``COLUMNS`` still wins when it is set.
"""

from __future__ import annotations

import os

import typer
from rich.console import Console

LOG_WIDTH = 200


def make_console(stderr: bool = False) -> Console:
    probe = Console(stderr=stderr)
    if probe.is_terminal or "COLUMNS" in os.environ:
        return probe
    return Console(stderr=stderr, width=LOG_WIDTH)


console = make_console()
err = make_console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr; the caller raises the returned exit."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def int_list(value: str, option: str) -> list[int]:
    """``1,4,8`` -> [1, 4, 8]; a usage error naming ``option`` otherwise."""
    try:
        return [int(c) for c in value.split(",") if c]
    except ValueError:
        raise fail(f"{option} must be integers separated by commas, got {value!r}") from None
