"""The demo's checks against the running stack: embeddings vs PyTorch (step 3), driver scores
through the gateway (step 5)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
from rich.console import Console
from rich.table import Table
from tritonclient.utils import InferenceServerException

from benchmarks.loadgen import grpc_string_input
from benchmarks.sweep import SENTENCES
from export.naming import text_model_name
from export.reader import served
from tritonstack.console import styled
from tritonstack.infer import Endpoint, Protocol, TextEmbedder

COSINE_FLOOR = 0.9999  # what fp32-faithful variants owe PyTorch; reduced ones owe their budget
DRIVERS = [1001, 1003, 1005, 1007]  # active drivers of the generated data (features/data.py)


def _reference(texts: list[str]) -> np.ndarray:
    """PyTorch reference: sentence-transformers' own encode of the same weights."""
    # deferred on purpose: sentence-transformers loads torch and transformers (seconds)
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    from export.models.minilm import model_path

    transformers_logging.disable_progress_bar()  # "Loading weights" bars in the demo's table
    model = SentenceTransformer(str(model_path()), device="cpu")
    return np.asarray(model.encode(texts, normalize_embeddings=True))


def _via_gateway(url: str, key: str) -> np.ndarray:
    """``POST /v1/embeddings`` through the gateway with the development key (cache bypassed)."""
    response = httpx.post(
        f"{url}/v1/embeddings",
        json={"input": SENTENCES, "model": "all-MiniLM-L6-v2"},
        headers={"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"},
        timeout=30,
    )
    response.raise_for_status()
    data = sorted(response.json()["data"], key=lambda d: d["index"])
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def _via_text_pipeline(grpc_url: str) -> tuple[np.ndarray, list[int]]:
    """The sentences as raw strings to ``minilm_text``: embeddings and the token counts."""
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        result = client.infer(
            text_model_name("minilm"), grpc_string_input(SENTENCES), client_timeout=30
        )
    finally:
        client.close()
    tokens = result.as_numpy("token_count").ravel().tolist()
    return result.as_numpy("sentence_embedding"), tokens


def embed_and_compare(
    console: Console,
    grpc_url: str,
    http_url: str,
    repository: Path,
    gateway: tuple[str, str] | None = None,
) -> bool:
    """Step 3: the sentences through every path, each compared with PyTorch's embeddings."""
    now = served(repository, "minilm")
    tokenizer = now.version_dir / "tokenizer.json"
    floor, variant = now.cosine_floor(COSINE_FLOOR), now.variant
    reference = _reference(SENTENCES)
    table = Table(
        title=f"3. embeddings from Triton ({variant}) vs PyTorch fp32 (sentence-transformers)"
    )
    for column in ("protocol", "endpoint", "shape", "min cosine vs PyTorch", "ms"):
        table.add_column(column)
    ok = True

    def add(protocol: str, endpoint: str, vectors: np.ndarray, started: float) -> None:
        nonlocal ok
        elapsed = (time.perf_counter() - started) * 1000
        cosine = float(np.min(np.sum(vectors * reference, axis=1)))
        ok &= cosine >= floor
        table.add_row(protocol, endpoint, str(vectors.shape), f"{cosine:.7f}", f"{elapsed:.1f}")

    urls: dict[Protocol, str] = {"grpc": grpc_url, "http": http_url}
    for protocol, url in urls.items():
        embedder = TextEmbedder(Endpoint(url, protocol), tokenizer)
        try:
            start = time.perf_counter()
            add(protocol, url, embedder.embed(SENTENCES), start)
        finally:
            embedder.close()
    # raw strings over gRPC to the text pipeline (a Triton ensemble: the model's tokenizer as a
    # python-backend model, then the encoder): no client-side tokenizer
    start = time.perf_counter()
    try:
        vectors, tokens = _via_text_pipeline(grpc_url)
    except InferenceServerException as exc:
        console.print(styled("raw strings to minilm_text failed", "red", f": {exc.message()}"))
        ok = False
    else:
        add("grpc, raw strings", f"{grpc_url} minilm_text (tokens {tokens})", vectors, start)
    if gateway is not None:
        start = time.perf_counter()
        add("gateway", f"{gateway[0]}/v1/embeddings", _via_gateway(*gateway), start)
    console.print(table)
    if not ok:
        console.print(f"embeddings differ from PyTorch (cosine < {floor}, {variant})", style="red")
    return ok


def score(console: Console, url: str, key: str) -> bool:
    """Step 5: ``POST /v1/score`` through the gateway: online features -> driver_ranker."""
    response = httpx.post(
        f"{url}/v1/score",
        json={"entity_ids": DRIVERS, "include_features": True, "include_timestamps": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    if response.status_code != 200:
        console.print(
            styled("5. scoring failed", "red", f": {response.status_code} {response.text}")
        )
        return False
    table = Table(title="5. driver scores through the gateway (features from the online store)")
    for column in ("driver", "score", "features", "as of"):
        table.add_column(column)
    for row in response.json()["scores"]:
        values = ", ".join(f"{k}={v:.3g}" for k, v in row["features"].items())
        table.add_row(str(row["entity_id"]), f"{row['score']:.3f}", values, row["event_timestamp"])
    console.print(table)
    unknown = httpx.post(
        f"{url}/v1/score",
        json={"entity_ids": [424242]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    console.print(
        f"   unknown driver 424242 -> {unknown.status_code}: {unknown.json()['error']['message']}"
    )
    return unknown.status_code == 404
