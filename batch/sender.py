"""Requests to Triton over gRPC (``tritonclient.grpc.aio``): the model's signature, and one
batch at a time with retries and row-level refusals.

What can happen to a request, and what the sender does:

* answered: every row of the batch has its outputs;
* transient (Triton unreachable, not ready, queue full, deadline exceeded, a python-backend
  stub restarting): retried with exponential backoff (``retries``, ``retry_backoff_s``); once
  they are spent the run stops with ``TritonUnavailable`` and resumes later: never a dead letter;
* refused (INVALID_ARGUMENT, or the model's own per-request error): a row's fault. When the
  message names the row (the text pipeline's ``text[i]``) that row is refused and the rest
  resent; otherwise the batch is split in halves until the refused rows stand alone.
  Each refused row becomes a dead letter carrying Triton's message;
* anything else (the model unloaded, an unknown model): ``ModelError``, the run stops.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from batch.errors import ModelError, TritonUnavailable
from batch.inputs import Batch, Rejected, Signature, ensemble_steps, signature_from
from batch.settings import BatchSettings
from batch.shm import ShmSlot

MAX_MESSAGE = 256 * 2**20
_ROW = re.compile(r"\btext\[(\d+)\]")
_TRANSIENT_STATUS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED")
_TRANSIENT_TEXT = (
    "maximum queue size",
    "timeout expired",
    "not ready",
    "stub process",
    "is not healthy",
    "failed to connect",
    "connection refused",
    "connection reset",
    "socket closed",
)
_MODEL_GONE = ("unknown model", "is not found", "not_found", "unavailable model")


def classify(exc: InferenceServerException) -> str:
    """``transient``, ``refused`` (the rows' fault) or ``fatal``."""
    status = str(exc.status() or "").upper()
    message = str(exc.message() or exc).lower()
    if any(s in status for s in _TRANSIENT_STATUS) or any(t in message for t in _TRANSIENT_TEXT):
        return "transient"
    if "NOT_FOUND" in status or any(t in message for t in _MODEL_GONE):
        return "fatal"
    if "INVALID_ARGUMENT" in status or "INTERNAL" in status:
        return "refused"
    return "fatal"


def refused_row(message: str, rows: int) -> int | None:
    """The row a refusal names (``text[3] has 300 tokens``), when it names one in range."""
    match = _ROW.search(message)
    if match and int(match.group(1)) < rows:
        return int(match.group(1))
    return None


@dataclass
class Outcome:
    """Answered rows (``positions``, aligned with ``outputs``) and the refused ones."""

    positions: np.ndarray
    outputs: dict[str, np.ndarray]
    rejected: list[Rejected] = field(default_factory=list)
    version: str = ""

    @classmethod
    def merge(cls, parts: Sequence[Outcome]) -> Outcome:
        answered = [p for p in parts if len(p.positions)]
        if not answered:
            return cls(np.zeros(0, dtype=np.int64), {}, [r for p in parts for r in p.rejected])
        names = answered[0].outputs.keys()
        return cls(
            np.concatenate([p.positions for p in answered]),
            {n: np.concatenate([p.outputs[n] for p in answered]) for n in names},
            [r for p in parts for r in p.rejected],
            answered[0].version,
        )


def _message(exc: InferenceServerException) -> str:
    return str(exc.message() or exc)


def open_client(url: str) -> grpcaio.InferenceServerClient:
    """A channel to ``url``: ``host:port``, or ``dns:///headless-service:port`` whose every
    address gets calls in turn (a ClusterIP Service would balance connections, not calls)."""
    return grpcaio.InferenceServerClient(
        url,
        channel_args=[
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.lb_policy_name", "round_robin"),
        ],
    )


async def wait_ready(
    client: grpcaio.InferenceServerClient, url: str, model: str, timeout_s: float
) -> None:
    """Until Triton and ``model`` are ready, or ``TritonUnavailable`` after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last = "no answer"
    while True:
        try:
            if await client.is_model_ready(model, client_timeout=5.0):
                return
            last = f"model {model!r} is not ready"
            await client.get_model_metadata(model, client_timeout=5.0)  # unknown: fail at once
        except InferenceServerException as exc:
            last = _message(exc)
            if classify(exc) == "fatal":
                raise ModelError(f"Triton at {url} does not serve {model!r}: {last}") from None
        if loop.time() >= deadline:
            raise TritonUnavailable(
                f"Triton at {url} was not ready for {model!r} within {timeout_s:g} s: {last}"
            )
        await asyncio.sleep(0.5)


async def fetch_signature(
    client: grpcaio.InferenceServerClient, url: str, model: str, timeout_s: float
) -> Signature:
    """``model``'s signature from Triton's metadata and config, with the newest version of the
    model and (for an ensemble) of every model it calls."""
    await wait_ready(client, url, model, timeout_s)
    try:
        metadata: Any = await client.get_model_metadata(model, as_json=True, client_timeout=10.0)
        config: Any = await client.get_model_config(model, as_json=True, client_timeout=10.0)
        config = config.get("config", config)
        signature = signature_from(metadata, config)
        versions = dict(signature.versions)
        for step in ensemble_steps(config):
            step_meta: Any = await client.get_model_metadata(
                step, as_json=True, client_timeout=10.0
            )
            versions.update(signature_from(step_meta, {"max_batch_size": 1}).versions)
    except InferenceServerException as exc:
        message = _message(exc)
        raise ModelError(f"reading {model!r}'s metadata from Triton failed: {message}") from None
    return Signature(
        signature.model, signature.max_batch_size, signature.inputs, signature.outputs, versions
    )


async def model_exists(client: grpcaio.InferenceServerClient, model: str) -> bool:
    try:
        return bool(await client.is_model_ready(model, client_timeout=5.0))
    except InferenceServerException:
        return False


class Sender:
    """Sends batches of one model; ``slots`` concurrent callers each pass their slot index."""

    def __init__(
        self,
        client: grpcaio.InferenceServerClient,
        signature: Signature,
        settings: BatchSettings,
        shm_slots: Sequence[ShmSlot] = (),
    ) -> None:
        self.client = client
        self.signature = signature
        self.settings = settings
        self.shm_slots = list(shm_slots)
        self.datatypes = {t.name: t.datatype for t in signature.inputs}
        self.requests = 0
        self.retried = 0

    async def send(self, batch: Batch, slot: int = 0) -> Outcome:
        """The batch's outputs; rows Triton refuses come back in ``Outcome.rejected``."""
        try:
            outputs, version = await self._infer(batch, slot)
            return Outcome(batch.positions, outputs, version=version)
        except _Refused as refused:
            rows = len(batch.positions)
            if rows == 1:
                bad = Rejected(int(batch.positions[0]), "rejected", refused.message)
                return Outcome(np.zeros(0, dtype=np.int64), {}, [bad])
            named = refused_row(refused.message, rows)
            if named is not None:
                bad = Rejected(int(batch.positions[named]), "rejected", _strip(refused.message))
                rest = await self.send(batch.take(np.delete(np.arange(rows), named)), slot)
                rest.rejected.append(bad)
                return rest
            half = rows // 2
            first = await self.send(batch.take(np.arange(half)), slot)
            second = await self.send(batch.take(np.arange(half, rows)), slot)
            return Outcome.merge([first, second])

    async def _infer(self, batch: Batch, slot: int) -> tuple[dict[str, np.ndarray], str]:
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            try:
                return await self._once(batch, slot)
            except InferenceServerException as exc:
                kind = classify(exc)
                if kind == "refused":
                    raise _Refused(_message(exc)) from None
                if kind == "fatal":
                    raise ModelError(
                        f"Triton failed {self.signature.model!r}: {_message(exc)}"
                    ) from None
                if attempt + 1 == attempts:
                    raise TritonUnavailable(
                        f"{self.signature.model!r}: still failing after {attempts} attempts: "
                        f"{_message(exc)}"
                    ) from None
                self.retried += 1
                backoff = min(10.0, self.settings.retry_backoff_s * 2**attempt)
                await asyncio.sleep(backoff * (0.5 + random.random() / 2))
        raise AssertionError("unreachable")

    async def _once(self, batch: Batch, slot: int) -> tuple[dict[str, np.ndarray], str]:
        self.requests += 1
        shared = self.shm_slots[slot] if self.shm_slots else None
        if shared is not None:
            inputs, outputs = await shared.prepare(self.client, batch.tensors, self.datatypes)
        else:
            inputs = []
            for name, array in batch.tensors.items():
                tensor = grpcclient.InferInput(name, list(array.shape), self.datatypes[name])
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            outputs = [grpcclient.InferRequestedOutput(o.name) for o in self.signature.outputs]
        result = await self.client.infer(
            self.signature.model,
            inputs,
            outputs=outputs,
            client_timeout=self.settings.request_timeout_s,
        )
        if shared is not None:
            values = shared.read(result)
        else:
            values = {o.name: np.asarray(result.as_numpy(o.name)) for o in self.signature.outputs}
        return values, str(result.get_response().model_version)


class _Refused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _strip(message: str) -> str:
    """Triton's message for one row: no ensemble prefix, no index into a request the reader
    never saw (``text[8] has 402 tokens`` -> ``text has 402 tokens``)."""
    return _ROW.sub("text", re.sub(r"^in ensemble '[^']*', ", "", message))
