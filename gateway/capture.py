"""The inference capture record: what the gateway saw of one request, as a Redis Stream entry.

A sampled request becomes one :class:`CaptureRecord` (request id, time, tenant, model, the
version that served it, route, latency, cache result) holding its tensors, each ``[items, ...]``
(one row per item: a scored driver, an embedded text). Text never leaves the gateway unless
``keep_text`` asks for it: :func:`text_tensors` keeps a hash, the length and the token count.
A client's outcome for an answered request is a :class:`FeedbackRecord` on the same stream.

The entry (stdlib + numpy only: ``monitoring`` decodes it without the gateway's web stack):

* ``h``: JSON header (``kind``, ``id``, ``t``, ``tenant``, ``model``, ``version``, ...); for an
  inference also ``tensors``: ``[name, role, numpy dtype string, shape]`` per tensor;
* ``t0``, ``t1``, ...: each tensor's bytes, C order (a string tensor: a JSON list of strings).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Role = Literal["input", "output"]
STRING = "str"  # the dtype string of a tensor of strings (text hashes, kept text)
INDEX_PREFIX = "tritonstack:capture:req:"  # request id -> who may send feedback for it


class RecordError(ValueError):
    """A stream entry that is not a capture record this code can read."""


@dataclass(frozen=True, slots=True)
class Tensor:
    """One tensor of a request, ``[items, ...]``: numbers, or strings (``dtype == STRING``)."""

    name: str
    role: Role
    array: np.ndarray | Sequence[str]

    @property
    def dtype(self) -> str:
        return self.array.dtype.str if isinstance(self.array, np.ndarray) else STRING


@dataclass(slots=True)
class CaptureRecord:
    request_id: str
    time_unix: float
    tenant: str
    model: str
    version: str
    route: str
    latency_ms: float
    items: int
    tensors: tuple[Tensor, ...] = ()
    cache: str = "miss"
    entity_ids: tuple[int, ...] = ()  # /v1/score: the entity of each item (feedback names them)
    kind: str = field(default="inference", init=False)

    def fields(self) -> dict[bytes, bytes]:
        """The stream entry: the header and one field per tensor."""
        entry: dict[bytes, bytes] = {}
        meta = []
        for i, tensor in enumerate(self.tensors):
            if isinstance(tensor.array, np.ndarray):
                array = np.ascontiguousarray(tensor.array)
                entry[f"t{i}".encode()] = array.tobytes()
                meta.append([tensor.name, tensor.role, array.dtype.str, list(array.shape)])
            else:
                entry[f"t{i}".encode()] = json.dumps(list(tensor.array)).encode()
                meta.append([tensor.name, tensor.role, STRING, [len(tensor.array)]])
        header = {
            "kind": self.kind, "id": self.request_id, "t": self.time_unix, "tenant": self.tenant,
            "model": self.model, "version": self.version, "route": self.route,
            "latency_ms": self.latency_ms, "items": self.items, "cache": self.cache,
            "entities": list(self.entity_ids), "tensors": meta,
        }  # fmt: skip
        entry[b"h"] = json.dumps(header, separators=(",", ":")).encode()
        return entry

    def size(self) -> int:
        """Bytes of its tensors (what bounds a record: the header is small)."""
        return sum(
            t.array.nbytes if isinstance(t.array, np.ndarray) else sum(map(len, t.array))
            for t in self.tensors
        )


@dataclass(slots=True)
class FeedbackRecord:
    """The outcome of item ``item`` of an answered request (driver_ranker: accepted or not)."""

    request_id: str
    time_unix: float
    tenant: str
    model: str
    version: str
    item: int
    outcome: float
    kind: str = field(default="feedback", init=False)

    def fields(self) -> dict[bytes, bytes]:
        header = {
            "kind": self.kind, "id": self.request_id, "t": self.time_unix, "tenant": self.tenant,
            "model": self.model, "version": self.version, "item": self.item,
            "outcome": self.outcome,
        }  # fmt: skip
        return {b"h": json.dumps(header, separators=(",", ":")).encode()}


Record = CaptureRecord | FeedbackRecord


def decode(entry: Mapping[bytes, bytes]) -> Record:
    """A stream entry back into its record; :class:`RecordError` when it is not one."""
    try:
        h = json.loads(entry[b"h"])
        common = (str(h["id"]), float(h["t"]), str(h["tenant"]), str(h["model"]), str(h["version"]))
        if h["kind"] == "feedback":
            return FeedbackRecord(*common, item=int(h["item"]), outcome=float(h["outcome"]))
        if h["kind"] != "inference":
            raise RecordError(f"unknown record kind {h['kind']!r}")
        tensors = []
        for i, (name, role, dtype, shape) in enumerate(h["tensors"]):
            blob = entry[f"t{i}".encode()]
            if dtype == STRING:
                tensors.append(Tensor(name, role, [str(s) for s in json.loads(blob)]))
            else:
                array = np.frombuffer(blob, dtype=np.dtype(dtype)).reshape(shape)
                tensors.append(Tensor(name, role, array))
        return CaptureRecord(
            *common, route=str(h["route"]), latency_ms=float(h["latency_ms"]),
            items=int(h["items"]), tensors=tuple(tensors), cache=str(h["cache"]),
            entity_ids=tuple(int(e) for e in h.get("entities", ())),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        if isinstance(exc, RecordError):
            raise
        raise RecordError(f"not a capture record: {type(exc).__name__}: {exc}") from None


def text_hash(text: str) -> str:
    """A 128-bit BLAKE2b digest of a text (hex): joins and counts repeats, reveals nothing."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def text_tensors(
    texts: Sequence[str], token_counts: np.ndarray | None, *, keep_text: bool
) -> list[Tensor]:
    """The input tensors of texts: hash, characters, tokens (when known), the text if kept."""
    tensors = [
        Tensor("text_sha", "input", [text_hash(t) for t in texts]),
        Tensor("text_chars", "input", np.fromiter(map(len, texts), np.int32, len(texts))),
    ]
    if token_counts is not None:
        tensors.append(Tensor("token_count", "input", np.asarray(token_counts, np.int32)))
    if keep_text:
        tensors.append(Tensor("text", "input", list(texts)))
    return tensors


