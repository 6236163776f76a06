"""Ray Serve 2.60 with ``@serve.batch``: the stack the seed article proposes.

``python -m benchmarks.peers.ray_serve --port P``: one replica running the served
``model.onnx`` in ONNX Runtime; requests are batched by ``@serve.batch`` (up to 32, 2 ms wait).
``max_ongoing_requests`` is raised to 256: its default of 5 caps every batch at 5. Ray is
pinned to 2 CPUs and to 127.0.0.1 (otherwise it uses the machine's non-loopback address).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import ray
from ray import serve
from starlette.requests import Request

from benchmarks.peers.common import (
    EMBED_PATH,
    OrtEmbedder,
    decode_request,
    default_onnx_path,
    encode_response,
)


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 1})
class Embedder:
    def __init__(self, onnx_path: str, max_batch_size: int, wait_s: float) -> None:
        self.model = OrtEmbedder(Path(onnx_path))
        self.embed_batch.set_max_batch_size(max_batch_size)
        self.embed_batch.set_batch_wait_timeout_s(wait_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def embed_batch(self, items: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        return list(self.model.embed(items))

    async def __call__(self, request: Request) -> dict[str, list[float]]:
        if request.method == "GET":
            return {"status": []}
        item = decode_request(await request.json())
        return encode_response(await self.embed_batch(item))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--onnx", type=Path, default=None)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    args = parser.parse_args()
    onnx = str(args.onnx or default_onnx_path())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ray.init(
        num_cpus=2,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        app = Embedder.bind(onnx, args.max_batch_size, args.batch_wait_ms / 1000)  # type: ignore[attr-defined]
        serve.run(app, route_prefix=EMBED_PATH)
        print("ready", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
