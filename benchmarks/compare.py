"""Peers side by side: the same model, inputs, load generator and machine, one system at a time.

``python -m benchmarks.compare --save benchmarks/results`` (or ``tritonstack bench peers``)

MiniLM-L6 embeddings, ``SEQ`` tokens, one item per request, a fresh random input per request.
Each repeat starts every system in turn, measures it at each concurrency with the closed-loop
generator of :mod:`benchmarks.loadgen` (aiohttp for HTTP, ``tritonclient.grpc.aio`` for gRPC)
and stops it, so machine noise spreads over all of them:

- ``naive-fastapi``: FastAPI + uvicorn calling PyTorch per request (``peers/naive_fastapi.py``);
- ``ray-serve``: Ray Serve 2.60 with ``@serve.batch`` (``peers/ray_serve.py``, ONNX Runtime);
- ``litserve``: LitServe with batching (``peers/litserve_server.py``, ONNX Runtime);
- ``triton-grpc``: our Triton (the committed ``config.pbtxt``) over gRPC;
- ``gateway-miss``: the same Triton through our gateway, v2 binary tensors, ``no-cache``;
- ``ceiling``: the same ``model.onnx`` in-process in ONNX Runtime, no server, batch 1/8/32;
- ``ceiling-fp32``: when the served variant is not fp32 (int8 on CPU), the fp32 export of the
  same weights in-process as well: the yardstick of the "served int8 vs fp32 ceiling" target.

``model.onnx`` is the variant the export chose (the latest version of ``minilm``); the Ray
Serve and LitServe peers load the same file. Before the load, a fixed sample of inputs goes to
every system and its embeddings are compared with PyTorch's: cosine >= ``MIN_COSINE`` for an
fp32-faithful model, else the served variant's own cosine budget (0.97 for int8).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import secrets
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import numpy as np
import torch
import tritonclient.grpc.aio as grpcaio
import typer
from rich.console import Console

from benchmarks import report
from benchmarks.loadgen import (
    Point,
    binary_body,
    closed_loop,
    grpc_text_inputs,
    make_point,
    random_ids,
)
from benchmarks.peers.common import (
    EMBED_PATH,
    OrtEmbedder,
    cosine,
    decode_response,
    decode_v2_binary,
    encode_request,
)
from deploy.local.harness import local_stack, unlimited_tenant
from deploy.local.process import BackgroundProcess, free_port
from deploy.local.settings import StackSettings
from export.models import minilm
from export.reader import served
from export.torch2onnx import torch_to_onnx

SEQ = 32
MIN_COSINE = 0.999
SAMPLES = 4
PEERS = ("naive-fastapi", "ray-serve", "litserve")
OURS = ("triton-grpc", "gateway-miss")
SYSTEMS = (*PEERS, *OURS)
# peers whose server needs the `bench` extra, and the module that tells whether it is there
EXTRAS = {"ray-serve": "ray", "litserve": "litserve"}


class MissingExtraError(RuntimeError):
    """A chosen peer needs a package of the ``bench`` extra that is not installed."""


_PEER_MODULES = {
    "naive-fastapi": "benchmarks.peers.naive_fastapi",
    "ray-serve": "benchmarks.peers.ray_serve",
    "litserve": "benchmarks.peers.litserve_server",
}


@dataclass
class Check:
    system: str
    min_cosine: float
    samples: int
    floor: float = MIN_COSINE

    @property
    def ok(self) -> bool:
        return self.min_cosine >= self.floor


Sender = Callable[[int], Awaitable[bool]]
Embed = Callable[[np.ndarray], Awaitable[np.ndarray]]


def sample_inputs(n: int = SAMPLES, seq: int = SEQ) -> np.ndarray:
    return random_ids(np.random.default_rng(1234), seq, batch=n)


def torch_reference(ids: np.ndarray) -> np.ndarray:
    """PyTorch embeddings of ``ids`` [n, seq] with the real weights (what every system owes)."""
    model = minilm.load().module.eval()
    t = torch.from_numpy(ids)
    with torch.inference_mode():
        return np.asarray(model(t, torch.ones_like(t), torch.zeros_like(t)).numpy())


# -- clients ---------------------------------------------------------------------------------
class HttpPeer:
    """JSON ``POST /embed`` to a peer server."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def embed(self, ids: np.ndarray) -> np.ndarray:
        async with self.session.post(EMBED_PATH, json=encode_request(ids)) as r:
            r.raise_for_status()
            return decode_response(await r.read())

    async def send(self, ids: np.ndarray) -> bool:
        async with self.session.post(EMBED_PATH, json=encode_request(ids)) as r:
            await r.read()
            return r.status == 200