def index_key(request_id: str) -> str:
    return INDEX_PREFIX + request_id


def index_value(record: CaptureRecord) -> bytes:
    """What feedback needs to know of a captured request: who, which model and version, items."""
    value = [record.tenant, record.model, record.version, record.items, list(record.entity_ids)]
    return json.dumps(value, separators=(",", ":")).encode()


def parse_index_value(blob: bytes) -> tuple[str, str, str, int, list[int]]:
    tenant, model, version, items, entities = json.loads(blob)
    return str(tenant), str(model), str(version), int(items), [int(e) for e in entities]


class Sampler:
    """Per model and tenant capture rates: ``tenant/model``, then ``model``, ``tenant/*``, ``*``.

    The most specific key wins; a pair is looked up once and remembered (the rates are fixed for
    the process' life, the pairs are bounded by the tenants and the models Triton serves).
    """

    def __init__(self, rates: Mapping[str, float], rng: random.Random | None = None) -> None:
        for key, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"capture rate of {key!r} must be within [0, 1], got {rate}")
        self.rates = dict(rates)
        self._known: dict[tuple[str, str], float] = {}
        self._random = (rng or random.Random()).random

    def rate(self, tenant: str, model: str) -> float:
        found = self._known.get((tenant, model))
        if found is None:
            rates = self.rates
            for key in (f"{tenant}/{model}", model, f"{tenant}/*", "*"):
                if key in rates:
                    found = rates[key]
                    break
            else:
                found = 0.0
            self._known[(tenant, model)] = found
        return found

    def sampled(self, tenant: str, model: str) -> bool:
        rate = self.rate(tenant, model)
        return rate >= 1.0 or (rate > 0.0 and self._random() < rate)


def header_of(entry: Mapping[bytes, bytes]) -> dict[str, Any]:
    """The JSON header alone (cheap: tensors stay bytes)."""
    try:
        header: dict[str, Any] = json.loads(entry[b"h"])
    except (KeyError, ValueError) as exc:
        raise RecordError(f"not a capture record: {exc}") from None
    return header
