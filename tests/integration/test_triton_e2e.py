"""End to end against the real tritonserver 2.51 serving the freshly exported MiniLM."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from benchmarks.loadgen import grpc_text_inputs
from deploy.local import TritonRuntime, TritonServer
from export.pipeline import ExportResult
from export.torch2onnx import sha256
from tritonstack.infer import Endpoint, InferenceError, TextEmbedder, TritonTensorClient

pytestmark = pytest.mark.integration

TEXTS = [
    "Triton batches requests dynamically.",
    "hello world",
    "A considerably longer sentence, so that the batch holds sequences of different lengths "
    "and the padding of the shorter ones is exercised by the model.",
]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    from export.models.minilm import model_path

    model = SentenceTransformer(str(model_path()), device="cpu")
    return np.asarray(model.encode(TEXTS, normalize_embeddings=True))


def test_export_report_describes_the_artefact(minilm_export: ExportResult) -> None:
    assert minilm_export.version_dir is not None
    report = json.loads((minilm_export.version_dir / "report.json").read_text())
    steps = {s["step"]: s for s in report["steps"]}
    torch_step, verify = steps["torch2onnx"]["metrics"], steps["verify"]["metrics"]
    assert torch_step["file"]["sha256"] == sha256(minilm_export.version_dir / "model.onnx")
    assert torch_step["opset"] == 17
    assert [i["shape"] for i in torch_step["signature"]["inputs"]] == [["batch", "sequence"]] * 3
    assert verify["budget"] == 1e-4 and verify["max_rel_l2"] < 1e-4 and verify["passed"]
    assert report["versions"]["torch"].startswith("2.")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_embeddings_match_pytorch(
    triton: TritonServer, tokenizer_json: Path, reference: np.ndarray, protocol: str
) -> None:
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    embedder = TextEmbedder(Endpoint(url, protocol), tokenizer_json)  # type: ignore[arg-type]
    try:
        vectors = embedder.embed(TEXTS)
    finally:
        embedder.close()
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    cosine = np.sum(vectors * reference, axis=1)
    assert cosine.min() >= 0.9999, cosine


def test_concurrent_ragged_requests_are_batched_and_correct(
    triton: TritonServer, tokenizer_json: Path, reference: np.ndarray
) -> None:
    """Requests of different lengths share executions and each gets its own right answer."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    before = client.get_inference_statistics("minilm").model_stats[0]
    results: dict[int, np.ndarray] = {}

    def one(i: int) -> None:
        embedder = TextEmbedder(Endpoint(triton.grpc_url), tokenizer_json)
        try:
            for _ in range(4):
                results[i] = embedder.embed([TEXTS[i % 3]])[0]
        finally:
            embedder.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    deadline = time.monotonic() + 10  # statistics are updated just after the responses
    while True:
        after = client.get_inference_statistics("minilm").model_stats[0]
        inferences = after.inference_count - before.inference_count
        if inferences >= 48 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    client.close()
    assert len(results) == 12
    for i, vec in results.items():
        assert float(vec @ reference[i % 3]) >= 0.9999
    executions = after.execution_count - before.execution_count
    assert inferences == 48
    assert executions < inferences, "the dynamic batcher never merged two requests"


def _raw(triton: TritonServer, **arrays: np.ndarray) -> dict[str, np.ndarray]:
    client = TritonTensorClient(Endpoint(triton.grpc_url))
    try:
        return client.infer("minilm", arrays, ["sentence_embedding"])
    finally:
        client.close()


