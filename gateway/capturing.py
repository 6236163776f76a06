"""What a gateway process captures: the sampling decision and the record of each route.

``Capture`` is held by the process (``Services.capture``; None when capture is off): a route
asks :meth:`Capture.sampled` once it knows tenant and model, and hands the record it builds
with one of the functions below to :meth:`Capture.offer` after the answer is ready. Both cost a
dict lookup, a random draw and, when sampled, building the record from arrays the route already
holds (no copy of a request body, no JSON encoding of tensors).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import numpy as np

from gateway.capture import CaptureRecord, Sampler, Tensor, text_tensors
from gateway.capture_writer import CaptureWriter


def new_request_id() -> str:
    """The gateway's id of a request (``X-Request-Id``): 32 hex digits, unguessable."""
    return uuid.uuid4().hex


class Capture:
    def __init__(self, sampler: Sampler, writer: CaptureWriter, *, keep_text: bool = False):
        self.sampler = sampler
        self.writer = writer
        self.keep_text = keep_text

    def sampled(self, tenant: str, model: str) -> bool:
        return self.sampler.sampled(tenant, model)

    def offer(self, record: CaptureRecord) -> None:
        self.writer.offer(record)


def _record(
    request_id: str, tenant: str, model: str, version: str, route: str, started: float,
    cache: str, tensors: Sequence[Tensor], items: int, entity_ids: Sequence[int] = (),
) -> CaptureRecord:  # fmt: skip
    latency_ms = (time.perf_counter() - started) * 1000.0
    return CaptureRecord(
        request_id, time.time(), tenant, model, version, route, latency_ms, items,
        tuple(tensors), cache, tuple(int(e) for e in entity_ids),
    )  # fmt: skip


def score_record(
    request_id: str, tenant: str, model: str, version: str, *, started: float, cache: str,
    features: np.ndarray, scores: np.ndarray, entity_ids: Sequence[int], route: str = "/v1/score",
) -> CaptureRecord:  # fmt: skip
    """``/v1/score``: the feature rows the model saw, its scores, the entities scored."""
    n = len(features)
    tensors = (
        Tensor("features", "input", np.asarray(features, np.float32).reshape(n, -1)),
        Tensor("score", "output", np.asarray(scores, np.float32).reshape(n, 1)),
    )
    return _record(request_id, tenant, model, version, route, started, cache, tensors, n,
                   entity_ids)  # fmt: skip


def embeddings_record(
    request_id: str, tenant: str, model: str, version: str, *, started: float, cache: str,
    texts: Sequence[str], vectors: np.ndarray | None, token_counts: np.ndarray | None,
    keep_text: bool, output: str = "sentence_embedding", route: str = "/v1/embeddings",
) -> CaptureRecord:  # fmt: skip
    """``/v1/embeddings``: per text its hash, length, token count (the text only if kept), and
    the vector (None on a cache hit answered from bytes: inputs only)."""
    tensors = text_tensors(texts, token_counts, keep_text=keep_text)
    if vectors is not None:
        tensors.append(Tensor(output, "output", np.asarray(vectors, np.float32)))
    return _record(request_id, tenant, model, version, route, started, cache, tensors,
                   len(texts))  # fmt: skip


def tensors_record(
    request_id: str, tenant: str, model: str, version: str, *, started: float, cache: str,
    items: int, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
    keep_text: bool, route: str,
) -> CaptureRecord:  # fmt: skip
    """``/v2/models/{m}/infer``: every numeric tensor as sent / answered, ``[items, ...]``
    (a model without a batch dimension: one item); a BYTES input as text tensors."""
    tensors: list[Tensor] = []
    for role, arrays in (("input", inputs), ("output", outputs)):
        for name, array in arrays.items():
            if array.dtype == np.object_:  # BYTES: text, never kept unless asked for
                if role == "input":
                    texts = [_text(v) for v in array.reshape(-1)]
                    if len(texts) == items:
                        tensors += text_tensors(texts, None, keep_text=keep_text)
                continue
            if items and array.size % items == 0:
                tensors.append(Tensor(name, "input" if role == "input" else "output",
                                      array.reshape(items, -1)))  # fmt: skip
    return _record(request_id, tenant, model, version, route, started, cache, tensors, items)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
