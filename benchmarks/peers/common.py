"""What every peer shares: the request/response adapters and the ONNX Runtime embedder.

Request ``{"input_ids": [...], "attention_mask": [...]}`` (one item, token ids), response
``{"embedding": [...384 floats]}``. Kept free of the optional ``bench`` extra (Ray Serve,
LitServe), so the tests import it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from deploy.local.settings import StackSettings
from export.reader import served

EMBED_PATH = "/embed"
HEALTH_PATH = "/health"


def encode_request(ids: np.ndarray) -> dict[str, list[int]]:
    """The JSON body for one item (``ids`` of shape [seq] or [1, seq])."""
    row = np.asarray(ids, dtype=np.int64).reshape(-1)
    return {"input_ids": row.tolist(), "attention_mask": [1] * len(row)}


def decode_request(payload: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask of one item; ValueError on a malformed body."""
    ids = np.asarray(payload["input_ids"], dtype=np.int64).reshape(-1)
    mask = np.asarray(payload.get("attention_mask") or [1] * len(ids), dtype=np.int64)
    if ids.size == 0 or mask.shape != ids.shape:
        raise ValueError("input_ids must be non-empty and match attention_mask")
    return ids, mask.reshape(-1)


def encode_response(embedding: np.ndarray) -> dict[str, list[float]]:
    return {"embedding": np.asarray(embedding, dtype=np.float32).reshape(-1).tolist()}


def decode_response(body: bytes | str | dict[str, Any]) -> np.ndarray:
    data = body if isinstance(body, dict) else json.loads(body)
    return np.asarray(data["embedding"], dtype=np.float32)


def decode_v2_binary(body: bytes, header_length: int) -> np.ndarray:
    """The FP32 ``sentence_embedding`` of a KServe v2 answer with one binary output."""
    head = json.loads(body[:header_length])
    (out,) = head["outputs"]
    return np.frombuffer(body[header_length:], dtype=np.float32).reshape(out["shape"])


def pad_batch(items: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Right-pad items to the longest (mask 0 on padding), as Triton's model.py does."""
    length = max(len(ids) for ids, _ in items)
    ids = np.zeros((len(items), length), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, (i, m) in enumerate(items):
        ids[row, : len(i)], mask[row, : len(m)] = i, m
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


class OrtEmbedder:
    """The served ``model.onnx`` in ONNX Runtime, with the session options Triton's runner uses
    (intra-op threads, one inter-op thread, no spinning)."""

    def __init__(self, onnx_path: Path, intra_op_threads: int = 0) -> None:
        options = ort.SessionOptions()
        if intra_op_threads > 0:
            options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        (out,) = self.session.run(["sentence_embedding"], feeds)
        return np.asarray(out)

    def embed(self, items: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        return self.run(pad_batch(items))


def default_onnx_path() -> Path:
    """The served MiniLM of ``TRITONSTACK_MODEL_REPOSITORY`` (a peer server's default)."""
    return served(StackSettings().model_repository, "minilm").artefact
