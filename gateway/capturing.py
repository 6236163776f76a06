"""What a gateway process captures: the sampling decision and the record of each route.

``Capture`` is held by the process (``Services.capture``; None when capture is off, so a route
pays one attribute test). A route calls :func:`begin` once it knows tenant and model (a dict
lookup and a random draw; None when not sampled), keeps what ``produce()`` answered on the
:class:`Pending` (:meth:`Pending.keep`; nothing on a cache hit), and hands the answer to
:func:`finish`: it adds ``X-Request-Id`` and builds and offers the record in a background task
that runs after the answer is sent, so neither the record nor a failure to build it can delay
or fail the answer. The builders below take arrays the route already holds (no copy of a
request body, no JSON encoding of tensors).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import Response
from starlette.background import BackgroundTask
from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

from gateway.capture import CaptureRecord, Sampler, Tensor, text_tensors
from gateway.capture_writer import CaptureMetrics, CaptureWriter, WriterOptions

if TYPE_CHECKING:
    from gateway.models import ModelInfo
    from gateway.services import Services
    from gateway.tenants import Tenant
    from gateway.v2 import InferRequest

log = logging.getLogger("gateway.capture")


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


def open_capture(svc: Services) -> Capture | None:
    """The process' capture (its writer's task started), or None when it is off."""
    settings = svc.settings
    if not settings.capture_enabled:
        return None
    if svc.redis is None:
        log.warning("GATEWAY_CAPTURE_ENABLED needs GATEWAY_REDIS_URL: capture is off")
        return None
    options = WriterOptions(
        stream=settings.capture_stream, maxlen=settings.capture_stream_maxlen,
        queue_max=settings.capture_queue_max, queue_max_bytes=settings.capture_queue_max_bytes,
        max_record_bytes=settings.capture_max_record_bytes,
        feedback_models=frozenset(settings.capture_feedback_models),
        index_ttl_s=settings.capture_feedback_ttl_s,
    )  # fmt: skip
    writer = CaptureWriter(svc.redis, options, CaptureMetrics(svc.metrics.registry))
    writer.start()
    return Capture(Sampler(settings.capture_sample_rates), writer, keep_text=settings.capture_text)


@dataclass(slots=True)
class Pending:
    """A sampled request on its way: who, which model, since when, what the model answered."""

    capture: Capture
    request_id: str
    tenant: str
    model: str
    started: float
    outputs: Any = None  # what produce() kept; None: answered from the cache
    version: str = ""  # the version that answered (produce()); "": the model's known one

    def keep(self, outputs: Any, version: str = "") -> None:
        self.outputs, self.version = outputs, version


Build = Callable[[Pending, str], CaptureRecord]  # (the request, its cache result) -> record


def begin(svc: Services, tenant: Tenant, model: str) -> Pending | None:
    """The request's capture when it is sampled (None when capture is off or it is not)."""
    capture = svc.capture
    if capture is None or not capture.sampled(tenant.name, model):
        return None
    return Pending(capture, new_request_id(), tenant.name, model, time.perf_counter())


def finish(pending: Pending, answer: Response, build: Build) -> Response:
    """``X-Request-Id`` on the answer; the record built and offered once it is sent."""
    answer.headers["X-Request-Id"] = pending.request_id
    cache = answer.headers.get("X-Cache", "bypass").lower()

    async def offer() -> None:
        try:
            record = build(pending, cache)
        except Exception:  # a record that cannot be built is dropped, counted, never raised
            log.exception("capture: the record of %s could not be built", pending.request_id)
            metrics = pending.capture.writer.metrics
            metrics.sampled.labels(model=pending.model).inc()
            metrics.dropped.labels(model=pending.model, reason="build_error").inc()
            return
        pending.capture.offer(record)

    answer.background = BackgroundTask(offer)
    return answer


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
    features: np.ndarray, scores: np.ndarray | None, entity_ids: Sequence[int],
    route: str = "/v1/score",
) -> CaptureRecord:  # fmt: skip
    """``/v1/score``: the feature rows the model saw, its scores (None: answered from the
    cache, inputs only), the entities scored."""
    n = len(features)
    tensors = [Tensor("features", "input", np.asarray(features, np.float32).reshape(n, -1))]
    if scores is not None:
        tensors.append(Tensor("score", "output", np.asarray(scores, np.float32).reshape(n, 1)))
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


# -- the routes' builders: (pending, cache) first, the route's own values by keyword ----------
def v2_record(p: Pending, cache: str, *, parsed: InferRequest, model: ModelInfo) -> CaptureRecord:
    """``/v2/models/{m}/infer``: the request's tensors and, unless from the cache, Triton's."""
    inputs = {t.name: t.array for t in parsed.inputs}
    outputs: dict[str, np.ndarray] = {}
    if p.outputs is not None:  # Triton's ModelInferResponse
        for output, raw in zip(p.outputs.outputs, p.outputs.raw_output_contents, strict=False):
            outputs[output.name] = _decode(output.datatype, tuple(output.shape), raw)
    items = parsed.batch_size() if model.max_batch_size > 0 else 1
    return tensors_record(
        p.request_id, p.tenant, p.model, p.version or model.version, started=p.started,
        cache=cache, items=items, inputs=inputs, outputs=outputs,
        keep_text=p.capture.keep_text, route=f"/v2/models/{p.model}/infer",
    )  # fmt: skip


def _decode(datatype: str, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
    if datatype == "BYTES":
        return np.asarray(deserialize_bytes_tensor(raw), dtype=object).reshape(shape)
    dtype = np.dtype(triton_to_np_dtype(datatype)).newbyteorder("<")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def v1_score_record(
    p: Pending, cache: str, *, features: np.ndarray, entity_ids: Sequence[int], version: str
) -> CaptureRecord:
    """``/v1/score``: the feature rows, the scores (unless from the cache), the entities."""
    return score_record(
        p.request_id, p.tenant, p.model, p.version or version, started=p.started, cache=cache,
        features=features, scores=p.outputs, entity_ids=entity_ids,
    )  # fmt: skip


def v1_embeddings_record(
    p: Pending, cache: str, *, texts: Sequence[str], version: str
) -> CaptureRecord:
    """``/v1/embeddings``: the texts (hashed unless kept), the vectors and token counts."""
    vectors, tokens = p.outputs if p.outputs is not None else (None, None)
    return embeddings_record(
        p.request_id, p.tenant, p.model, version, started=p.started, cache=cache, texts=texts,
        vectors=vectors, token_counts=tokens, keep_text=p.capture.keep_text,
    )  # fmt: skip
