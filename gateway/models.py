"""What the gateway knows of a model Triton serves: its signature, from Triton's metadata."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]  # with the batch dimension (-1) first when the model batches
    optional: bool = False


@dataclass
class ModelInfo:
    name: str
    versions: list[str]
    max_batch_size: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    platform: str = ""
    steps: tuple[str, ...] = ()  # an ensemble's composing models
    # the newest version of each step, read with the ensemble's own metadata: an ensemble
    # reports its own version, not the encoder's it ran (see gateway/api/openai.py)
    step_versions: dict[str, str] = field(default_factory=dict)
    fetched_at: float = field(default_factory=time.monotonic)
    version: str = field(init=False)  # the newest, the one an unversioned request reaches
    _inputs: dict[str, TensorInfo] = field(init=False, repr=False, compare=False)
    _outputs: dict[str, TensorInfo] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._inputs = {t.name: t for t in self.inputs}
        self._outputs = {t.name: t for t in self.outputs}
        self.version = newest(self.versions)

    def input(self, name: str) -> TensorInfo | None:
        return self._inputs.get(name)

    def output(self, name: str) -> TensorInfo | None:
        return self._outputs.get(name)

    def metadata(self) -> dict[str, Any]:
        """The Open Inference Protocol model metadata object."""

        def tensors(items: list[TensorInfo]) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

        return {
            "name": self.name,
            "versions": self.versions,
            "platform": self.platform,
            "inputs": tensors(self.inputs),
            "outputs": tensors(self.outputs),
        }


def newest(versions: list[str]) -> str:
    """The newest version Triton serves (the one an unversioned request reaches)."""
    return max(versions, key=lambda v: int(v) if v.isdigit() else -1, default="")


def from_triton(meta: dict[str, Any], config: dict[str, Any]) -> ModelInfo:
    """A model's signature from Triton's metadata and config (``as_json`` dictionaries)."""
    config = config.get("config", config)
    optional = {i["name"] for i in config.get("input", []) if i.get("optional")}
    steps = tuple(
        step["model_name"]
        for step in config.get("ensemble_scheduling", {}).get("step", [])
        if step.get("model_name")
    )

    def tensors(items: list[dict[str, Any]]) -> list[TensorInfo]:
        return [
            TensorInfo(
                t["name"],
                t["datatype"],
                tuple(int(d) for d in t.get("shape", [])),
                t["name"] in optional,
            )
            for t in items
        ]

    return ModelInfo(
        name=meta["name"],
        versions=list(meta.get("versions", [])),
        max_batch_size=int(config.get("max_batch_size", 0)),
        inputs=tensors(meta.get("inputs", [])),
        outputs=tensors(meta.get("outputs", [])),
        platform=meta.get("platform", ""),
        steps=steps,
    )
