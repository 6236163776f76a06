"""The floor of any Python forwarder in front of Triton: what the gateway is measured against.

``FLOOR_API_KEY=KEY python -m benchmarks.floor --port P --triton-grpc-url HOST:PORT``

Raw ASGI on uvicorn (httptools, the asyncio loop, no access log: as the gateway runs), one API
key check, the standard library's ``json``, ``tritonclient.grpc.aio``, no Redis, no metrics, no
validation beyond what the conversion itself needs. It serves one route, the Open Inference
Protocol's ``POST /v2/models/{name}/infer`` with JSON tensors, and answers JSON. Everything the
gateway does on top of this (tenants, rate limits, the cache, validation, metrics, error
mapping) is the gateway's own cost; anything it does faster (a faster JSON encoder, protobuf
built without ``tritonclient``'s wrappers) shows as a gain over this floor.

Written naively on purpose, the way a first forwarder is written: it is the floor, not a rival.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcaio
import uvicorn
from tritonclient.grpc import InferInput
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from deploy.local.gateway import http_ok
from deploy.local.process import BackgroundProcess, free_port

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
PREFIX, SUFFIX = "/v2/models/", "/infer"


class Floor:
    def __init__(self, triton_grpc_url: str, key: str) -> None:
        self.url = triton_grpc_url
        self.expected = f"Bearer {key}".encode()
        self.client: grpcaio.InferenceServerClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        path: str = scope["path"]
        if path == "/healthz":
            await _answer(send, 200, {"status": "ok"})
            return
        if scope["method"] != "POST" or not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
            await _answer(send, 404, {"error": "not found"})
            return
        auth = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(auth, self.expected):  # the one key check
            await _answer(send, 401, {"error": "invalid API key"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        model = path[len(PREFIX) : -len(SUFFIX)]
        try:
            request = json.loads(body)
            inputs = []
            for item in request["inputs"]:
                dtype = triton_to_np_dtype(item["datatype"])
                array = np.array(item["data"], dtype=dtype).reshape(item["shape"])
                tensor = InferInput(item["name"], list(array.shape), item["datatype"])
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
        except (ValueError, KeyError, TypeError) as exc:
            await _answer(send, 400, {"error": str(exc)})
            return
        assert self.client is not None
        try:
            result = await self.client.infer(model, inputs, client_timeout=30)
        except InferenceServerException as exc:
            await _answer(send, 502, {"error": str(exc.message())})
            return
        response = result.get_response()
        outputs = []
        for output in response.outputs:
            array = result.as_numpy(output.name)
            outputs.append(
                {
                    "name": output.name,
                    "datatype": output.datatype,
                    "shape": list(array.shape),
                    "data": array.ravel().tolist(),
                }
            )
        answer = {
            "model_name": response.model_name,
            "model_version": response.model_version,
            "outputs": outputs,
        }
        await _answer(send, 200, answer)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.client = grpcaio.InferenceServerClient(self.url)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _answer(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class FloorProcess(BackgroundProcess):
    """``python -m benchmarks.floor`` on a free loopback port, in front of ``triton_grpc_url``."""

    name = "floor"

    def __init__(self, work_dir: Path, triton_grpc_url: str, key: str) -> None:
        self.port = free_port()
        super().__init__(
            [sys.executable, "-m", "benchmarks.floor", "--port", str(self.port),
             "--triton-grpc-url", triton_grpc_url],
            log_path=work_dir / "floor.log",
            env={**os.environ, "FLOOR_API_KEY": key},  # not on the command line
            ready=lambda: http_ok(f"{self.url}/healthz"),
            cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--triton-grpc-url", required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        Floor(args.triton_grpc_url, os.environ["FLOOR_API_KEY"]),
        host=args.host,
        port=args.port,
        loop="asyncio",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
