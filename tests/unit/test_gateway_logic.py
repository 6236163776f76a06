"""Pure logic of the gateway: GCRA, caches, tenants and settings, v2 parsing, error mapping."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from gateway.cache import CachedResponse, LocalCache, cache_key
from gateway.errors import GatewayError, sanitize
from gateway.metrics import Metrics
from gateway.ratelimit import Gate, LocalRateLimiter, gcra
from gateway.settings import GatewaySettings
from gateway.tenants import (
    Authenticator,
    TenantConfig,
    generate_key,
    hash_key,
    load_tenants,
    write_tenants,
)
from gateway.upstream import CircuitBreaker, ModelInfo, TensorInfo, Upstream, map_triton_error
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


# -- hardening (issue 17): breaker trials, the rate-limit gate, sealed entries, sanitized text ---
class _FakeTriton:
    """``tritonclient.grpc.aio`` as far as ``Upstream`` uses it: ``infer`` answers when told."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls: list[str] = []

    async def infer(self, model_name: str, *args: object, **kwargs: object) -> str:
        self.calls.append(model_name)
        if model_name == "slow":
            await self.release.wait()
        return "result"

    async def is_server_ready(self, **kwargs: object) -> bool:
        return True

    async def is_model_ready(self, name: str, **kwargs: object) -> bool:
        return True


def _upstream(**settings: object) -> tuple[Upstream, _FakeTriton]:
    config = GatewaySettings(
        tenants={"t": TenantConfig(key_sha256=[hash_key("ts_" + "k" * 40)])}, **settings
    )
    upstream = Upstream(config, Metrics())
    fake = _FakeTriton()
    upstream._client = fake  # type: ignore[assignment]
    return upstream, fake


def _model(name: str) -> ModelInfo:
    return ModelInfo(name=name, versions=["1"], max_batch_size=0, inputs=[], outputs=[])


async def test_half_open_trial_is_freed_when_no_slot_was_free() -> None:
    upstream, fake = _upstream(
        max_inflight=1, inflight_wait_s=0.01, breaker_failures=1, breaker_cooldown_s=0.01
    )
    upstream.breaker("m").failure()  # open
    slow = asyncio.ensure_future(upstream.infer(_model("slow"), []))  # holds the only slot
    await asyncio.sleep(0.02)  # cooldown over: half-open
    with pytest.raises(GatewayError) as refused:
        await upstream.infer(_model("m"), [])  # takes the trial, finds no slot
    assert refused.value.code == "gateway_overloaded"
    fake.release.set()
    await slow
    assert await upstream.infer(_model("m"), []) == "result"  # the trial was not lost
    assert upstream.breaker("m").state == "closed" and fake.calls == ["slow", "m"]


async def test_health_calls_never_close_a_breaker_and_breakers_are_per_model() -> None:
    upstream, _ = _upstream(breaker_failures=1, breaker_cooldown_s=60)
    upstream.breaker("m").failure()
    checks = await upstream.ready(["m"])
    assert checks == {"triton": True, "model:m": True}
    assert upstream.breaker("m").state == "open"  # an unauthenticated /readyz cannot reset it
    assert upstream.breaker("other").state == "closed"
    with pytest.raises(GatewayError, match="failed repeatedly"):
        await upstream.infer(_model("m"), [])
    assert await upstream.infer(_model("other"), []) == "result"


def test_deadlines_do_not_count_as_unreachable() -> None:
    deadline = map_triton_error(
        InferenceServerException("x", status="StatusCode.DEADLINE_EXCEEDED")
    )
    dead = map_triton_error(
        InferenceServerException(
            "in ensemble 'e', Stub process 'e_tok_cpu_0' is not healthy.",
            status="StatusCode.INTERNAL",
        ),
        "e",
    )
    assert (deadline.status, deadline.code) == (504, "upstream_timeout")
    assert (dead.status, dead.code, dead.detail) == (503, "model_restarting", "e_tok_cpu_0")


def test_gate_remembers_a_tenant_over_its_limit() -> None:
    now = [100.0]
    gate = Gate(clock=lambda: now[0])
    tat = 0.0
    for _ in range(2):
        decision, tat = gcra(tat, now[0], rate=1.0, burst=2)
        gate.learn("t", decision)
    assert gate.blocked_for("t") == pytest.approx(1.0)  # the burst is spent: 1 s to the next
    now[0] += 1.0
    assert gate.blocked_for("t") == 0.0
    decision, _ = gcra(0.0, now[0], rate=1.0, burst=300, cost=256)
    assert decision.allowed and decision.remaining == 44


def test_sealed_cache_entries_refuse_forgeries_and_garbage() -> None:
    value = CachedResponse(b'{"ok":1}', "application/json")
    sealed = value.seal("rc:k", b"s" * 32)
    assert CachedResponse.unseal(sealed, "rc:k", b"s" * 32) == value
    assert CachedResponse.unseal(sealed, "rc:other", b"s" * 32) is None  # moved to another key
    assert CachedResponse.unseal(sealed, "rc:k", b"x" * 32) is None  # another signing key
    html = CachedResponse(b"<script>", "text/html")
    assert CachedResponse.unseal(html.seal("rc:k", b"s" * 32), "rc:k", b"s" * 32) is None
    assert CachedResponse.unseal(b"\xff" * 40, "rc:k", b"s" * 32) is None
    assert CachedResponse.decode(b"\xff\xff\xff\x7fgarbage") is None


def test_internal_text_is_sanitized() -> None:
    text = sanitize(
        "Error 111 connecting to 10.0.3.7:6379 via redis://u:p@redis:6379/0 in /opt/x/y.py"
    )
    assert "10.0.3.7" not in text and "redis://" not in text and "/opt/x" not in text
    assert sanitize("input[3] has 302 tokens") == "input[3] has 302 tokens"
