"""A fake Triton for the gateway's route tests: the ``gateway.triton.TritonClient`` interface,
answering from memory in microseconds.

Serves ``minilm`` (token ids → a 384-d vector), its text pipeline ``minilm_text`` (strings →
vector + token count, an ensemble of ``minilm_tokenizer`` and ``minilm``) and ``driver_ranker``
(features → score). Every call is recorded, so a test can count metadata look-ups and see the
exact bytes an inference carried.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tritonclient.grpc import InferResult, service_pb2
from tritonclient.utils import InferenceServerException

from gateway.triton import RawInput

DIM = 384


def _tensor(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [str(d) for d in shape]}


def _models() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    ids = [_tensor(n, "INT64", [-1, -1]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    embedding = _tensor("sentence_embedding", "FP32", [-1, DIM])
    return {
        "minilm": (
            {"name": "minilm", "versions": ["1", "2"], "platform": "python", "inputs": ids,
             "outputs": [embedding]},
            {"config": {"max_batch_size": 32}},
        ),
        "minilm_tokenizer": (
            {"name": "minilm_tokenizer", "versions": ["1"], "platform": "python",
             "inputs": [_tensor("text", "BYTES", [-1, 1])], "outputs": ids},
            {"config": {"max_batch_size": 32}},
        ),
        "minilm_text": (
            {"name": "minilm_text", "versions": ["1"], "platform": "ensemble",
             "inputs": [_tensor("text", "BYTES", [-1, 1])],
             "outputs": [embedding, _tensor("token_count", "INT64", [-1, 1])]},
            {"config": {"max_batch_size": 32, "ensemble_scheduling": {"step": [
                {"model_name": "minilm_tokenizer"}, {"model_name": "minilm"}]}}},
        ),
        "driver_ranker": (
            {"name": "driver_ranker", "versions": ["1"], "platform": "python",
             "inputs": [_tensor("features", "FP32", [-1, 5])],
             "outputs": [_tensor("score", "FP32", [-1, 1])]},
            {"config": {"max_batch_size": 256}},
        ),
    }  # fmt: skip


@dataclass
class Call:
    model: str
    inputs: list[RawInput]
    outputs: list[str]
    version: str = ""  # the version asked for ("": the newest)


@dataclass
class FakeTriton:
    models: dict[str, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=_models)
    calls: list[Call] = field(default_factory=list)
    metadata_calls: list[str] = field(default_factory=list)
    ready: bool = True

    async def infer(
        self,
        model_name: str,
        inputs: Sequence[Any],
        outputs: Sequence[Any] | None = None,
        request_id: str = "",
        client_timeout: float | None = None,
        model_version: str = "",
    ) -> InferResult:
        raw = [
            t if isinstance(t, RawInput)
            else RawInput(t.name(), t.datatype(), tuple(t.shape()), t._get_content() or b"")
            for t in inputs
        ]  # fmt: skip
        named = [o._get_tensor().name for o in outputs or ()]
        self.calls.append(Call(model_name, raw, named, model_version))
        if model_name not in self.models:
            raise InferenceServerException(
                f"Request for unknown model: '{model_name}'", status="StatusCode.NOT_FOUND"
            )
        rows = raw[0].shape[0]
        versions = self.models[model_name][0]["versions"]
        if model_version and model_version not in versions:
            raise InferenceServerException(
                f"Request for unknown model: '{model_name}' version {model_version} is not found",
                status="StatusCode.NOT_FOUND",
            )
        response = service_pb2.ModelInferResponse(
            model_name=model_name, model_version=model_version or versions[-1]
        )
        if model_name == "driver_ranker":
            features = np.frombuffer(raw[0].raw, dtype="<f4").reshape(rows, -1)
            self._output(response, "score", "FP32", features.sum(axis=1, keepdims=True))
            return InferResult(response)
        vector = np.full((rows, DIM), 0.05, dtype=np.float32)  # norm 0.98
        vector[:, 0] = len(raw[0].raw) / 1000  # differs with the input's size
        self._output(response, "sentence_embedding", "FP32", vector)
        if model_name.startswith("minilm_text"):  # and a pipeline pinned to a version
            self._output(response, "token_count", "INT64", np.full((rows, 1), 7, dtype=np.int64))
        return InferResult(response)

    @staticmethod
    def _output(response: Any, name: str, datatype: str, array: np.ndarray) -> None:
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())

    def _known(self, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if name not in self.models:
            raise InferenceServerException(
                f"Request for unknown model: '{name}' is not found", status="StatusCode.NOT_FOUND"
            )
        return self.models[name]

    async def get_model_metadata(
        self, model_name: str, as_json: bool = True, client_timeout: float | None = None
    ) -> dict[str, Any]:
        self.metadata_calls.append(model_name)
        return self._known(model_name)[0]

    async def get_model_config(
        self, model_name: str, as_json: bool = True, client_timeout: float | None = None
    ) -> dict[str, Any]:
        return self._known(model_name)[1]

    async def is_server_ready(self, client_timeout: float | None = None) -> bool:
        return self.ready

    async def is_model_ready(self, model_name: str, client_timeout: float | None = None) -> bool:
        return self.ready and model_name in self.models

    async def load_model(
        self,
        model_name: str,
        headers: Mapping[str, str] | None = None,
        client_timeout: float | None = None,
    ) -> None:
        return None

    async def unload_model(
        self,
        model_name: str,
        headers: Mapping[str, str] | None = None,
        client_timeout: float | None = None,
    ) -> None:
        return None

    async def close(self) -> None:
        return None