class TritonGrpc:
    def __init__(self, client: grpcaio.InferenceServerClient) -> None:
        self.client = client

    async def embed(self, ids: np.ndarray) -> np.ndarray:
        tensors = grpc_text_inputs(ids.reshape(1, -1))
        result = await self.client.infer("minilm", tensors, client_timeout=30)
        return np.asarray(result.as_numpy("sentence_embedding"))[0]

    async def send(self, ids: np.ndarray) -> bool:
        try:
            await self.embed(ids)
        except Exception:
            return False
        return True


class GatewayV2:
    """The gateway's v2 REST with binary tensors; ``no-cache`` so every request reaches Triton."""

    def __init__(self, session: aiohttp.ClientSession, key: str) -> None:
        self.session = session
        self.headers = {"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"}

    async def embed(self, ids: np.ndarray) -> np.ndarray:
        body, headers = binary_body(ids.reshape(1, -1))
        async with self.session.post(
            "/v2/models/minilm/infer", data=body, headers={**self.headers, **headers}
        ) as r:
            r.raise_for_status()
            raw = await r.read()
            return decode_v2_binary(raw, int(r.headers["Inference-Header-Content-Length"]))[0]

    async def send(self, ids: np.ndarray) -> bool:
        body, headers = binary_body(ids.reshape(1, -1))
        async with self.session.post(
            "/v2/models/minilm/infer", data=body, headers={**self.headers, **headers}
        ) as r:
            await r.read()
            return r.status == 200


@dataclass(frozen=True)
class Load:
    """One repeat's load for a system: the levels, how long, and the answers it owes."""

    levels: list[int]
    repeat: int
    seconds: float
    warmup_s: float
    samples: np.ndarray
    reference: np.ndarray


async def _measure(
    client: HttpPeer | TritonGrpc | GatewayV2, system: str, load: Load
) -> tuple[list[Point], Check]:
    got = [await client.embed(s) for s in load.samples]
    worst = min(cosine(g, r) for g, r in zip(got, load.reference, strict=True))
    check = Check(system, round(worst, 6), len(got))
    rng = np.random.default_rng(secrets.randbits(64))  # inputs never repeat across runs
    points = []
    for c in load.levels:

        async def send(_: int) -> bool:
            return await client.send(random_ids(rng, SEQ))

        lat, errors, secs = await closed_loop(send, c, load.seconds, load.warmup_s)
        points.append(make_point(system, c, load.repeat, lat, errors, secs))
    return points, check


def _session(url: str, load: Load) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=max(load.levels))
    return aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(60))


