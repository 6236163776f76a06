"""The CLI's two consoles (stdout, stderr), its one way to fail a command, a list parser.

Nothing the CLI prints is read as rich markup unless it asks: the consoles are made with
``markup=False``, so a path, an exception or a hint such as ``pip install -e '.[bench]'`` prints
exactly as written. Styled words go through :func:`styled` (a ``Text``, never parsed).

On a terminal, rich takes the terminal's width. Off one (``make demo > log``, a CI log) it
would take 80 columns and cut the wider tables ("mi…", "14…"); there it takes ``LOG_WIDTH``
instead, so every table keeps its columns. ``COLUMNS`` still wins when it is set.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

LOG_WIDTH = 200
DEBUG_HINT = "`tritonstack --debug ...` shows the traceback"


@dataclass
class Options:
    """What the global options set (``tritonstack --debug CMD``)."""

    debug: bool = False


options = Options()


def make_console(stderr: bool = False) -> Console:
    probe = Console(stderr=stderr)
    if probe.is_terminal or "COLUMNS" in os.environ:
        return Console(stderr=stderr, markup=False)
    return Console(stderr=stderr, width=LOG_WIDTH, markup=False)


console = make_console()
err = make_console(stderr=True)


def styled(label: str, style: str, rest: str = "") -> Text:
    """``label`` in ``style``, then ``rest`` as it is (neither is parsed as markup)."""
    return Text.assemble((label, style), rest)


def fail(message: str, code: int = 1, *, cause: BaseException | None = None) -> typer.Exit:
    """Print ``error: message`` on stderr; the caller raises the returned exit.

    With ``--debug``, the traceback of ``cause`` (and of what caused it) follows the line.
    """
    if options.debug and cause is not None:
        _traceback(cause)
    err.print(styled("error:", "bold red", f" {message}"), highlight=False, soft_wrap=True)
    return typer.Exit(code)


def warn(message: str) -> None:
    """``warning: message`` on stderr (the command goes on)."""
    err.print(styled("warning:", "bold yellow", f" {message}"), highlight=False, soft_wrap=True)


def unexpected(exc: BaseException) -> int:
    """An exception no command handled: one line (the traceback with ``--debug``); exit 1."""
    if options.debug:
        _traceback(exc)
    if isinstance(exc, ValidationError):  # a TRITONSTACK_* or GATEWAY_* variable: name it
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})"
            for e in exc.errors()
        )
        text = f"invalid {exc.title} (environment variables): {problems}"
    else:
        lines = str(exc).strip().splitlines()
        text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    err.print(
        styled("error:", "bold red", f" {text} ({DEBUG_HINT})"),
        highlight=False,
        soft_wrap=True,
    )
    return 1


def _traceback(exc: BaseException) -> None:
    err.print("".join(traceback.format_exception(exc)).rstrip(), highlight=False, soft_wrap=True)


def int_list(value: str, option: str) -> list[int]:
    """``1,4,8`` -> [1, 4, 8]; a usage error naming ``option`` otherwise."""
    try:
        return [int(c) for c in value.split(",") if c.strip()]
    except ValueError:
        raise fail(f"{option} must be integers separated by commas, got {value!r}") from None
