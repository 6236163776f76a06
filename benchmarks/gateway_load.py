"""The load of ``benchmarks.gateway_overhead``: its targets, their requests and CPU readings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import tritonclient.grpc.aio as grpcaio

from benchmarks.floor import FloorProcess
from benchmarks.loadgen import (
    Window,
    binary_body,
    grpc_string_input,
    grpc_text_inputs,
    measured_loop,
    random_ids,
    text_arrays,
)
from benchmarks.profiling import cpu_seconds
from deploy.local.harness import LocalStack

SEQ = 16  # tokens per request, like the perf_analyzer sweep
WORDS = (
    "serving", "model", "triton", "gateway", "cache", "batch", "queue", "latency", "tensor",
)  # fmt: skip
TARGETS = (
    "triton-grpc",
    "triton-grpc-text",
    "floor-v2-json",
    "gateway-v2-json-miss",
    "gateway-v2-json-hit",
    "gateway-v2-binary-miss",
    "gateway-embeddings-miss",
)
INFER = "/v2/models/minilm/infer"


@dataclass(frozen=True)
class Servers:
    triton_grpc_url: str
    gateway_url: str
    metrics_url: str
    floor_url: str
    key: str
    gateway_pid: int
    redis_pid: int
    floor_pid: int

    @classmethod
    def of(cls, stack: LocalStack, floor: FloorProcess, key: str) -> Servers:
        assert stack.gateway is not None and stack.redis is not None
        pids = (stack.gateway.pid, stack.redis.pid, floor.pid)
        assert None not in pids
        gateway_pid, redis_pid, floor_pid = (int(p) for p in pids if p is not None)
        return cls(
            stack.triton.grpc_url, stack.gateway.url, stack.gateway.metrics_url, floor.url,
            key, gateway_pid, redis_pid, floor_pid,
        )  # fmt: skip

    def pids(self, target: str) -> dict[str, int]:
        """The processes whose CPU a target's requests cost (the load generator's excluded)."""
        if target.startswith("gateway"):
            return {"gateway": self.gateway_pid, "redis": self.redis_pid}
        if target.startswith("floor"):
            return {"floor": self.floor_pid}
        return {}


def sentence(rng: np.random.Generator, seed: int, i: int) -> str:
    """A fresh sentence of ten words plus a unique suffix (never a cache hit): 23-27 tokens
    with MiniLM's tokenizer, more than the ``SEQ`` ids of the ``triton-grpc`` target."""
    return " ".join(rng.choice(WORDS, size=10)) + f" {seed}-{i}"


def json_body(ids: np.ndarray) -> bytes:
    """A KServe v2 infer request with JSON tensors (the encoder's three inputs)."""
    inputs = [
        {"name": n, "datatype": "INT64", "shape": list(a.shape), "data": a.ravel().tolist()}
        for n, a in text_arrays(ids).items()
    ]
    return json.dumps({"inputs": inputs}).encode()


async def run_target(target: str, servers: Servers, c: int, seconds: float, seed: int) -> Window:
    """One point of ``target`` at concurrency ``c``: the window, with CPU seconds read as it
    opened and closed."""
    rng = np.random.default_rng(seed)
    pids = servers.pids(target)

    def snapshot() -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in pids.items()}

    if target.startswith("triton-grpc"):
        client = grpcaio.InferenceServerClient(servers.triton_grpc_url)

        async def send_grpc(i: int) -> bool:
            try:
                if target == "triton-grpc-text":
                    text = [sentence(rng, seed, i)]
                    await client.infer("minilm_text", grpc_string_input(text), client_timeout=30)
                else:
                    ids = random_ids(rng, SEQ)
                    await client.infer("minilm", grpc_text_inputs(ids), client_timeout=30)
            except Exception:
                return False
            return True

        try:
            return await measured_loop(send_grpc, c, seconds, 1.0, snapshot)
        finally:
            await client.close()

    base = servers.floor_url if target.startswith("floor") else servers.gateway_url
    auth = {"Authorization": f"Bearer {servers.key}"}
    json_headers = {**auth, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=c)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as http:
        fixed = json_body(random_ids(rng, SEQ))

        async def post(path: str, **kwargs: Any) -> bool:
            async with http.post(path, **kwargs) as r:
                await r.read()
                return r.status == 200

        async def send_http(i: int) -> bool:
            if target in ("floor-v2-json", "gateway-v2-json-miss"):
                body = json_body(random_ids(rng, SEQ))
                return await post(INFER, data=body, headers=json_headers)
            if target == "gateway-v2-json-hit":
                return await post(INFER, data=fixed, headers=json_headers)
            if target == "gateway-v2-binary-miss":
                body, headers = binary_body(random_ids(rng, SEQ))
                return await post(INFER, data=body, headers={**auth, **headers})
            text = sentence(rng, seed, i)
            payload = json.dumps({"input": text, "model": "minilm"}).encode()
            return await post("/v1/embeddings", data=payload, headers=json_headers)

        return await measured_loop(send_http, c, seconds, 1.0, snapshot)
