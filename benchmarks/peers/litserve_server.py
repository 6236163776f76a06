"""LitServe with batching: ``python -m benchmarks.peers.litserve_server --port P``.

One worker running the served ``model.onnx`` in ONNX Runtime; LitServe batches up to 32
requests, waiting at most 2 ms for a batch to fill.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import litserve as ls
import numpy as np

from benchmarks.peers.common import (
    EMBED_PATH,
    OrtEmbedder,
    decode_request,
    default_onnx_path,
    encode_response,
)


class EmbedAPI(ls.LitAPI):
    def __init__(self, onnx_path: Path, max_batch_size: int, wait_s: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=wait_s, api_path=EMBED_PATH)
        self.onnx_path = onnx_path

    def setup(self, device: str) -> None:
        self.model = OrtEmbedder(self.onnx_path)

    def decode_request(self, request):  # no annotation: LitServe passes the JSON body
        return decode_request(request)

    def batch(self, inputs: list[tuple[np.ndarray, np.ndarray]]) -> list:
        return inputs

    def predict(self, x: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        return list(self.model.embed(x))

    def unbatch(self, output: list[np.ndarray]) -> list[np.ndarray]:
        return output

    def encode_response(self, output: np.ndarray) -> dict[str, list[float]]:
        return encode_response(output)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--onnx", type=Path, default=None)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    args = parser.parse_args()
    api = EmbedAPI(args.onnx or default_onnx_path(), args.max_batch_size, args.batch_wait_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, healthcheck_path="/health")
    server.run(port=args.port, host="127.0.0.1", generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
