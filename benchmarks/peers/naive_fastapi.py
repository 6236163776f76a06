"""The "simple containerized API" baseline: FastAPI + uvicorn, PyTorch per request, no batching.

``python -m benchmarks.peers.naive_fastapi --port P``: a sync endpoint (FastAPI runs it in its
thread pool) calling the sentence-transformers MiniLM weights in PyTorch, one item per call.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI

from benchmarks.peers.common import EMBED_PATH, HEALTH_PATH, decode_request, encode_response
from export.models import minilm


def build_app() -> FastAPI:
    model = minilm.load().module.eval()
    app = FastAPI()

    @app.get(HEALTH_PATH)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(EMBED_PATH)
    def embed(payload: dict[str, Any]) -> dict[str, list[float]]:
        ids, mask = decode_request(payload)
        ids_t, mask_t = torch.from_numpy(ids)[None], torch.from_numpy(mask)[None]
        with torch.inference_mode():
            out = model(ids_t, mask_t, torch.zeros_like(ids_t))
        return encode_response(out[0].numpy())

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    uvicorn.run(build_app(), host=args.host, port=args.port, log_level="warning", loop="asyncio")


if __name__ == "__main__":
    main()
