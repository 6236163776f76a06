"""The models the local Triton serves, and loading exported ones into it while it runs.

The stack's Triton runs in explicit model control (``deploy/local/services.py``): a model, a
version or a config exported after ``up`` is served once it is loaded through Triton's
repository API. ``POST /v2/repository/models/NAME/load`` loads a model, or reloads a loaded one
with what its directory holds now (new versions, new config) while the old one keeps answering
until the new one is ready. ``POST /v2/repository/index`` lists every model of the repository
with each version's state; the export reports (:mod:`export.reader`) say which variant each
served version holds.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploy.local.errors import ModelLoadError, StackNotRunningError
from deploy.local.settings import StackSettings
from deploy.local.state import read_state_file
from export.errors import ModelConfigError
from export.model_config import ENSEMBLE, load_config
from export.reader import read_report, servable_models, version_dirs, version_policy

LOAD_TIMEOUT_S = 300.0  # a python-backend model starts its stubs and runs its warm-up


@dataclass
class ModelStatus:
    """One model of the repository: what Triton serves of it and what lies on disk."""

    name: str
    state: str  # READY | LOADING | UNAVAILABLE | UNLOADING | NOT LOADED (Triton's, or ours)
    served_versions: list[int] = field(default_factory=list)
    variant: str | None = None  # of the newest served version: fp32 | optimized | int8 | ...
    on_disk: list[int] = field(default_factory=list)
    reason: str = ""  # Triton's, e.g. why a load failed
    pinned: bool = False  # the config names the versions served (rollouts decide them)

    @property
    def newer_on_disk(self) -> bool:
        """A version on disk is newer than every served one (a `reload` would serve it)."""
        return bool(self.on_disk) and (
            not self.served_versions or max(self.on_disk) > max(self.served_versions)
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "newer_on_disk": self.newer_on_disk}


def _post(url: str, timeout_s: float, body: dict[str, Any] | None = None) -> bytes:
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return bytes(response.read())


def repository_index(http_url: str, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """Triton's repository index: one entry per model version (``name``, ``version``, ``state``,
    ``reason``); a model that has no loaded version has one entry without ``version``."""
    answer = json.loads(_post(f"http://{http_url}/v2/repository/index", timeout_s))
    return [dict(entry) for entry in answer]


def load_model(http_url: str, name: str) -> None:
    """Load ``name`` into a running explicit-mode Triton (a no-op when it is ready already)."""
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/models/{name}/ready", timeout=2) as r:
            if r.status == 200:
                return
    except (urllib.error.URLError, OSError):
        pass
    reload_model(http_url, name)


def reload_model(http_url: str, name: str, timeout_s: float = LOAD_TIMEOUT_S) -> None:
    """Load ``name``, or reload it with its directory's current versions and config."""
    try:
        _post(f"http://{http_url}/v2/repository/models/{name}/load", timeout_s)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError):  # Triton's {"error": "..."}
            detail = str(json.loads(detail).get("error", detail))
        raise ModelLoadError(f"Triton could not load {name!r}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ModelLoadError(f"Triton could not load {name!r}: {exc}") from None


def _variant(repository: Path, name: str, version: int | None) -> str | None:
    try:
        if load_config(repository / name / "config.pbtxt").platform == ENSEMBLE:
            return "ensemble"
    except ModelConfigError:
        return None
    if version is None:
        return None
    report = read_report(repository / name / str(version)) or {}
    variant = report.get("served", {}).get("variant")
    return str(variant) if variant else None


def _pinned(repository: Path, name: str) -> bool:
    try:
        return version_policy(repository, name) is not None
    except ModelConfigError:
        return False


def model_status(repository: Path, http_url: str | None) -> list[ModelStatus]:
    """Every model of ``repository`` and of the running Triton's index (None: not running)."""
    index = repository_index(http_url) if http_url else []
    names = sorted({c.parent.name for c in repository.glob("*/config.pbtxt")} | {
        str(e["name"]) for e in index
    })  # fmt: skip
    found = []
    for name in names:
        entries = [e for e in index if e["name"] == name]
        served = sorted(int(e["version"]) for e in entries if e.get("state") == "READY")
        states = {str(e.get("state", "")) for e in entries}
        state = "READY" if served else (sorted(states)[0] if states else "NOT LOADED")
        reasons = {str(e.get("reason") or "") for e in entries if e.get("state") != "READY"}
        found.append(
            ModelStatus(
                name,
                state,
                served,
                _variant(repository, name, served[-1] if served else None),
                [int(p.name) for p in version_dirs(repository / name)],
                "; ".join(sorted(r for r in reasons if r)) if not served else "",
                _pinned(repository, name),
            )
        )
    return found


@dataclass(frozen=True)
class RunningTriton:
    http_url: str  # host:port
    repository: Path


def running_triton(settings: StackSettings) -> RunningTriton | str:
    """The running stack's Triton, or why there is none to load into (one line)."""
    state = read_state_file(settings.state_file)
    if state is None or not state.supervisor.alive(settings.state_file):
        return "no stack is running (`tritonstack up` serves every exported model)"
    triton = state.services["triton"]
    if state.supervisor.phase != "running" or triton.state != "running":
        return (
            f"the stack's Triton is {triton.state} (stack {state.supervisor.phase}); a Triton "
            "that (re)starts loads every exported model"
        )
    repository = Path(str(state.settings["model_repository"]))
    return RunningTriton(f"{triton.host}:{triton.ports['http']}", repository)


def serve(settings: StackSettings, repository: Path, names: list[str]) -> list[ModelStatus] | str:
    """After an export into ``repository``: load (or reload) ``names`` into the running stack.

    Returns what Triton serves of them now, or one line saying why nothing was loaded (no stack,
    or a stack serving another repository). Raises :class:`ModelLoadError` when Triton refuses.
    """
    running = running_triton(settings)
    if isinstance(running, str):
        return running
    if running.repository.resolve() != repository.resolve():
        return (
            f"the running stack serves {running.repository}, not {repository}: not loaded "
            f"(export with --repository {running.repository} to serve it there)"
        )
    return reload(settings, names)


def reload(settings: StackSettings, names: list[str] | None = None) -> list[ModelStatus]:
    """Load or reload ``names`` (default: every exported model, ensembles last) into the running
    stack's Triton; what it serves of them afterwards."""
    running = running_triton(settings)
    if isinstance(running, str):
        raise StackNotRunningError(running)
    repository = running.repository
    exported, unexported = servable_models(repository)
    for name in names or []:
        if name in unexported:
            raise ModelLoadError(
                f"{name} has no exported version in {repository / name}: run `tritonstack export`"
            )
        if name not in exported:
            raise ModelLoadError(f"no model {name!r} in {repository} (it has: {exported})")
    wanted = [n for n in exported if names is None or n in names]  # ensembles after their steps
    for name in wanted:
        reload_model(running.http_url, name)
    return [m for m in model_status(repository, running.http_url) if m.name in wanted]
