"""Text in, embeddings out: tokenise locally, call Triton over gRPC or KServe v2 REST.

Used by ``tritonstack infer`` and the demo. It talks to Triton directly (no gateway) and only
needs ``tokenizers`` and ``tritonclient``: no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tokenizers import Tokenizer
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

Protocol = Literal["grpc", "http"]


class InferenceError(Exception):
    """An inference request was refused or failed; the message says what to fix."""


@dataclass(frozen=True)
class Endpoint:
    url: str  # host:port
    protocol: Protocol = "grpc"
    timeout_s: float = 30.0


class TritonTensorClient:
    """Send named numpy arrays to a Triton model and get named arrays back."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._grpc: grpcclient.InferenceServerClient | None = None
        self._http: httpclient.InferenceServerClient | None = None
        if endpoint.protocol == "grpc":
            self._grpc = grpcclient.InferenceServerClient(endpoint.url)
        elif endpoint.protocol == "http":
            self._http = httpclient.InferenceServerClient(
                endpoint.url,
                connection_timeout=endpoint.timeout_s,
                network_timeout=endpoint.timeout_s,
            )
        else:
            raise InferenceError(f"unknown protocol {endpoint.protocol!r}; use 'grpc' or 'http'")

    def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        for name, array in inputs.items():
            if array.ndim == 0 or array.shape[0] == 0:
                raise InferenceError(f"input {name!r} is an empty batch: send at least one row")
        try:
            if self._grpc is not None:
                g_inputs = []
                for name, array in inputs.items():
                    item = grpcclient.InferInput(
                        name, list(array.shape), np_to_triton_dtype(array.dtype)
                    )
                    item.set_data_from_numpy(array)
                    g_inputs.append(item)
                g_result = self._grpc.infer(
                    model,
                    g_inputs,
                    outputs=[grpcclient.InferRequestedOutput(o) for o in outputs],
                    client_timeout=self.endpoint.timeout_s,
                )
                return {o: g_result.as_numpy(o) for o in outputs}
            assert self._http is not None
            h_inputs = []
            for name, array in inputs.items():
                h_item = httpclient.InferInput(
                    name, list(array.shape), np_to_triton_dtype(array.dtype)
                )
                h_item.set_data_from_numpy(array, binary_data=False)  # KServe v2 JSON
                h_inputs.append(h_item)
            h_result = self._http.infer(
                model,
                h_inputs,
                outputs=[httpclient.InferRequestedOutput(o, binary_data=False) for o in outputs],
            )
            return {o: h_result.as_numpy(o) for o in outputs}
        except InferenceServerException as exc:
            raise InferenceError(
                f"Triton refused the request to {model!r}: {exc.message()}"
            ) from exc

    def close(self) -> None:
        if self._grpc is not None:
            self._grpc.close()
        if self._http is not None:
            self._http.close()


class TextEmbedder:
    """Tokenise texts like the model was trained, pad to the batch's longest, embed."""

    def __init__(
        self,
        endpoint: Endpoint,
        tokenizer_json: Path,
        model: str = "minilm",
        max_length: int = 256,
        output: str = "sentence_embedding",
    ) -> None:
        if not tokenizer_json.is_file():
            raise InferenceError(
                f"tokenizer {tokenizer_json} not found; run `tritonstack export` first"
            )
        self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.model = model
        self.output = output
        self.client = TritonTensorClient(endpoint)

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise InferenceError("no input texts: give at least one")
        encodings = self.tokenizer.encode_batch(list(texts))
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = self.client.infer(self.model, self.tokenize(texts), [self.output])
        return out[self.output]

    def close(self) -> None:
        self.client.close()
