"""``POST /v1/embeddings``, compatible with OpenAI's embeddings API, served by a Triton ensemble.

The gateway sends the raw strings to the encoder's text pipeline ``<encoder>_text`` (a Triton
ensemble: the model's own tokenizer as a python-backend model, then the encoder; see
``export/ensemble.py``) in chunks of at most its ``max_batch_size``, and reads
``sentence_embedding`` and ``token_count`` (for ``usage``) back. The gateway keeps only the
cheap checks (non-empty strings, a character limit, the list length); a text with more tokens
than the model takes is refused by the tokenizer in Triton (INVALID_ARG), answered as a 400
that names the input.
"""

from __future__ import annotations

import asyncio
import base64
import re
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, Field
from tritonclient.grpc import InferRequestedOutput, InferResult

from gateway.errors import GatewayError, bad_request
from gateway.models import ModelInfo
from gateway.triton import RawInput
from gateway.upstream import Upstream

if TYPE_CHECKING:
    from gateway.rollouts import Routed

TEXT_INPUT = "text"
EMBEDDING_OUTPUT = "sentence_embedding"
TOKEN_COUNT = "token_count"

# the tokenizer model's per-row errors ("in ensemble 'minilm_text', text[3] has 300 tokens; ...")
_ROW_ERROR = re.compile(r"^(?:in ensemble '[^']*', )?text\[(\d+)\] (.+)$", re.S)


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


def encode_texts(texts: list[str], max_chars: int) -> list[bytes]:
    """The texts as UTF-8 after the gateway's own cheap checks (token limits are the
    tokenizer's, in Triton)."""
    encoded = []
    for i, text in enumerate(texts):
        if not text:
            raise bad_request(f"input[{i}] is empty; give non-empty strings", param="input")
        if len(text) > max_chars:
            raise bad_request(
                f"input[{i}] has {len(text)} characters; the limit is {max_chars}", param="input"
            )
        try:
            encoded.append(text.encode())
        except UnicodeEncodeError as exc:  # JSON allows lone surrogates ("\ud800")
            raise bad_request(
                f"input[{i}] is not valid Unicode (an unpaired surrogate at character "
                f"{exc.start}); send well-formed text",
                param="input",
            ) from None
    return encoded


def check_text_model(model: ModelInfo) -> int:
    """The embedding dimension of a text pipeline; 502 when ``model`` is not one."""
    text = model.input(TEXT_INPUT)
    embedding = model.output(EMBEDDING_OUTPUT)
    if (
        text is None
        or text.datatype != "BYTES"
        or embedding is None
        or not model.output(TOKEN_COUNT)
    ):
        raise GatewayError(
            502,
            "upstream_error",
            f"model {model.name!r} is not a text pipeline (input {TEXT_INPUT!r} BYTES; outputs "
            f"{EMBEDDING_OUTPUT!r}, {TOKEN_COUNT!r}): re-export the model with its tokenizer",
        )
    return embedding.shape[-1]


def _text_input(texts: list[bytes]) -> list[RawInput]:
    """The strings as one BYTES tensor ``[n, 1]``: 4-byte little-endian lengths + UTF-8."""
    raw = b"".join(part for text in texts for part in (len(text).to_bytes(4, "little"), text))
    return [RawInput(TEXT_INPUT, "BYTES", (len(texts), 1), raw)]


_OUTPUTS = [InferRequestedOutput(EMBEDDING_OUTPUT), InferRequestedOutput(TOKEN_COUNT)]


def _for_input(error: GatewayError, offset: int) -> GatewayError:
    """A tokenizer refusal of row ``i`` of a chunk as a 400 about ``input[offset + i]``."""
    if error.status != 400:
        return error
    found = _ROW_ERROR.match(error.detail or "")
    if found is None:
        return GatewayError(400, error.code, error.message, param="input")
    return bad_request(f"input[{offset + int(found[1])}] {found[2]}", param="input")


async def embed(
    upstream: Upstream | Routed, model: ModelInfo, texts: list[bytes]
) -> tuple[np.ndarray, np.ndarray, str]:
    """Embeddings and token counts of UTF-8 ``texts`` (chunks run concurrently), and the
    version of the pipeline that ran."""
    step = model.max_batch_size or len(texts)

    async def run(offset: int) -> InferResult:
        chunk = texts[offset : offset + step]
        try:
            return await upstream.infer(model, _text_input(chunk), _OUTPUTS)
        except GatewayError as exc:
            raise _for_input(exc, offset) from None

    if len(texts) <= step:  # one chunk: no task to gather
        results = [await run(0)]
    else:
        results = list(await asyncio.gather(*(run(o) for o in range(0, len(texts), step))))
    vectors = np.concatenate([r.as_numpy(EMBEDDING_OUTPUT) for r in results]).astype(np.float32)
    counts = np.concatenate([r.as_numpy(TOKEN_COUNT).reshape(-1) for r in results])
    return vectors, counts, results[0].get_response().model_version


def build_response(
    vectors: np.ndarray, token_counts: np.ndarray, request: EmbeddingsRequest
) -> bytes:
    """OpenAI's embeddings answer, encoded once with orjson (floats as the doubles they are: the
    same numbers the pydantic model wrote before)."""
    data: list[dict[str, Any]] = []
    for i, vector in enumerate(vectors):
        value: Any
        if request.encoding_format == "base64":
            value = base64.b64encode(vector.astype("<f4").tobytes()).decode()
        else:
            value = vector.astype(np.float64)
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = int(token_counts.sum())
    answer = {
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
