"""/v1/embeddings through the Triton text pipeline (minilm_text): raw strings, usage, errors."""

from __future__ import annotations

import httpx
import pytest
import tritonclient.grpc as grpcclient
from tokenizers import Tokenizer

from deploy.local.triton import TritonServer
from tests.fixtures_gateway import AUTH, StartGateway

pytestmark = pytest.mark.integration
NO_CACHE = {**AUTH, "Cache-Control": "no-cache"}
TOO_LONG = "word " * 300  # 302 tokens; the model takes 256


def _inferences(triton: TritonServer, model: str) -> int:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        return int(client.get_inference_statistics(model).model_stats[0].inference_count)
    finally:
        client.close()


def test_raw_strings_go_to_the_ensemble_and_usage_counts_its_tokens(
    client: httpx.Client, triton: TritonServer, tokenizer: Tokenizer
) -> None:
    texts = ["one", "two words here", "Ünïcödé and emoji 🙂 count as the tokenizer counts"]
    before = _inferences(triton, "minilm_text")
    r = client.post("/v1/embeddings", json={"input": texts, "model": "minilm"}, headers=NO_CACHE)
    assert r.status_code == 200, r.text
    assert _inferences(triton, "minilm_text") - before == len(texts)  # one row per string
    want = sum(len(e.ids) for e in tokenizer.encode_batch(texts))
    assert r.json()["usage"] == {"prompt_tokens": want, "total_tokens": want}


def test_too_long_input_is_a_400_naming_the_input(client: httpx.Client) -> None:
    body = {"input": ["fine", TOO_LONG], "model": "all-MiniLM-L6-v2"}
    r = client.post("/v1/embeddings", json=body, headers=NO_CACHE)
    assert r.status_code == 400, r.text
    assert r.json() == {
        "error": {
            "message": "input[1] has 302 tokens; the model takes at most 256: shorten or split it",
            "type": "invalid_request_error",
            "code": "invalid_input",
            "param": "input",
        }
    }


def test_too_long_input_in_a_later_chunk_keeps_its_index(client: httpx.Client) -> None:
    texts = [f"sentence {i}" for i in range(40)]  # chunks of 32 (max_batch_size)
    texts[35] = TOO_LONG
    r = client.post("/v1/embeddings", json={"input": texts, "model": "minilm"}, headers=NO_CACHE)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith("input[35] has 302 tokens")


def test_odd_strings_are_answered_not_failed(client: httpx.Client) -> None:
    for text in ("\u0000", " ", "\ufeff", "🙂" * 50):
        r = client.post("/v1/embeddings", json={"input": text, "model": "minilm"}, headers=NO_CACHE)
        assert r.status_code == 200, (text, r.text)
    lone_surrogate = b'{"input": "\\ud800", "model": "minilm"}'
    headers = {**NO_CACHE, "Content-Type": "application/json"}
    r = client.post("/v1/embeddings", content=lone_surrogate, headers=headers)
    assert r.status_code == 400, r.text  # valid JSON, not encodable as UTF-8
    assert "input[0] is not valid Unicode" in r.json()["error"]["message"]


def test_missing_pipeline_is_a_503_that_says_what_to_do(
    start_gateway: StartGateway, triton: TritonServer
) -> None:
    gateway = start_gateway(triton.grpc_url, None, embeddings_text_model="absent_text")
    with httpx.Client(base_url=gateway.url, timeout=30) as c:
        r = c.post("/v1/embeddings", json={"input": "hi", "model": "minilm"}, headers=AUTH)
        ready = c.get("/readyz")
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "model_unavailable"
    assert "'absent_text'" in error["message"] and "tokenizer.json" in error["message"]
    assert ready.status_code == 503 and ready.json()["checks"]["model:absent_text"] is False
