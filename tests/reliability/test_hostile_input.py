"""Hostile and bad input: OpenAPI fuzzing, limits (fast 4xx, bounded memory), every route under
hostile requests, auth hygiene."""

from __future__ import annotations

import hmac
import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from deploy.local.gateway import GatewayProcess
from deploy.local.redis import RedisServer
from deploy.local.triton import TritonServer
from gateway.tenants import Authenticator, TenantConfig, hash_key
from tests.fixtures_features import FeatureEnv
from tests.fixtures_gateway import (
    ALPHA_KEY,
    BETA_KEY,
    LIMITED_KEY,
    UNLIMITED_KEY,
    StartGateway,
    v2_json_body,
)
from tests.reliability.conftest import reset_high_water_mark, rss_mb

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent
LOAD = {"Authorization": f"Bearer {UNLIMITED_KEY}"}
LEAKS = re.compile(
    r"Traceback|File \"|site-packages|/work/|\.py\b|StatusCode\.|grpc\.|127\.0\.0\.1|redis://"
    r"|\bError \d+ connecting",
    re.I,
)


@pytest.fixture(scope="module")
def fuzz_gateway(
    start_gateway: StartGateway,
    triton: TritonServer,
    redis_server: RedisServer,
    sqlite_features: FeatureEnv,
) -> GatewayProcess:
    """Every route live, scoring included (features from SQLite; driver_ranker not served)."""
    return start_gateway(
        triton.grpc_url,
        redis_server.url,
        extra_env={
            "FEATURES_STATE_DIR": str(sqlite_features.settings.state_dir),
            "GATEWAY_SCORING_ENABLED": "true",
        },
    )


# -- 7. fuzzing -----------------------------------------------------------------------------------
def test_schemathesis_finds_no_5xx_and_no_schema_violation(
    fuzz_gateway: GatewayProcess, figures: dict
) -> None:
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file", str(HERE / "schemathesis.toml"),
            "run", f"{fuzz_gateway.url}/openapi.json",
            "-H", f"Authorization: Bearer {UNLIMITED_KEY}",
            "--max-examples", "90",
            "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance",
            "--seed", "20261125",
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    cases = re.search(r"(\d+) generated, (\d+) passed", output)
    figures.update(
        cases_generated=int(cases.group(1)) if cases else None,
        cases_passed=int(cases.group(2)) if cases else None,
        exit_code=done.returncode,
    )
    assert done.returncode == 0, output[-4000:]
    assert cases and int(cases.group(1)) >= 1000 and cases.group(1) == cases.group(2)