def _http_ready(url: str, timeout_s: float = 2.0) -> Callable[[], bool]:
    body = json.dumps(encode_request(np.array([101, 7592, 102]))).encode()

    def ready() -> bool:
        request = urllib.request.Request(
            url + EMBED_PATH, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    return ready


def peer_process(system: str, work: Path, port: int) -> BackgroundProcess:
    """The peer server ``system`` on ``port`` (not started)."""
    url = f"http://127.0.0.1:{port}"
    return BackgroundProcess(
        [sys.executable, "-m", _PEER_MODULES[system], "--port", str(port)],
        log_path=work / f"{system}.log",
        ready=_http_ready(url),
        startup_timeout_s=180.0,
        shutdown_timeout_s=30.0,
    )


async def _run_peer(url: str, system: str, load: Load) -> tuple[list[Point], Check]:
    async with _session(url, load) as session:
        return await _measure(HttpPeer(session), system, load)


async def _run_ours(
    grpc_url: str, gateway_url: str, key: str, load: Load
) -> tuple[list[Point], list[Check]]:
    client = grpcaio.InferenceServerClient(grpc_url)
    try:
        points, check = await _measure(TritonGrpc(client), "triton-grpc", load)
    finally:
        await client.close()
    async with _session(gateway_url, load) as session:
        more, gateway_check = await _measure(GatewayV2(session, key), "gateway-miss", load)
    return points + more, [check, gateway_check]


# -- the ceiling -----------------------------------------------------------------------------
def fp32_export(work: Path) -> Path:
    """MiniLM's fp32 ONNX, exported afresh (the served file may be a reduced variant)."""
    step = torch_to_onnx(minilm.load(), work / "fp32" / "model.onnx")
    if not step.ok or step.artefact is None:
        raise RuntimeError(f"fp32 export for the fp32 ceiling failed: {step.reason}")
    return step.artefact


def ceiling(
    onnx: Path, batches: list[int], seconds: float, repeat: int, name: str = "ceiling"
) -> list[Point]:
    """In-process ONNX Runtime throughput (items/s) at each batch size: no server at all."""
    model = OrtEmbedder(onnx)
    rng = np.random.default_rng(secrets.randbits(64))
    points = []
    for b in batches:
        ids = random_ids(rng, SEQ, batch=b)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
        }
        for _ in range(3):
            model.run(feeds)
        lat: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            feeds["input_ids"] = random_ids(rng, SEQ, batch=b)
            t0 = time.perf_counter()
            model.run(feeds)
            lat.append(time.perf_counter() - t0)
        secs = time.perf_counter() - start
        point = make_point(name, b, repeat, lat, 0, secs)
        point.throughput = round(len(lat) * b / secs, 1)  # items/s; concurrency = batch size
        points.append(point)
    return points


def ceiling_check(onnx: Path, samples: np.ndarray, reference: np.ndarray) -> Check:
    model = OrtEmbedder(onnx)
    got = model.run(
        {
            "input_ids": samples,
            "attention_mask": np.ones_like(samples),
            "token_type_ids": np.zeros_like(samples),
        }
    )
    return Check(
        "ceiling",
        round(min(cosine(g, r) for g, r in zip(got, reference, strict=True)), 6),
        len(got),
    )


@dataclass
class Run:
    points: list[Point]
    checks: list[Check]
    commands: list[str]
    variant: str = "fp32"


