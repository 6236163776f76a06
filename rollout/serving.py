"""What Triton serves during a rollout, changed in the one order that never lets a caller's
unversioned or pipeline request reach a version it was not routed to.

Each change is made twice: in Triton (repository API with a config override, on every Triton)
and, when the controller may write the model repository, on disk (``export.repository``), so a
reload or a restarted Triton serves the same. Loading a pipeline (an ensemble) makes Triton
reload its steps from their files, so the model's policy on disk always names what Triton
serves before a pipeline is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from export.repository import pin_step, write_version_policy
from rollout.errors import TritonAdminError
from rollout.triton_admin import PIPELINE_FILES, TritonAdmin, with_step, with_versions


class Serving:
    def __init__(self, admin: TritonAdmin, repository: Path | None) -> None:
        self.admin = admin
        self.repository = repository  # None: Triton only (no repository to write)

    def _policy(self, model: str, versions: list[str]) -> None:
        if self.repository is not None:
            write_version_policy(self.repository, model, [int(v) for v in versions])

    def _versions(self, model: str, versions: list[str]) -> None:
        self._policy(model, versions)
        self.admin.load(model, with_versions(self.admin.config(model), versions))

    def _pin(self, pipeline: str, model: str, version: int) -> None:
        repo = self.repository
        if repo is not None and (repo / pipeline / "config.pbtxt").is_file():
            pin_step(repo, pipeline, model, version)
        self.admin.load(pipeline, with_step(self.admin.config(pipeline), model, version))

    def both(
        self, model: str, stable: str, candidate: str, pipelines: Mapping[str, str]
    ) -> list[str]:
        """Pipelines pinned to ``stable``, then both versions served, then a pipeline pinned to
        the candidate beside each (in memory only); the versions served after."""
        self._policy(model, [stable])
        for pipeline in pipelines:
            self._pin(pipeline, model, int(stable))
        self._versions(model, [stable, candidate])
        served = self.admin.served_versions(model)
        if candidate not in served or stable not in served:
            raise TritonAdminError(f"after the load Triton serves {model} versions {served}")
        for pipeline, pinned in pipelines.items():
            config = with_step(self.admin.config(pipeline), model, int(candidate), pinned)
            self.admin.load(pinned, config, PIPELINE_FILES)
        return served

    def only_candidate(self, model: str, candidate: str, pipelines: Mapping[str, str]) -> None:
        """(Callers are on the candidate.) Pipelines follow the newest version again, then the
        candidate alone is served."""
        for pipeline in pipelines:
            self._pin(pipeline, model, -1)
        self._versions(model, [candidate])

    def only_stable(self, model: str, stable: str, pipelines: Mapping[str, str]) -> list[str]:
        """(Callers are on the stable version.) The candidate's pipelines go, the stable
        version alone is served, the pipelines follow it; what could not be unloaded."""
        left = self.unload(pipelines)
        self._versions(model, [stable])
        for pipeline in pipelines:
            self._pin(pipeline, model, -1)
        return left

    def unload(self, pipelines: Mapping[str, str]) -> list[str]:
        """Unload the candidate's pipelines; the messages of those that were already gone."""
        left = []
        for pinned in pipelines.values():
            try:
                self.admin.unload(pinned)
            except TritonAdminError as exc:  # a restarted Triton never had it
                left.append(f"unload {pinned}: {exc}")
        return left