# -- 8. limits ------------------------------------------------------------------------------------
def _bytes_bomb(short_strings: int) -> bytes:
    """One long string among many short ones, more than the shape says: numpy would have made
    a fixed-width array of 4 bytes x the longest x every element before any count check."""
    data = ["x" * 20_000] + ["a"] * short_strings
    tensor = {"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


def _mixed_ints() -> bytes:
    ids = v2_json_body([101, 102])
    ids["inputs"][0]["data"] = ["y" * 20_000] + [1] * 20_000  # type: ignore[index]
    return json.dumps(ids).encode()


def _bad_inputs() -> dict[str, tuple[str, dict[str, Any]]]:
    json_headers = {**LOAD, "Content-Type": "application/json"}
    batch = np.tile(np.array([101, 7592, 102]), (1000, 1))
    huge_batch = {
        "inputs": [
            {"name": n, "datatype": "INT64", "shape": list(batch.shape), "data": a.ravel().tolist()}
            for n, a in (("input_ids", batch), ("attention_mask", np.ones_like(batch)),
                         ("token_type_ids", np.zeros_like(batch)))
        ]
    }  # fmt: skip
    wrong_dtype = v2_json_body([101, 102])
    wrong_dtype["inputs"][0]["datatype"] = "FP32"  # type: ignore[index]
    return {
        "oversized body (9 MiB)": ("/v2/models/minilm/infer",
                                   {"content": b"0" * (9 * 2**20), "headers": json_headers}),
        "huge batch (1000 rows)": ("/v2/models/minilm/infer",
                                   {"content": json.dumps(huge_batch), "headers": json_headers}),
        "very long text (1 MB)": ("/v1/embeddings",
                                  {"json": {"input": "a" * 10**6, "model": "minilm"},
                                   "headers": LOAD}),
        "too many texts (10k)": ("/v1/embeddings",
                                 {"json": {"input": ["x"] * 10_000, "model": "minilm"},
                                  "headers": LOAD}),
        "wrong dtype": ("/v2/models/minilm/infer",
                        {"content": json.dumps(wrong_dtype), "headers": json_headers}),
        "NaN in a float": ("/v2/models/minilm/infer",
                           {"content": b'{"inputs":[{"name":"input_ids","datatype":"INT64",'
                                       b'"shape":[1,1],"data":[NaN]}]}', "headers": json_headers}),
        "deeply nested JSON (1M levels)": ("/v2/models/minilm/infer",
                                           {"content": b"[" * 10**6 + b"]" * 10**6,
                                            "headers": json_headers}),
        "deeply nested JSON, OpenAI route": ("/v1/embeddings",
                                             {"content": b'{"input":' + b"[" * 10**5
                                              + b"]" * 10**5 + b"}", "headers": json_headers}),
        "non-UTF-8 bytes": ("/v1/embeddings",
                            {"content": b'{"input": "\xff\xfe", "model": "minilm"}',
                             "headers": json_headers}),
        "binary size lies": ("/v2/models/minilm/infer",
                             {"content": b'{"inputs":[]}garbage',
                              "headers": {**json_headers,
                                          "Inference-Header-Content-Length": "999"}}),
        "BYTES bomb (100 KB body)": ("/v2/models/minilm_text/infer",
                                     {"content": _bytes_bomb(20_000), "headers": json_headers}),
        "BYTES bomb (900 KB body)": ("/v2/models/minilm_text/infer",
                                     {"content": _bytes_bomb(220_000), "headers": json_headers}),
        "strings among INT64 (100 KB)": ("/v2/models/minilm/infer",
                                         {"content": _mixed_ints(), "headers": json_headers}),
        "5,000-digit integer": ("/v2/models/minilm/infer",
                                {"content": b'{"inputs":[{"name":"input_ids","datatype":"INT64",'
                                            b'"shape":[1,1],"data":[' + b"9" * 5000 + b"]}]}",
                                 "headers": json_headers}),
        "5,000-digit integer, OpenAI route": ("/v1/embeddings",
                                              {"content": b'{"model":"minilm","input":"x",'
                                               b'"dimensions":' + b"9" * 5000 + b"}",
                                               "headers": json_headers}),
        "lone surrogate in a BYTES string": ("/v2/models/minilm_text/infer",
                                             {"content": b'{"inputs":[{"name":"text","datatype":'
                                              b'"BYTES","shape":[1,1],"data":["a\\ud800b"]}]}',
                                              "headers": json_headers}),
        "lone surrogate in the request id": ("/v2/models/minilm/infer",
                                             {"content": json.dumps(v2_json_body(
                                                 [101, 102], id="\ud800")).encode(),
                                              "headers": json_headers}),
        "lone surrogate, OpenAI route": ("/v1/embeddings",
                                         {"content": b'{"model":"minilm","input":"\\udfff"}',
                                          "headers": json_headers}),
    }  # fmt: skip


def test_bad_input_gets_a_fast_4xx_and_memory_stays_bounded(
    fuzz_gateway: GatewayProcess, figures: dict
) -> None:
    assert fuzz_gateway.pid is not None
    results: dict[str, str] = {}
    with httpx.Client(base_url=fuzz_gateway.url, timeout=30) as client:
        client.post("/v1/embeddings", json={"input": "warm", "model": "minilm"}, headers=LOAD)
        before = rss_mb(fuzz_gateway.pid)
        reset_high_water_mark(fuzz_gateway.pid)
        slowest = 0.0
        for _ in range(5):  # repeated: a leak would show as growth
            for name, (path, kwargs) in _bad_inputs().items():
                started = time.monotonic()
                r = client.post(path, **kwargs)
                elapsed = time.monotonic() - started
                slowest = max(slowest, elapsed)
                results[name] = f"{r.status_code} in {elapsed * 1000:.0f} ms"
                assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
                assert not LEAKS.search(r.text), (name, r.text[:300])
                assert elapsed < 2.0, (name, elapsed)
        after = rss_mb(fuzz_gateway.pid)
        peak = rss_mb(fuzz_gateway.pid, "VmHWM")
    figures.update(
        answers=results, slowest_ms=round(slowest * 1000), rss_before_mb=round(before),
        rss_after_mb=round(after), rss_high_water_mark_mb=round(peak),
    )  # fmt: skip
    assert after - before < 100, f"gateway RSS grew {after - before:.0f} MB on bad input"
    # the peak while the list ran: bounded by the bodies' own size (8 MiB, parsed), never by
    # what a body declares (a shape, a string length)
    assert peak - before < 150, f"gateway peaked {peak - before:.0f} MB above its start"


def test_every_route_refuses_hostile_requests(fuzz_gateway: GatewayProcess, figures: dict) -> None:
    """Each route of the OpenAPI description, and routes that do not exist, under requests no
    client should send: a 4xx (2xx for the public health routes) fast, never a 5xx, no leak."""
    with httpx.Client(base_url=fuzz_gateway.url, timeout=30) as client:
        spec = client.get("/openapi.json").json()
        routes = [(m.upper(), p.replace("{model_name}", "minilm"))
                  for p, ops in spec["paths"].items() for m in ops]  # fmt: skip
        routes += [
            ("GET", "/metrics"),
            ("POST", "/v2/models/minilm/infer/x"),
            ("GET", "/%ff"),
            ("DELETE", "/v1/embeddings"),
            ("POST", "/v2/repository/models/minilm/load"),
        ]
        public = {"/healthz", "/readyz", "/docs", "/openapi.json", "/v2", "/v2/health/live",
                  "/v2/health/ready"}  # fmt: skip
        json_headers = {**LOAD, "Content-Type": "application/json"}
        variants: dict[str, dict[str, Any]] = {
            "no key, 1 MB body": {"content": b"{" * 2**20},
            "wrong key": {"headers": {"Authorization": "Bearer ts_nope"}},
            "9 MiB body": {"content": b"0" * (9 * 2**20), "headers": json_headers},
            "not JSON": {"content": b"{{{\xff", "headers": json_headers},
            "nested 100k deep": {"content": b"[" * 10**5 + b"]" * 10**5, "headers": json_headers},
            "100 KB header": {"headers": {**LOAD, "X-Junk": "a" * 100_000}},
            "binary header lies": {"content": b"{}", "headers": {
                **json_headers, "Inference-Header-Content-Length": "-5"}},
        }  # fmt: skip
        answered: dict[str, int] = {}
        for method, path in routes:
            for name, kwargs in variants.items():
                started = time.monotonic()
                r = client.request(method, path, **kwargs)
                elapsed = time.monotonic() - started
                answered[f"{method} {path} {name}"] = r.status_code
                ok = r.status_code < 500 or (
                    path in ("/readyz", "/v2/health/ready") and r.status_code == 503
                )
                assert ok, (method, path, name, r.status_code, r.text[:300])
                if path not in public and name in ("no key, 1 MB body", "wrong key"):
                    assert r.status_code == 401, (method, path, name, r.status_code)
                assert elapsed < 2.0, (method, path, name, elapsed)
                assert not LEAKS.search(r.text), (method, path, name, r.text[:300])
    figures.update(routes=len(routes), requests=len(answered),
                   statuses=dict(sorted(Counter(answered.values()).items())))  # fmt: skip


# -- 9. auth --------------------------------------------------------------------------------------
def test_no_auth_bypass_and_no_leaks(fuzz_gateway: GatewayProcess, figures: dict) -> None:
    attempts = {
        "no key": {},
        "wrong key": {"Authorization": "Bearer ts_wrong-key"},
        "bearer without a key": {"Authorization": "Bearer"},
        "key in wrong header": {"X-Auth-Token": ALPHA_KEY},
        "key as basic auth": {"Authorization": f"Basic {ALPHA_KEY}"},
        "key with suffix": {"Authorization": f"Bearer {ALPHA_KEY}x"},
        "key prefix only": {"Authorization": f"Bearer {ALPHA_KEY[:-1]}"},
        "other tenant's model": {"Authorization": f"Bearer {BETA_KEY}"},
    }
    statuses: dict[str, int] = {}
    with httpx.Client(base_url=fuzz_gateway.url, timeout=30) as client:
        for name, headers in attempts.items():
            for path, body in (
                ("/v1/embeddings", {"input": "x", "model": "minilm"}),
                ("/v2/models/minilm/infer", v2_json_body([101, 102])),
            ):
                r = client.post(path, json=body, headers=headers)
                statuses[f"{name} {path}"] = r.status_code
                expected = 403 if name == "other tenant's model" else 401
                assert r.status_code == expected, (name, path, r.status_code, r.text)
                assert not LEAKS.search(r.text)
                assert ALPHA_KEY not in r.text and BETA_KEY not in r.text
        r = client.get(f"/v2/models/minilm?api_key={ALPHA_KEY}")
        assert r.status_code == 401  # never from the query string (it ends up in access logs)
    log = fuzz_gateway.log_path.read_text()
    for key in (ALPHA_KEY, BETA_KEY, LIMITED_KEY, UNLIMITED_KEY, "ts_wrong-key"):
        assert key not in log, "an API key was written to the gateway log"
    figures.update(attempts=len(statuses), all_refused=True, keys_in_log=0)


def test_key_comparison_is_constant_time_over_all_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stored hash is compared whatever the key, with hmac.compare_digest."""
    keys = [f"ts_key-{i}" for i in range(5)]
    auth = Authenticator({f"t{i}": TenantConfig(key_sha256=[hash_key(k)]) for i, k in
                          enumerate(keys)})  # fmt: skip
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for presented in (keys[0], keys[4], "ts_nobody"):
        calls.clear()
        auth.authenticate(presented)
        assert len(calls) == len(keys), presented