def run(
    systems: list[str],
    levels: list[int],
    batches: list[int],
    seconds: float,
    repeats: int,
    settings: StackSettings,
    warmup_s: float = 2.0,
    console: Console | None = None,
) -> Run:
    """Measure ``systems`` and the ceiling, ``repeats`` times, interleaved; servers stopped."""
    console = console or Console()
    now = served(settings.model_repository, "minilm")
    onnx, variant, floor = now.artefact, now.variant, now.cosine_floor(MIN_COSINE)
    key, tenants = unlimited_tenant()
    if not onnx.is_file():
        raise FileNotFoundError(f"{onnx} is missing: run `tritonstack export` first")
    console.print(f"served variant: {variant} ({onnx}); answers owe cosine >= {floor}")
    samples = sample_inputs()
    reference = torch_reference(samples)
    points: list[Point] = []
    checks: list[Check] = [ceiling_check(onnx, samples, reference)]
    commands: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tritonstack-peers-") as tmp:
        work = Path(tmp)
        fp32 = fp32_export(work) if batches and variant != "fp32" else None

        def ceilings(repeat: int) -> list[Point]:
            found = ceiling(onnx, batches, seconds, repeat)
            if fp32 is not None:
                found += ceiling(fp32, batches, seconds, repeat, name="ceiling-fp32")
            return found

        for repeat in range(repeats):
            if batches and repeat % 2 == 0:
                points += ceilings(repeat)
            for system in systems:
                if system == "gateway-miss" and "triton-grpc" in systems:
                    continue  # measured with triton-grpc (one start of the stack)
                console.print(f"repeat {repeat}: {system}", style="bold", markup=False)
                load = Load(levels, repeat, seconds, warmup_s, samples, reference)
                started = time.perf_counter()
                if system in PEERS:
                    port = free_port()
                    process = peer_process(system, work, port)
                    commands.append(" ".join(process.command[1:]).replace(str(port), "PORT"))
                    with process:
                        console.print(f"  up in {time.perf_counter() - started:.1f} s")
                        p, c = asyncio.run(_run_peer(f"http://127.0.0.1:{port}", system, load))
                    cs = [c]
                else:  # our stack: Triton gRPC and the gateway (cache miss), one start
                    stack = local_stack(
                        work / f"stack-{repeat}", settings, models=["minilm"], tenants=tenants
                    )
                    with stack as ours:
                        console.print(f"  up in {time.perf_counter() - started:.1f} s")
                        grpc_url, gateway_url = ours.triton.grpc_url, ours.gateway_url
                        p, cs = asyncio.run(_run_ours(grpc_url, gateway_url, key, load))
                for point in p:
                    console.print(
                        f"  {point.target} c={point.concurrency}: {point.throughput} req/s, "
                        f"p50 {point.p50_ms} ms, p99 {point.p99_ms} ms, errors {point.errors}",
                        highlight=False,
                    )
                points += p
                checks += cs
            if batches and repeat % 2 == 1:
                points += ceilings(repeat)
    for check in checks:
        check.floor = floor
    return Run(points, checks, sorted(set(commands)), variant)


def main(
    concurrency: str = "1,8,32",
    batches: str = "1,8,32",
    systems: str = ",".join(SYSTEMS),
    seconds: float = 6.0,
    repeats: int = 2,
    save: Path | None = None,
    console: Console | None = None,
) -> Run:
    """Run, print the table, and with ``save`` write JSON, markdown and plots; fails on a wrong
    answer from any system."""
    console = console or Console()
    levels = [int(c) for c in concurrency.split(",")]
    sizes = [int(b) for b in batches.split(",") if b]
    chosen = [s for s in systems.split(",") if s]
    unknown = set(chosen) - set(SYSTEMS)
    if unknown:
        raise ValueError(f"unknown systems {sorted(unknown)}; known: {', '.join(SYSTEMS)}")
    missing = [s for s in chosen if s in EXTRAS and importlib.util.find_spec(EXTRAS[s]) is None]
    if missing:  # at once, not after a server failed to start
        raise MissingExtraError(
            f"{', '.join(missing)} need {', '.join(EXTRAS[s] for s in missing)}, "
            "which is not installed"
        )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on a kill too
    result = run(chosen, levels, sizes, seconds, repeats, StackSettings(), console=console)
    command = (
        f"tritonstack bench peers --concurrency {concurrency} --batches {batches} "
        f"--systems {systems} --seconds {seconds:g} --repeats {repeats}"
    )
    rows = report.summarize(result.points)
    checks = [{**asdict(c), "ok": c.ok} for c in result.checks]
    console.print(
        report.to_markdown(rows, checks, command=command, variant=result.variant),
        markup=False,
        highlight=False,
    )
    if save is not None:
        for path in report.save(
            save,
            result.points,
            checks,
            command=command,
            peer_commands=result.commands,
            variant=result.variant,
        ):
            console.print(f"wrote {path}")
    bad = [c for c in result.checks if not c.ok]
    if bad:
        raise RuntimeError(f"wrong answers (cosine below the served variant's floor): {bad}")
    return result


if __name__ == "__main__":
    typer.run(main)
