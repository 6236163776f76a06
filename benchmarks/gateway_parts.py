"""The parts of a gateway request, each timed alone: what the gateway's hot-path choices rest on.

``python -m benchmarks.gateway_parts --save benchmarks/results``

CPU time per call (``time.process_time``), in-process, one event loop:

- **routing**: the same inference route as a FastAPI route with the gateway's dependencies, as a
  FastAPI route taking only the ``Request``, as the gateway's ``LeanRoute`` (FastAPI's analysis,
  a compiled resolver per request) and as a plain Starlette route, each app called through ASGI
  with the same request;
- **Redis**: the rate-limit script with the cache lookup (one pipeline) and the cache fill
  (``SET EX``) through redis-py's asyncio client and through ``gateway.redis_pipe.RedisPipe``,
  against a real redis-server, one and 32 callers at a time;
- **gRPC**: one MiniLM inference (16 token ids) through ``tritonclient.grpc.aio`` (what the
  floor does) and through ``gateway.triton.TritonGrpc``, against a real Triton, one and 32
  callers at a time (the call's CPU in this process: building, sending, waiting, decoding);
- **JSON**: a v2 answer with a 384-float output encoded by the standard library (what the
  floor forwarder does) and by orjson (what the gateway does).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import orjson
import tritonclient.grpc.aio as grpcaio
import typer
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from redis.asyncio import Redis
from rich.console import Console
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Message

from benchmarks import report
from benchmarks.loadgen import grpc_text_inputs, random_ids, text_arrays
from deploy.local.harness import triton_server
from deploy.local.redis import RedisServer
from deploy.local.settings import StackSettings
from gateway.ratelimit import RedisRateLimiter
from gateway.redis_pipe import RedisPipe
from gateway.routing import LeanRoute, add_routes
from gateway.triton import RawInput, TritonGrpc

PATH = "/v2/models/minilm/infer"


async def _one(request: Request) -> int:
    return 1


async def _model(model_name: str, request: Request, a: Annotated[int, Depends(_one)]) -> str:
    return model_name


ModelDep = Annotated[str, Depends(_model)]
OneDep = Annotated[int, Depends(_one)]


def _apps() -> dict[str, ASGIApp]:
    async def with_deps(model: ModelDep, request: Request, a: OneDep) -> Response:
        return Response(await request.body())

    async def request_only(model_name: str, request: Request) -> Response:
        return Response(await request.body())

    async def plain(request: Request) -> Response:
        return Response(await request.body())

    apps: dict[str, ASGIApp] = {}
    for name, endpoint, route_class in (
        ("FastAPI, the gateway's dependencies", with_deps, None),
        ("FastAPI, Request only", request_only, None),
        ("LeanRoute, the gateway's dependencies", with_deps, LeanRoute),
    ):
        app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})
        router = APIRouter(prefix="/v2", route_class=route_class or APIRoute)
        router.add_api_route("/models/{model_name}/infer", endpoint, methods=["POST"])
        if route_class is None:
            app.include_router(router)  # FastAPI's own routes
        else:
            add_routes(app, router)
        apps[name] = app
    apps["Starlette"] = Starlette(
        routes=[Route(PATH.replace("minilm", "{m}"), plain, methods=["POST"])]
    )
    return apps


async def _asgi(app: ASGIApp) -> None:
    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Message) -> None:
        return None

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"x")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
    }
    await app(scope, receive, send)


async def _cpu_us(call: Callable[[int], Awaitable[Any]], n: int, concurrency: int = 1) -> float:
    for i in range(min(200, n)):
        await call(i)
    started = time.process_time()

    async def worker(k: int) -> None:
        for i in range(k, n, concurrency):
            await call(i)

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return round(1e6 * (time.process_time() - started) / n, 1)


async def _routing(n: int) -> dict[str, float]:
    found: dict[str, float] = {}
    for name, app in _apps().items():

        async def call(_: int, app: ASGIApp = app) -> None:
            await _asgi(app)

        found[name] = await _cpu_us(call, n)
    return found


async def _redis(url: str, n: int) -> dict[str, float]:
    client = Redis.from_url(url, socket_timeout=1.0)
    pipe = RedisPipe.of(client)
    assert pipe is not None
    via = {"redis-py": RedisRateLimiter(client), "RedisPipe": RedisRateLimiter(client, pipe=pipe)}
    found: dict[str, float] = {}
    for c in (1, 32):
        for name, limiter in via.items():

            async def lookup(i: int, limiter: RedisRateLimiter = limiter) -> Any:
                return await limiter.hit_and_get("bench", 1e9, 10**9, f"bench:rc:{i}")

            found[f"rate limit + lookup, {name}, c={c}"] = await _cpu_us(lookup, n, c)

        async def fill_py(i: int) -> Any:
            return await client.set(f"bench:rc:{i}", b"x" * 3000, ex=30)

        async def fill_pipe(i: int) -> Any:
            return await pipe.execute(("SET", f"bench:rc:{i}", b"x" * 3000, "EX", 30))

        found[f"cache fill, redis-py, c={c}"] = await _cpu_us(fill_py, n, c)
        found[f"cache fill, RedisPipe, c={c}"] = await _cpu_us(fill_pipe, n, c)
    await pipe.close()
    await client.aclose()
    return found


async def _grpc(url: str, n: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    stock, ours = grpcaio.InferenceServerClient(url), TritonGrpc(url)

    async def via_stock(_: int) -> None:
        await stock.infer("minilm", grpc_text_inputs(random_ids(rng, 16)), client_timeout=30)

    async def via_ours(_: int) -> None:
        arrays = text_arrays(random_ids(rng, 16))
        raw = [RawInput(k, "INT64", a.shape, a.astype("<i8").tobytes()) for k, a in arrays.items()]
        await ours.infer("minilm", raw, client_timeout=30)

    found: dict[str, float] = {}
    for c in (1, 32):
        for name, call in (("tritonclient.grpc.aio", via_stock), ("TritonGrpc", via_ours)):
            found[f"MiniLM inference, {name}, c={c}"] = await _cpu_us(call, n // 4, c)
    await stock.close()
    await ours.close()
    return found


def _json(n: int) -> dict[str, float]:
    vector = np.random.default_rng(0).random(384, dtype=np.float32)
    answer = {
        "model_name": "minilm",
        "model_version": "1",
        "outputs": [
            {"name": "sentence_embedding", "datatype": "FP32", "shape": [1, 384], "data": None}
        ],
    }

    def stdlib() -> bytes:
        answer["outputs"][0]["data"] = vector.tolist()  # type: ignore[index]
        return json.dumps(answer).encode()

    def fast() -> bytes:
        answer["outputs"][0]["data"] = vector.astype(np.float64)  # type: ignore[index]
        return orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)

    return {
        "a v2 answer, 384 floats, json (stdlib)": round(
            1e6 * timeit.timeit(stdlib, number=n) / n, 1
        ),
        "a v2 answer, 384 floats, orjson": round(1e6 * timeit.timeit(fast, number=n) / n, 1),
    }


def main(
    calls: int = typer.Option(5000, help="calls per part"),
    save: Path | None = typer.Option(None, help="directory for <date>-vm-gateway-parts.{json,md}"),
) -> None:
    console = Console(width=160)
    results = {"routing": asyncio.run(_routing(calls))}
    with (
        tempfile.TemporaryDirectory(prefix="tritonstack-parts-") as tmp,
        RedisServer(Path(tmp)) as redis,
    ):
        results["redis"] = asyncio.run(_redis(redis.url, calls))
    with (
        tempfile.TemporaryDirectory(prefix="tritonstack-parts-") as tmp,
        triton_server(StackSettings(), Path(tmp), ["minilm"]) as triton,
    ):
        results["grpc"] = asyncio.run(_grpc(triton.grpc_url, calls))
    results["json"] = _json(calls)
    for part, rows in results.items():
        for name, us in rows.items():
            console.print(f"{part:8s} {name:48s} {us:8.1f} us CPU per call")
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        stem = save / f"{date.today().isoformat()}-vm-gateway-parts"
        machine = report.machine("measured while the machine was shared with other work")
        command = f"python -m benchmarks.gateway_parts --calls {calls} --save {save}"
        stem.with_suffix(".json").write_text(
            json.dumps({"machine": machine, "command": command, "results": results}, indent=2)
            + "\n"
        )
        lines = [
            "# The parts of a gateway request, timed alone",
            "",
            f"Machine: {machine}.",
            "",
            f"Command: `{command}`. CPU microseconds per call (process time).",
            "",
            "| part | what | us CPU per call |",
            "|---|---|---|",
        ]
        lines += [
            f"| {part} | {name} | {us} |"
            for part, rows in results.items()
            for name, us in rows.items()
        ]
        stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
        console.print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    typer.run(main)
