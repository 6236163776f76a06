"""Real English sentences that install offline: the docstrings of Python's standard library.

Text models are judged on what users judge them by (which sentences are each other's nearest
neighbours) and static int8 is calibrated on real inputs; both need real text without a
download. Every Python installation carries thousands of sentences of technical English in
its standard library's docstrings, so the corpus is read from there at run time:

1. the source files of :data:`MODULES` (a fixed list; one a Python version lacks is skipped)
   are parsed with :mod:`ast` (nothing is imported or executed);
2. the docstrings of modules, classes and functions are split into paragraphs and sentences;
3. a sentence is kept when it has 6 to 40 words, starts with a letter, ends with ``.``, ``!``
   or ``?``, is at least 70% letters and holds no doctest or markup debris;
4. duplicates are dropped and the rest ordered by the SHA-256 of their text, a deterministic
   order that mixes modules and topics: ``sentences()[a:b]`` is the same on every machine with
   the same Python version (the report records the version and a fingerprint of the slice).

Python 3.11 yields about 5,000 sentences; evaluation and calibration take disjoint slices.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
import sysconfig
from pathlib import Path

# fmt: off
MODULES = (
    "abc", "argparse", "ast", "asyncio.base_events", "asyncio.events", "asyncio.streams",
    "asyncio.tasks", "base64", "bisect", "calendar", "codecs", "collections",
    "concurrent.futures._base", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "dis", "email.message", "email.utils", "enum", "fnmatch",
    "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq",
    "hmac", "html.parser", "http.client", "http.cookiejar", "http.server", "imaplib", "importlib",
    "importlib.metadata", "inspect", "ipaddress", "json.decoder", "json.encoder", "logging",
    "logging.handlers", "mailbox", "mimetypes", "multiprocessing.pool", "numbers", "operator",
    "optparse", "os", "pathlib", "pickle", "pkgutil", "platform", "plistlib", "poplib", "pprint",
    "pydoc", "queue", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex",
    "shutil", "smtplib", "socket", "socketserver", "ssl", "statistics", "string", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace", "traceback",
    "typing", "unittest.case", "urllib.parse", "urllib.request", "uuid", "warnings", "wave",
    "weakref", "xml.dom.minidom", "zipfile", "zoneinfo._zoneinfo",
)
# fmt: on
MIN_WORDS, MAX_WORDS = 6, 40
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_ALLOWED = re.compile(r"[A-Za-z][A-Za-z0-9 ,.;:'()\-/\"`_=*]+[.!?]")


class CorpusError(RuntimeError):
    """The standard library's sources are missing (a stripped Python) or yield too little."""


def _source(stdlib: Path, module: str) -> Path | None:
    base = stdlib.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _sentences_of(doc: str) -> list[str]:
    found = []
    for paragraph in doc.split("\n\n"):
        text = " ".join(paragraph.split())
        for sentence in _SENTENCE_END.split(text):
            words = len(sentence.split())
            if (
                MIN_WORDS <= words <= MAX_WORDS
                and _ALLOWED.fullmatch(sentence)
                and sum(c.isalpha() for c in sentence) >= 0.7 * len(sentence)
            ):
                found.append(sentence)
    return found


@functools.cache
def sentences() -> tuple[str, ...]:
    """Every kept sentence, in the corpus's deterministic order (see the module docstring)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    kept: set[str] = set()
    for module in MODULES:
        path = _source(stdlib, module)
        if path is None:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    kept.update(_sentences_of(doc))
    if not kept:
        raise CorpusError(f"no docstring sentences under {stdlib}: is the standard library there?")
    return tuple(sorted(kept, key=lambda s: hashlib.sha256(s.encode()).hexdigest()))


def take(count: int, offset: int = 0) -> list[str]:
    """``count`` sentences from ``offset`` (raises when the corpus is shorter)."""
    found = sentences()
    if offset + count > len(found):
        raise CorpusError(
            f"the standard-library corpus has {len(found)} sentences; {offset + count} wanted"
        )
    return list(found[offset : offset + count])


def fingerprint(texts: list[str]) -> str:
    """A short hash of a slice: two runs used the same sentences iff it matches."""
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
