"""The closed-loop async load generator shared by the benchmarks.

N workers each send their next request as soon as the last one answered; the first
``warmup_s`` seconds are not measured. The sender is any ``async (i) -> ok`` callable, so one
loop drives gRPC (``tritonclient.grpc.aio``) and HTTP (aiohttp) with identical statistics.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from tritonclient import grpc as grpcclient

VOCAB = (1000, 29000)  # ordinary word-piece ids
CLS, SEP = 101, 102


@dataclass
class Point:
    target: str
    concurrency: int
    repeat: int
    requests: int
    errors: int
    seconds: float
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def random_ids(rng: np.random.Generator, seq: int, batch: int = 1) -> np.ndarray:
    """Fresh token ids ``[batch, seq]`` framed by [CLS] ... [SEP] (never a cache hit)."""
    ids = rng.integers(*VOCAB, size=(batch, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = CLS, SEP
    return ids


def text_arrays(ids: np.ndarray) -> dict[str, np.ndarray]:
    """The encoder's three inputs for unpadded token ids."""
    return {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }


def grpc_text_inputs(ids: np.ndarray) -> list[grpcclient.InferInput]:
    """The encoder's inputs as ``tritonclient.grpc`` tensors (INT64)."""
    tensors = []
    for name, array in text_arrays(ids).items():
        tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def grpc_string_input(texts: list[str], name: str = "text") -> list[grpcclient.InferInput]:
    """Raw strings as one ``tritonclient.grpc`` BYTES tensor ``[n, 1]`` (a text pipeline's
    input)."""
    array = np.array([t.encode() for t in texts], dtype=np.object_).reshape(-1, 1)
    tensor = grpcclient.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return [tensor]


def binary_body(ids: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 infer request with binary tensors (what ``tritonclient.http`` sends)."""
    arrays = text_arrays(ids)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "datatype": "INT64",
                    "shape": list(a.shape),
                    "parameters": {"binary_data_size": a.nbytes},
                }
                for n, a in arrays.items()
            ],
            "outputs": [{"name": "sentence_embedding", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = head + b"".join(a.tobytes() for a in arrays.values())
    return body, {"Inference-Header-Content-Length": str(len(head))}


@dataclass
class Window:
    """What a closed loop measured, and ``snapshot()`` taken when its window opened and closed
    (e.g. a server's CPU seconds), with the requests completed in between."""

    latencies: list[float]
    errors: int
    seconds: float
    completed: int = 0
    opened: object = None
    closed: object = None


async def measured_loop(
    send: Callable[[int], Awaitable[bool]],
    concurrency: int,
    seconds: float,
    warmup_s: float,
    snapshot: Callable[[], object] | None = None,
) -> Window:
    """Latencies (s) of the requests started in the measured window, errors, measured seconds;
    ``snapshot()`` read as the window opens and closes, and the requests completed between."""
    result = Window([], 0, 0.0)
    counter = 0
    done_total = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + seconds
    window_done = 0

    async def worker() -> None:
        nonlocal counter, done_total
        while (now := time.perf_counter()) < stop_at:
            counter += 1
            ok = await send(counter)
            done = time.perf_counter()
            done_total += 1
            if now >= measure_from:
                result.latencies.append(done - now)
                result.errors += not ok

    async def window() -> None:
        nonlocal window_done
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        opened_at = done_total
        result.opened = snapshot() if snapshot else None
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        result.closed = snapshot() if snapshot else None
        window_done = done_total - opened_at

    await asyncio.gather(window(), *(worker() for _ in range(concurrency)))
    result.completed = window_done
    result.seconds = time.perf_counter() - measure_from
    return result


async def closed_loop(
    send: Callable[[int], Awaitable[bool]], concurrency: int, seconds: float, warmup_s: float
) -> tuple[list[float], int, float]:
    """Latencies (s) of the requests started in the measured window, errors, measured seconds."""
    found = await measured_loop(send, concurrency, seconds, warmup_s)
    return found.latencies, found.errors, found.seconds


def make_point(target: str, c: int, r: int, lat: list[float], errors: int, secs: float) -> Point:
    ms = np.array(lat) * 1000 if lat else np.array([float("nan")])
    return Point(
        target,
        c,
        r,
        len(lat),
        errors,
        round(secs, 2),
        round(len(lat) / secs, 1),
        *(round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)),
    )
