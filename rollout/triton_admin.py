"""Triton's model-repository API, on every Triton a rollout touches.

``load`` with a ``config`` override (Triton's JSON model config) changes what a running server
serves without touching its files: the version policy (``specific``: both versions side by
side during a rollout), an ensemble step pinned to one version, or, with ``files``, a new
model that exists only in memory (the text pipeline in front of the candidate). Calls carry
the admin key header where the repository API is restricted. A host name with several
addresses (Kubernetes' headless Service) is every Triton pod: each is changed in turn.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from rollout.errors import TritonAdminError


def expand(urls: list[str]) -> list[str]:
    """``host:port`` for every address of every host named (in order, each once)."""
    found: list[str] = []
    for url in urls:
        host, _, port = url.rpartition(":")
        if not host or not port.isdigit():
            raise TritonAdminError(f"a Triton HTTP address is host:port, got {url!r}")
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except OSError as exc:
            raise TritonAdminError(f"cannot resolve Triton's address {host!r}: {exc}") from None
        for info in infos:
            address = str(info[4][0])
            item = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            if item not in found:
                found.append(item)
    return found


class TritonAdmin:
    def __init__(
        self,
        urls: list[str],
        *,
        admin_header: str = "tritonstack-admin-key",
        admin_key: str | None = None,
        timeout_s: float = 5.0,
        load_timeout_s: float = 300.0,
    ) -> None:
        if not urls:
            raise TritonAdminError("no Triton HTTP address (ROLLOUT_TRITON_HTTP_URLS)")
        self.urls = urls
        self.headers = {admin_header: admin_key} if admin_key else {}
        self.timeout_s = timeout_s
        self.load_timeout_s = load_timeout_s

    def endpoints(self) -> list[str]:
        return expand(self.urls)

    def _call(
        self, endpoint: str, path: str, body: Mapping[str, Any] | None, timeout_s: float
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://{endpoint}{path}", data=data, method="GET" if body is None else "POST"
        )
        request.add_header("Content-Type", "application/json")
        for name, value in self.headers.items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            with contextlib.suppress(ValueError, AttributeError):  # Triton's {"error": ...}
                detail = str(json.loads(detail).get("error", detail))
            raise TritonAdminError(f"Triton {endpoint} refused {path}: {detail.strip()}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise TritonAdminError(f"Triton {endpoint} did not answer {path}: {exc}") from None
        return json.loads(raw) if raw.strip() else None

    # -- reads (the first endpoint) ----------------------------------------------------------
    def config(self, name: str) -> dict[str, Any]:
        """The model's config as Triton serves it (JSON form)."""
        found = self._call(self.endpoints()[0], f"/v2/models/{name}/config", None, self.timeout_s)
        return dict(found)

    def index(self) -> list[dict[str, Any]]:
        found = self._call(self.endpoints()[0], "/v2/repository/index", {}, self.timeout_s)
        return [dict(e) for e in found or []]

    def served_versions(self, name: str) -> list[str]:
        """The versions of ``name`` every endpoint serves (READY on all of them)."""
        common: set[str] | None = None
        for endpoint in self.endpoints():
            entries = self._call(endpoint, "/v2/repository/index", {}, self.timeout_s) or []
            ready = {
                str(e["version"])
                for e in entries
                if e.get("name") == name and e.get("state") == "READY" and "version" in e
            }
            common = ready if common is None else common & ready
        return sorted(common or set(), key=int)

    def pipelines_using(self, name: str) -> list[str]:
        """Loaded ensembles with a step on ``name``."""
        found = []
        loaded = {str(e["name"]) for e in self.index() if e.get("state") == "READY"}
        for model in sorted(loaded - {name}):
            config = self.config(model)
            steps = config.get("ensemble_scheduling", {}).get("step", [])
            if config.get("platform") == "ensemble" and any(
                s.get("model_name") == name for s in steps
            ):
                found.append(model)
        return found

    # -- changes (every endpoint) ------------------------------------------------------------
    def load(
        self,
        name: str,
        config: Mapping[str, Any] | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> None:
        """Load or reload ``name`` on every endpoint (with ``config``/``files`` overrides)."""
        parameters: dict[str, str] = {}
        if config is not None:
            parameters["config"] = json.dumps(config)
        for path, content in (files or {}).items():
            parameters[f"file:{path}"] = base64.b64encode(content).decode()
        body = {"parameters": parameters} if parameters else {}
        for endpoint in self.endpoints():
            self._call(endpoint, f"/v2/repository/models/{name}/load", body, self.load_timeout_s)

    def unload(self, name: str) -> None:
        for endpoint in self.endpoints():
            self._call(endpoint, f"/v2/repository/models/{name}/unload", {}, self.load_timeout_s)


def with_versions(config: Mapping[str, Any], versions: list[str]) -> dict[str, Any]:
    """``config`` serving exactly ``versions`` (a ``specific`` version policy)."""
    changed: dict[str, Any] = json.loads(json.dumps(config))
    changed["version_policy"] = {"specific": {"versions": [int(v) for v in versions]}}
    return changed


def with_step(
    config: Mapping[str, Any], model: str, version: int, name: str | None = None
) -> dict[str, Any]:
    """An ensemble ``config`` whose step on ``model`` calls ``version`` (-1: the newest),
    renamed to ``name`` when given (a pipeline that exists only in memory)."""
    changed: dict[str, Any] = json.loads(json.dumps(config))
    for step in changed.get("ensemble_scheduling", {}).get("step", []):
        if step.get("model_name") == model:
            step["model_version"] = version
    if name is not None:
        changed["name"] = name
    return changed


PIPELINE_FILES = {"1/.rollout": b"a pipeline pinned to one version by a rollout\n"}
