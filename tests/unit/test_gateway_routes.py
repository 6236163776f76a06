"""The gateway's routes against injected fakes (``create_app(upstream=FakeTriton(), ...)``): every
API, its error shape, auth and admission, the fast paths, the offline docs: milliseconds each.

The same routes against the real Triton, Redis and Feast are tests/gateway and tests/reliability.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from export.naming import text_model_name
from features.schema import MODEL_FEATURES, FeatureRow
from gateway.app import create_app
from gateway.ratelimit import Decision
from gateway.settings import GatewaySettings, text_pipeline
from gateway.tenants import TenantConfig, hash_key
from tests.fake_triton import DIM, FakeTriton

ROOT = Path(__file__).resolve().parents[2]
KEY = "ts_routes-all-models-0123456789abcdefgh"
RANKER_KEY = "ts_routes-ranker-only-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {**AUTH, "Content-Type": "application/json"}
TENANTS = {
    "routes-all": TenantConfig(
        key_sha256=[hash_key(KEY)], models=["*"], rate_per_s=1e6, burst=10**6
    ),
    "routes-ranker": TenantConfig(key_sha256=[hash_key(RANKER_KEY)], models=["driver_ranker"]),
}


def _settings(**overrides: Any) -> GatewaySettings:
    return GatewaySettings(
        tenants=TENANTS, environment="development", metrics_port=0, probe_interval_s=0,
        scoring_enabled=False, **overrides,
    )  # fmt: skip


@pytest.fixture(scope="module")
def triton() -> FakeTriton:
    return FakeTriton()


@pytest.fixture(scope="module")
def client(triton: FakeTriton) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(), upstream=triton)) as test_client:
        yield test_client


def _v2(ids: list[int]) -> dict[str, object]:
    return {
        "inputs": [
            {"name": n, "datatype": "INT64", "shape": [1, len(ids)], "data": v}
            for n, v in (("input_ids", ids), ("attention_mask", [1] * len(ids)),
                         ("token_type_ids", [0] * len(ids)))
        ]
    }  # fmt: skip


# -- v2 ---------------------------------------------------------------------------------------
def test_v2_json_is_forwarded_cached_and_looked_up_once(
    client: TestClient, triton: FakeTriton
) -> None:
    triton.metadata_calls.clear()
    body = _v2([101, 2023, 2003, 102])
    first = client.post("/v2/models/minilm/infer", json=body, headers=AUTH)
    second = client.post("/v2/models/minilm/infer", json=body, headers=AUTH)
    assert first.status_code == 200, first.text
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert second.content == first.content and first.headers["ratelimit-limit"] == "1000000"
    (output,) = first.json()["outputs"]
    assert output["shape"] == [1, DIM] and len(output["data"]) == DIM
    assert triton.metadata_calls == ["minilm"]  # one look-up, then the cached signature
    call = triton.calls[-1]
    assert call.model == "minilm" and call.inputs[0].name == "input_ids"
    assert call.inputs[0].raw == np.array([101, 2023, 2003, 102], dtype="<i8").tobytes()


def test_v2_binary_tensors_pass_through_as_sent(client: TestClient, triton: FakeTriton) -> None:
    ids = np.array([[101, 7592, 2088, 102]], dtype="<i8")
    arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": ids * 0}
    head = json.dumps(
        {
            "inputs": [{"name": n, "datatype": "INT64", "shape": [1, 4],
                        "parameters": {"binary_data_size": a.nbytes}} for n, a in arrays.items()],
            "outputs": [{"name": "sentence_embedding", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    body = head + b"".join(a.tobytes() for a in arrays.values())
    headers = {
        **AUTH,
        "Inference-Header-Content-Length": str(len(head)),
        "Cache-Control": "no-store",
    }
    r = client.post("/v2/models/minilm/infer", content=body, headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert [t.raw for t in triton.calls[-1].inputs] == [a.tobytes() for a in arrays.values()]
    size = int(r.headers["inference-header-content-length"])
    vector = np.frombuffer(r.content[size:], dtype="<f4")
    assert vector.shape == (DIM,) and r.headers["x-cache"] == "BYPASS"


def test_v2_errors_have_the_v2_shape_and_others_the_openai_shape(client: TestClient) -> None:
    bad = client.post("/v2/models/minilm/infer", json={"inputs": []}, headers=AUTH)
    assert bad.status_code == 400 and set(bad.json()) == {"error", "code"}
    assert "non-empty list" in bad.json()["error"]
    for path in ("/v2/models/nope/infer", "/v2/nothing-here"):
        r = client.post(path, json={}, headers=AUTH)
        assert r.status_code in (404, 405) and isinstance(r.json()["error"], str), path
    r = client.get("/v1/nothing-here", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    r = client.get("/v2/models/minilm")  # no key: the guard answers in the router's shape
    assert r.status_code == 401 and isinstance(r.json()["error"], str)


def test_metadata_and_ready_routes(client: TestClient) -> None:
    meta = client.get("/v2/models/minilm", headers=AUTH)
    assert meta.status_code == 200 and meta.json()["versions"] == ["1", "2"]
    assert "ratelimit-remaining" in meta.headers
    ready = client.get("/v2/models/minilm_text/ready", headers=AUTH)
    assert ready.json() == {"name": "minilm_text", "ready": True}
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]


# -- OpenAI: embeddings, models ----------------------------------------------------------------
def test_embeddings_resolve_aliases_in_one_look_up_and_key_on_the_encoder_version(
    triton: FakeTriton,
) -> None:
    fake = FakeTriton()
    with TestClient(create_app(_settings(), upstream=fake)) as c:
        body = {"input": ["one", "two"], "model": "sentence-transformers/all-MiniLM-L6-v2"}
        first = c.post("/v1/embeddings", json=body, headers=AUTH)
        assert first.status_code == 200, first.text
        answer = first.json()
        assert answer["model"] == body["model"] and [d["index"] for d in answer["data"]] == [0, 1]
        assert answer["usage"] == {"prompt_tokens": 14, "total_tokens": 14}
        assert len(answer["data"][0]["embedding"]) == DIM
        # the pipeline's metadata and its steps', once: no look-up of the encoder per request
        assert sorted(fake.metadata_calls) == ["minilm", "minilm_text", "minilm_tokenizer"]
        strings = fake.calls[-1].inputs[0]
        assert strings.shape == (2, 1) and strings.raw == b"\x03\x00\x00\x00one\x03\x00\x00\x00two"
        assert c.post("/v1/embeddings", json=body, headers=AUTH).headers["x-cache"] == "HIT"
        packed = c.post("/v1/embeddings", json={**body, "encoding_format": "base64"}, headers=AUTH)
        assert packed.headers["x-cache"] == "MISS"  # the format is part of the key


def test_json_routes_want_json_and_say_so(client: TestClient) -> None:
    form = client.post("/v1/embeddings", content=b'{"input":"hi","model":"minilm"}', headers={
        **AUTH, "Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    bare = client.post("/v1/embeddings", content=b'{"input":"hi","model":"minilm"}', headers=AUTH)
    for r in (form, bare):
        assert r.status_code == 415, r.text
        assert "Content-Type: application/json" in r.json()["error"]["message"]
    ok = client.post("/v1/embeddings", content=b'{"input":"hi","model":"minilm"}', headers=JSON)
    assert ok.status_code == 200


def test_models_lists_only_the_tenants_models(client: TestClient) -> None:
    mine = client.get("/v1/models", headers=AUTH).json()
    assert mine["object"] == "list"
    assert [m["id"] for m in mine["data"]] == [
        "minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
    ]  # fmt: skip
    assert all(m["object"] == "model" and m["owned_by"] == "tritonstack" for m in mine["data"])
    other = client.get("/v1/models", headers={"Authorization": f"Bearer {RANKER_KEY}"})
    assert other.status_code == 200 and other.json()["data"] == []


# -- auth ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({"Authorization": KEY}, "needs the Bearer scheme: send 'Authorization: Bearer <key>'"),
        ({"Authorization": f"Token {KEY}"}, "scheme must be Bearer"),
        ({}, "missing API key: send 'Authorization: Bearer <key>'"),
        ({"Authorization": "Bearer ts_wrong"}, "invalid API key"),
    ],
)
def test_401_says_the_expected_header_form(
    client: TestClient, headers: dict[str, str], fragment: str
) -> None:
    r = client.post("/v1/embeddings", json={"input": "x", "model": "minilm"}, headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert fragment in r.json()["error"]["message"] and KEY not in r.text


def test_forbidden_model_is_403_before_any_triton_call(
    client: TestClient, triton: FakeTriton
) -> None:
    calls = len(triton.metadata_calls) + len(triton.calls)
    r = client.get("/v2/models/minilm", headers={"Authorization": f"Bearer {RANKER_KEY}"})
    assert r.status_code == 403 and len(triton.metadata_calls) + len(triton.calls) == calls


# -- injected limiter and features ---------------------------------------------------------------
class _Refusing:
    async def hit(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision:
        return Decision(False, burst, 0, 3.0, 2.5, 2.5)


def test_an_injected_limiter_decides(triton: FakeTriton) -> None:
    app = create_app(_settings(cache_enabled=False), upstream=triton, limiter=_Refusing())
    with TestClient(app) as c:
        r = c.post("/v2/models/minilm/infer", json=_v2([101, 102]), headers=AUTH)
        assert r.status_code == 429 and r.headers["retry-after"] == "3"
        gated = c.post("/v2/models/minilm/infer", json=_v2([101, 102]), headers=AUTH)
        assert gated.status_code == 429  # the gate learned it: refused before the body


class _Features:
    async def read(self, entity_ids: list[int]) -> list[FeatureRow]:
        from datetime import UTC, datetime

        now = datetime.now(UTC)
        return [FeatureRow(i, dict.fromkeys(MODEL_FEATURES, 1.0), now) for i in entity_ids]

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def test_score_with_injected_features(triton: FakeTriton) -> None:
    app = create_app(_settings(), upstream=triton, features=_Features())  # type: ignore[arg-type]
    with TestClient(app) as c:
        r = c.post("/v1/score", json={"entity_ids": [7, 8]}, headers=JSON)
        assert r.status_code == 200, r.text
        assert [s["entity_id"] for s in r.json()["scores"]] == [7, 8]
        assert r.json()["scores"][0]["score"] == pytest.approx(len(MODEL_FEATURES))


# -- docs ---------------------------------------------------------------------------------------
def test_docs_are_served_offline_with_an_authorize_button(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/docs/assets/") for s in sources), sources
    for source in sources:
        asset = client.get(source)
        assert asset.status_code == 200 and len(asset.content) > 1000, source
    redoc = client.get("/redoc")
    assert "/docs/assets/redoc.standalone.js" in redoc.text and "fonts.googleapis" not in redoc.text
    assert client.get("/docs/assets/passwd").status_code == 404  # a fixed list of files
    assert client.get("/docs/assets/%2e%2e%2fapp.py").status_code == 404
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"
    }  # fmt: skip
    assert spec["paths"]["/v1/embeddings"]["post"]["security"][0] == {"bearer": []}
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert "415" in spec["paths"]["/v1/embeddings"]["post"]["responses"]
    for text in (page.text, redoc.text, json.dumps(spec)):
        assert not any(name in text for name in TENANTS)


# -- structure ----------------------------------------------------------------------------------
def test_the_pipeline_name_rule_is_exports() -> None:
    assert text_pipeline("minilm") == text_model_name("minilm") == _settings().embeddings_pipeline


def test_gateway_modules_and_functions_stay_small() -> None:
    too_long = {}
    for path in (ROOT / "gateway").rglob("*.py"):
        source = path.read_text()
        if source.count("\n") > 300:
            too_long[str(path)] = source.count("\n")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or 0) - node.lineno + 1
                if lines > 60:
                    too_long[f"{path.name}:{node.name}"] = lines
    assert not too_long