def _ids(rows: int = 1, length: int = 4) -> np.ndarray:
    ids = np.full((rows, length), 2000, dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids


def test_wrong_dtype_is_refused_clearly(triton: TritonServer) -> None:
    ids = _ids()
    with pytest.raises(
        InferenceError, match=r"'input_ids' data-type is 'FP32', but model 'minilm' expects 'INT64'"
    ):
        _raw(
            triton,
            input_ids=ids.astype(np.float32),
            attention_mask=np.ones_like(ids),
            token_type_ids=np.zeros_like(ids),
        )


def test_mismatched_shapes_are_refused_clearly(triton: TritonServer) -> None:
    ids = _ids(length=6)
    with pytest.raises(InferenceError, match="inputs must have the same shape"):
        _raw(
            triton,
            input_ids=ids,
            attention_mask=np.ones((1, 4), np.int64),
            token_type_ids=np.zeros_like(ids),
        )


def test_wrong_rank_is_refused_clearly(triton: TritonServer) -> None:
    ids = _ids()[..., None]
    with pytest.raises(InferenceError, match=r"(?i)shape|dims"):
        _raw(
            triton,
            input_ids=ids,
            attention_mask=np.ones_like(ids),
            token_type_ids=np.zeros_like(ids),
        )


def test_empty_batch_is_refused_by_client_and_by_server(
    triton: TritonServer, tokenizer_json: Path
) -> None:
    embedder = TextEmbedder(Endpoint(triton.grpc_url), tokenizer_json)
    try:
        with pytest.raises(InferenceError, match="no input texts"):
            embedder.embed([])
    finally:
        embedder.close()
    empty = np.zeros((1, 0), np.int64)  # one row, no tokens: reaches the model
    with pytest.raises(InferenceError, match="empty sequence"):
        _raw(triton, input_ids=empty, attention_mask=empty, token_type_ids=empty)


def test_out_of_vocabulary_and_too_long_inputs_are_refused(triton: TritonServer) -> None:
    ids = _ids()
    ids[0, 1] = 10**6
    with pytest.raises(InferenceError, match=r"input_ids must lie in \[0, 30522\)"):
        _raw(
            triton,
            input_ids=ids,
            attention_mask=np.ones_like(ids),
            token_type_ids=np.zeros_like(ids),
        )
    long_ids = _ids(length=300)
    with pytest.raises(InferenceError, match="exceeds the model's maximum 256"):
        _raw(
            triton,
            input_ids=long_ids,
            attention_mask=np.ones_like(long_ids),
            token_type_ids=np.zeros_like(long_ids),
        )


def test_server_still_serves_after_bad_requests(triton: TritonServer) -> None:
    assert triton.is_running()
    ids = _ids(rows=2)
    out = _raw(
        triton, input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=np.zeros_like(ids)
    )
    assert out["sentence_embedding"].shape == (2, 384)


def test_metrics_endpoint_counts_inferences(triton: TritonServer) -> None:
    import urllib.request

    with urllib.request.urlopen(triton.metrics_url, timeout=5) as response:
        text = response.read().decode()
    assert 'nv_inference_request_success{model="minilm",version="1"}' in text


def test_process_group_is_gone_after_stop(runtime, model_repository: Path, tmp_path: Path) -> None:
    server = TritonServer(runtime, model_repository, work_dir=tmp_path)
    server.start()
    pgid = server.pid
    assert pgid is not None
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # neither tritonserver nor any python-backend stub survives


def test_triton_response_cache_answers_repeated_requests(
    runtime: TritonRuntime, model_repository: Path, tmp_path: Path
) -> None:
    """The generated config enables Triton's response cache; a server with a cache uses it."""
    server = TritonServer(
        runtime, model_repository, work_dir=tmp_path, response_cache_bytes=16 * 2**20,
        startup_timeout_s=120,
    )  # fmt: skip
    ids = np.array([[101, 2023, 2003, 1037, 3231, 102]], dtype=np.int64)
    with server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        tensors = grpc_text_inputs(ids)
        first = client.infer("minilm", tensors).as_numpy("sentence_embedding")
        second = client.infer("minilm", tensors).as_numpy("sentence_embedding")
        stats = client.get_inference_statistics("minilm", as_json=True)
        client.close()
    np.testing.assert_array_equal(first, second)
    model_stats = stats["model_stats"][0]
    assert int(model_stats["inference_stats"]["cache_hit"]["count"]) == 1
    assert int(model_stats["execution_count"]) == 1 + 1  # warm-up + the first request only
