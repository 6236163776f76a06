"""Pure logic of the gateway: GCRA, caches, tenants and settings, v2 parsing, error mapping."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from gateway.cache import CachedResponse, LocalCache, cache_key
from gateway.errors import GatewayError
from gateway.ratelimit import LocalRateLimiter, gcra
from gateway.settings import GatewaySettings
from gateway.tenants import (
    Authenticator,
    TenantConfig,
    generate_key,
    hash_key,
    load_tenants,
    write_tenants,
)
from gateway.upstream import CircuitBreaker, ModelInfo, TensorInfo, map_triton_error
from gateway.v2 import HEADER_LENGTH, parse_infer_request


# -- GCRA ---------------------------------------------------------------------------------------
def test_gcra_allows_the_burst_then_the_rate() -> None:
    tat, now, allowed = 0.0, 100.0, 0
    for _ in range(10):  # all at one instant: only the burst passes
        decision, tat = gcra(tat, now, rate=2.0, burst=4)
        allowed += decision.allowed
    assert allowed == 4
    assert decision.retry_after_s == pytest.approx(0.5)
    assert decision.headers()["Retry-After"] == "1"
    decision, tat = gcra(tat, now + 0.5, rate=2.0, burst=4)  # one interval later: one more
    assert decision.allowed and decision.remaining == 0
    decision, _ = gcra(tat, now + 0.5, rate=2.0, burst=4)
    assert not decision.allowed


async def test_local_limiter_keys_are_independent() -> None:
    clock = iter([0.0] * 10)
    limiter = LocalRateLimiter(clock=lambda: next(clock))
    assert (await limiter.hit("a", 1, 1)).allowed
    assert not (await limiter.hit("a", 1, 1)).allowed
    assert (await limiter.hit("b", 1, 1)).allowed


# -- caches -------------------------------------------------------------------------------------
def test_cache_key_is_canonical_unambiguous_and_per_tenant() -> None:
    assert cache_key("t", "m", "1", b"ab", b"c") == cache_key("t", "m", "1", b"ab", b"c")
    assert cache_key("t", "m", "1", b"ab", b"c") != cache_key("t", "m", "1", b"a", b"bc")
    assert cache_key("t", "m", "1", b"x") != cache_key("t", "m", "2", b"x")
    assert cache_key("t", "m", "1", b"x") != cache_key("u", "m", "1", b"x")


def test_cached_response_round_trip() -> None:
    value = CachedResponse(b"\x00body", "application/octet-stream", ((HEADER_LENGTH, "12"),))
    assert CachedResponse.decode(value.encode()) == value


async def test_local_cache_bounds_entries_and_bytes() -> None:
    cache = LocalCache(max_entries=3, max_bytes=3000, ttl_s=60)
    for i in range(5):
        await cache.put(str(i), CachedResponse(b"x" * 10, "text/plain"))
    kept = [i for i in range(5) if await cache.get(str(i)) is not None]
    assert kept == [2, 3, 4]  # least recently used went first
    await cache.put("big", CachedResponse(b"x" * 5000, "text/plain"))  # over the whole bound
    assert await cache.get("big") is None


# -- tenants and settings -----------------------------------------------------------------------
def test_tenants_file_round_trip_and_auth(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "tenants.toml"
    write_tenants(path, {"acme": TenantConfig(key_sha256=[hash_key(key)], models=["minilm"])})
    assert key not in path.read_text()
    assert path.stat().st_mode & 0o077 == 0
    auth = Authenticator(load_tenants(path))
    tenant = auth.authenticate(key)
    assert tenant is not None and tenant.name == "acme"
    assert tenant.config.may_use("minilm") and not tenant.config.may_use("other")
    assert auth.authenticate(key + "x") is None and auth.authenticate(None) is None


def test_bad_hash_is_refused() -> None:
    with pytest.raises(ValidationError, match="SHA-256"):
        TenantConfig(key_sha256=["not-a-hash"])


def _tenants(**config: object) -> str:
    return json.dumps({"t": {"key_sha256": [hash_key("ts_" + "k" * 40)], **config}})


def test_production_refuses_development_tenants_and_placeholders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_ENVIRONMENT", "production")
    monkeypatch.setenv("GATEWAY_TENANTS", _tenants(development=True))
    with pytest.raises(ValidationError, match="development tenant"):
        GatewaySettings()
    monkeypatch.setenv("GATEWAY_TENANTS", json.dumps({"t": {"key_sha256": [hash_key("changeme")]}}))
    with pytest.raises(ValidationError, match="placeholder key"):
        GatewaySettings()
    monkeypatch.setenv("GATEWAY_TENANTS", _tenants())
    assert GatewaySettings().environment == "production"
    monkeypatch.setenv("GATEWAY_ENVIRONMENT", "development")
    monkeypatch.setenv("GATEWAY_TENANTS", _tenants(development=True))
    assert "t" in GatewaySettings().tenants


def test_gateway_without_tenants_exits_with_a_message(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "GATEWAY_TENANTS_FILE": str(tmp_path / "missing.toml")},
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "does not exist" in done.stderr


# -- v2 parsing ---------------------------------------------------------------------------------
MODEL = ModelInfo(
    name="m",
    versions=["1", "3"],
    max_batch_size=4,
    inputs=[TensorInfo("x", "FP32", (-1, 3)), TensorInfo("s", "BYTES", (-1, 1), optional=True)],
    outputs=[TensorInfo("y", "FP32", (-1, 1))],
)


def test_binary_and_json_requests_parse_to_the_same_tensors() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    strings = np.array([[b"a"], [b"bc"]], dtype=object)
    s_raw = serialize_byte_tensor(strings).item()
    head = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [2, 3], "datatype": "FP32",
                 "parameters": {"binary_data_size": x.nbytes}},
                {"name": "s", "shape": [2, 1], "datatype": "BYTES",
                 "parameters": {"binary_data_size": len(s_raw)}},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    binary = parse_infer_request(head + x.tobytes() + s_raw, len(head), MODEL, max_text_chars=10)
    as_json = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": x.tolist()},
                {"name": "s", "shape": [2, 1], "datatype": "BYTES", "data": ["a", "bc"]},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    parsed = parse_infer_request(as_json, None, MODEL, max_text_chars=10)
    assert binary.cache_parts() == parsed.cache_parts()
    np.testing.assert_array_equal(binary.inputs[0].array, x)
    assert binary.outputs == [("y", True)]
    assert MODEL.version == "3"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"shape": [5, 3], "data": [0.0] * 15}, "outside 1..4"),
        ({"shape": [1, 2], "data": [0.0] * 2}, "dimension 1 must be 3"),
        ({"data": [float("inf"), 0.0, 0.0]}, "NaN or Inf"),
        ({"data": [True, False, True]}, "must be numbers"),
        ({"parameters": {"binary_data_size": 12}}, "exceeds the binary data left"),
    ],
)
def test_v2_rejections(change: dict[str, object], fragment: str) -> None:
    item = {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0.0, 1.0, 2.0], **change}
    body = json.dumps({"inputs": [item]}).encode()
    with pytest.raises(GatewayError, match=fragment) as info:
        parse_infer_request(body, None, MODEL, max_text_chars=10)
    assert info.value.status == 400


def test_leftover_binary_bytes_are_refused() -> None:
    head = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                                   "data": [0, 1, 2]}]}).encode()  # fmt: skip
    with pytest.raises(GatewayError, match="belong to no input"):
        parse_infer_request(head + b"\x00" * 4, len(head), MODEL, max_text_chars=10)


# -- upstream error mapping and the breaker ------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "message", "code", "http"),
    [
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", "queue_full", 429),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", "upstream_timeout", 504),
        (
            "StatusCode.UNAVAILABLE",
            "failed to connect to all addresses",
            "upstream_unavailable",
            503,
        ),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'x'", "model_not_found", 404),
        ("StatusCode.INVALID_ARGUMENT", "unexpected shape", "invalid_input", 400),
        ("StatusCode.INTERNAL", "python model crashed", "upstream_error", 502),
    ],
)
def test_triton_errors_map_to_actionable_statuses(
    status: str, message: str, code: str, http: int
) -> None:
    error = map_triton_error(InferenceServerException(message, status=status), "m")
    assert (error.code, error.status) == (code, http)


def test_circuit_breaker_opens_and_half_opens() -> None:
    breaker = CircuitBreaker(failures=2, cooldown_s=0.05)
    breaker.failure()
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    import time

    time.sleep(0.06)
    assert breaker.allow() and not breaker.allow()  # one trial call only
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()
