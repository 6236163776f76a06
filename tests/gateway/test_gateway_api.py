"""The gateway against the real Triton and Redis: auth, v2 REST, embeddings, cache, errors."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from deploy.local.gateway import GatewayProcess
from deploy.local.triton import TritonServer
from tests.fixtures_gateway import ALPHA_KEY, AUTH, BETA_KEY, token_inputs, v2_json_body
from tritonstack.infer import Endpoint, TextEmbedder

pytestmark = pytest.mark.integration
HELLO = [101, 7592, 2088, 102]  # [CLS] hello world [SEP]


def _direct(triton: TritonServer, tokenizer_json: Path, texts: list[str]) -> np.ndarray:
    embedder = TextEmbedder(Endpoint(triton.grpc_url), tokenizer_json)
    try:
        return embedder.embed(texts)
    finally:
        embedder.close()


# -- auth --------------------------------------------------------------------------------------
def test_missing_key_is_401_with_a_hint(client: httpx.Client) -> None:
    r = client.post("/v1/embeddings", json={"input": "hi", "model": "minilm"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer ts_wrong"},
        {"X-API-Key": "ts_wrong"},
        {"Authorization": f"Basic {ALPHA_KEY}"},  # right key, wrong scheme
        {"X-Api-Token": ALPHA_KEY},  # right key, wrong header
    ],
)
def test_wrong_key_or_header_is_401(client: httpx.Client, headers: dict[str, str]) -> None:
    r = client.get("/v2/models/minilm", headers=headers)
    assert r.status_code == 401, r.text
    assert ALPHA_KEY not in r.text


def test_key_in_query_string_is_not_accepted(client: httpx.Client) -> None:
    assert client.get(f"/v2/models/minilm?api_key={ALPHA_KEY}").status_code == 401


def test_x_api_key_header_works(client: httpx.Client) -> None:
    assert client.get("/v2/models/minilm", headers={"X-API-Key": ALPHA_KEY}).status_code == 200


def test_other_tenants_model_is_403(client: httpx.Client) -> None:
    headers = {"Authorization": f"Bearer {BETA_KEY}"}
    r = client.post("/v1/embeddings", json={"input": "hi", "model": "minilm"}, headers=headers)
    assert r.status_code == 403
    assert "minilm" in r.json()["error"]["message"]


# -- Open Inference Protocol --------------------------------------------------------------------
def test_metadata_matches_triton(client: httpx.Client, triton: TritonServer) -> None:
    ours = client.get("/v2/models/minilm", headers=AUTH).json()
    theirs = httpx.get(f"http://{triton.http_url}/v2/models/minilm").json()
    assert ours["name"] == theirs["name"] and ours["versions"] == theirs["versions"]
    assert ours["inputs"] == theirs["inputs"] and ours["outputs"] == theirs["outputs"]


def test_tritonclient_http_works_through_the_gateway(
    gateway: GatewayProcess, triton: TritonServer
) -> None:
    """A stock tritonclient.http client (binary tensors by default) needs only the key header."""
    inputs = token_inputs(HELLO)

    def run(url: str, headers: dict[str, str] | None) -> np.ndarray:
        client = httpclient.InferenceServerClient(url)
        tensors = []
        for name, array in inputs.items():
            tensor = httpclient.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)  # binary_data=True: the binary extension
            tensors.append(tensor)
        out = [httpclient.InferRequestedOutput("sentence_embedding", binary_data=True)]
        result = client.infer("minilm", tensors, outputs=out, headers=headers)
        assert client.is_model_ready("minilm", headers=headers)
        client.close()
        return result.as_numpy("sentence_embedding")

    # a copy: tritonclient.http writes Inference-Header-Content-Length into the dict it gets
    via_gateway = run(gateway.url.removeprefix("http://"), dict(AUTH))
    direct = run(triton.http_url, None)
    assert via_gateway.shape == (1, 384)
    np.testing.assert_array_equal(via_gateway, direct)

    client = httpclient.InferenceServerClient(gateway.url.removeprefix("http://"))
    with pytest.raises(InferenceServerException, match="invalid API key"):
        client.get_model_metadata("minilm", headers={"Authorization": "Bearer nope"})
    client.close()


def test_json_inference_returns_json_outputs(client: httpx.Client) -> None:
    r = client.post("/v2/models/minilm/infer", json=v2_json_body(HELLO, id="req-1"), headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-1" and body["model_name"] == "minilm"
    (output,) = body["outputs"]
    assert output["shape"] == [1, 384] and len(output["data"]) == 384
    assert math.isclose(np.linalg.norm(output["data"]), 1.0, rel_tol=1e-4)


# -- embeddings ---------------------------------------------------------------------------------
def test_embeddings_match_direct_triton(
    client: httpx.Client, triton: TritonServer, tokenizer_json: Path
) -> None:
    texts = ["The cat sits outside", "A man is playing guitar", "tritonstack"]
    r = client.post(
        "/v1/embeddings",
        json={"input": texts, "model": "all-MiniLM-L6-v2"},
        headers={**AUTH, "Cache-Control": "no-cache"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "all-MiniLM-L6-v2"
    got = np.array([d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])])
    want = _direct(triton, tokenizer_json, texts)
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() > 0.99999
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(texts) * 3


def test_embeddings_base64_decodes_to_the_floats(client: httpx.Client) -> None:
    request = {"input": "base64 please", "model": "minilm"}
    floats = client.post("/v1/embeddings", json=request, headers=AUTH).json()
    packed = client.post(
        "/v1/embeddings", json={**request, "encoding_format": "base64"}, headers=AUTH
    ).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, floats["data"][0]["embedding"], rtol=1e-6)


def test_more_inputs_than_max_batch_size_are_chunked(client: httpx.Client) -> None:
    texts = [f"sentence number {i}" for i in range(40)]  # max_batch_size is 32
    r = client.post("/v1/embeddings", json={"input": texts, "model": "minilm"}, headers=AUTH)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == list(range(40))
    vectors = np.array([d["embedding"] for d in data])
    assert not np.allclose(vectors[0], vectors[39])


# -- cache --------------------------------------------------------------------------------------
def test_cache_hit_returns_identical_bytes_and_bypass_works(client: httpx.Client) -> None:
    request = {"input": "cache me if you can", "model": "minilm"}
    first = client.post("/v1/embeddings", json=request, headers=AUTH)
    second = client.post("/v1/embeddings", json=request, headers=AUTH)
    bypass = client.post(
        "/v1/embeddings", json=request, headers={**AUTH, "Cache-Control": "no-cache"}
    )
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert second.content == first.content
    assert bypass.headers["x-cache"] == "BYPASS"

    body = v2_json_body([101, 2023, 2003, 102])
    miss = client.post("/v2/models/minilm/infer", json=body, headers=AUTH)
    hit = client.post("/v2/models/minilm/infer", json=body, headers=AUTH)
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
    assert hit.content == miss.content


def test_cache_key_depends_on_the_input(client: httpx.Client) -> None:
    a = client.post("/v1/embeddings", json={"input": "alpha one", "model": "minilm"}, headers=AUTH)
    b = client.post("/v1/embeddings", json={"input": "alpha two", "model": "minilm"}, headers=AUTH)
    assert b.headers["x-cache"] == "MISS"
    assert a.json()["data"][0]["embedding"] != b.json()["data"][0]["embedding"]


# -- validation ---------------------------------------------------------------------------------
def _bad_v2(**override: object) -> dict[str, object]:
    body = v2_json_body(HELLO)
    first = dict(body["inputs"][0])  # type: ignore[index]
    first.update(override)
    body["inputs"] = [first, *body["inputs"][1:]]  # type: ignore[index]
    return body


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (_bad_v2(datatype="FP32"), "must have datatype INT64"),
        (_bad_v2(name="input_idz"), "has no input 'input_idz'"),
        (_bad_v2(shape=[1, 5]), "shape says 5 elements but data has 4"),
        (_bad_v2(shape=[4]), "must have 2 dimensions"),
        (_bad_v2(data=[101.5, 1, 2, 3]), "must be integers"),
        (_bad_v2(data=["a", "b", "c", "d"]), "must be integers"),
        (_bad_v2(data=[[1, 2], [3]]), "ragged"),
        (_bad_v2(data=[2**70, 1, 2, 3]), "must lie in"),
        ({"inputs": []}, "non-empty list"),
        ({"inputs": v2_json_body(HELLO)["inputs"][:1]}, "needs inputs"),  # type: ignore[index]
    ],
)
def test_v2_validation_errors_are_400_with_a_fix(
    client: httpx.Client, body: dict[str, object], fragment: str
) -> None:
    r = client.post("/v2/models/minilm/infer", json=body, headers=AUTH)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]


def test_batch_above_max_batch_size_is_400(client: httpx.Client) -> None:
    ids = np.tile(np.array(HELLO, dtype=np.int64), (33, 1))
    body = {
        "inputs": [
            {"name": n, "datatype": "INT64", "shape": [33, 4], "data": a.ravel().tolist()}
            for n, a in (
                ("input_ids", ids),
                ("attention_mask", np.ones_like(ids)),
                ("token_type_ids", np.zeros_like(ids)),
            )
        ]
    }
    r = client.post("/v2/models/minilm/infer", json=body, headers=AUTH)
    assert r.status_code == 400 and "max_batch_size" in r.json()["error"]


def test_unknown_model_is_404(client: httpx.Client) -> None:
    r = client.post("/v2/models/nope/infer", json=v2_json_body(HELLO), headers=AUTH)
    assert r.status_code == 404, r.text


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"input": "", "model": "minilm"}, 400, "empty"),
        ({"input": "word " * 400, "model": "minilm"}, 400, "tokens"),
        ({"input": "x" * 20_001, "model": "minilm"}, 400, "characters"),
        ({"input": ["a"] * 257, "model": "minilm"}, 400, "1..256"),
        ({"input": [], "model": "minilm"}, 400, "1..256"),
        ({"input": "hi", "model": "gpt-4"}, 404, "no embedding model"),
        ({"input": "hi", "model": "minilm", "dimensions": 12}, 400, "384"),
        ({"input": 42, "model": "minilm"}, 422, "input"),
        ({"model": "minilm"}, 422, "input"),
    ],
)
def test_embedding_validation(
    client: httpx.Client, body: dict[str, object], status: int, fragment: str
) -> None:
    r = client.post("/v1/embeddings", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"]


def test_malformed_bodies_are_4xx(client: httpx.Client) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    assert client.post("/v1/embeddings", content=b"{not json", headers=headers).status_code == 400
    r = client.post("/v2/models/minilm/infer", content=b"\xff\xfe{}", headers=headers)
    assert r.status_code == 400 and "UTF-8" in r.json()["error"]
    deep = b"[" * 100_000 + b"]" * 100_000
    r = client.post("/v2/models/minilm/infer", content=deep, headers=headers)
    assert r.status_code == 400, r.text
    nan = b'{"inputs":[{"name":"input_ids","datatype":"INT64","shape":[1,1],"data":[NaN]}]}'
    assert client.post("/v2/models/minilm/infer", content=nan, headers=headers).status_code == 400


def test_oversized_body_is_413(client: httpx.Client) -> None:
    big = b"x" * (9 * 2**20)  # the default limit is 8 MiB
    r = client.post("/v2/models/minilm/infer", content=big, headers=AUTH)
    assert r.status_code == 413 and "exceeds" in r.json()["error"]


# -- health and metrics ---------------------------------------------------------------------------
def test_health_readiness_and_metrics(client: httpx.Client, gateway: GatewayProcess) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {
        "triton": True,
        "model:minilm": True,
        "model:minilm_text": True,  # the text pipeline behind /v1/embeddings
        "redis": True,
    }

    client.post("/v1/embeddings", json={"input": "metrics", "model": "minilm"}, headers=AUTH)
    client.get("/v2/models/minilm", headers={"Authorization": "Bearer wrong"})
    assert client.get("/metrics", headers=AUTH).status_code == 404  # never on the API port
    text = httpx.get(gateway.metrics_url).text  # its own port (GATEWAY_METRICS_PORT)
    assert 'gateway_request_duration_seconds_count{model="minilm",route="/v1/embeddings"' in text
    assert 'gateway_upstream_duration_seconds_count{model="minilm_text",outcome="ok"}' in text
    assert 'gateway_cache_requests_total{layer="redis",result="miss"}' in text
    assert 'gateway_auth_failures_total{reason="invalid"}' in text
    assert "gateway_responses_total" in text


def test_openapi_documents_the_routes(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/embeddings", "/v2/models/{model_name}/infer", "/readyz"} <= set(paths)
