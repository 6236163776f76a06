"""`tritonstack up | status --json | infer | down` as a user runs them, in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from deploy.local import TritonRuntime

pytestmark = pytest.mark.integration


def cli(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tritonstack.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture()
def stack_env(tmp_path: Path, model_repository: Path, runtime: TritonRuntime):
    env = {
        **os.environ,
        "TRITONSTACK_HOME": str(tmp_path / "home"),
        "TRITONSTACK_MODEL_REPOSITORY": str(model_repository),
        "TRITONSTACK_RUNTIME_ENV": str(runtime.env_dir),
        "COLUMNS": "200",
    }
    yield env
    cli(env, "down", timeout=60)  # never leave a server behind, even when a test failed


def test_up_status_infer_down(stack_env: dict[str, str]) -> None:
    started = cli(stack_env, "up")
    assert started.returncode == 0, started.stderr
    again = cli(stack_env, "up")  # idempotent: reports the running server, starts no second
    assert again.returncode == 0

    shown = cli(stack_env, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    triton = info["triton"]
    assert info["running"] and triton["ready"]
    assert triton["grpc"].startswith("127.0.0.1:") and triton["http"].startswith("http://127.0")
    assert str(triton["pid"]) in started.stdout + again.stdout

    gateway, redis = info["gateway"], info["redis"]
    assert gateway["ready"] and redis["alive"], info
    key = gateway["dev_api_key"]
    assert key.startswith("ts_") and f"Bearer {key}" in started.stdout  # curl examples
    embedded = httpx.post(
        f"{gateway['url']}/v1/embeddings",
        json={"input": "through the gateway", "model": "minilm"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert embedded.status_code == 200, embedded.text
    assert len(embedded.json()["data"][0]["embedding"]) == 384
    tenants = Path(stack_env["TRITONSTACK_HOME"]) / "gateway" / "tenants.toml"
    assert key not in tenants.read_text()  # only its hash is stored

    for protocol in ("grpc", "http"):
        out = cli(
            stack_env, "infer", "hello world", "a second text", "--protocol", protocol, "--full"
        )
        assert out.returncode == 0, out.stderr
        vectors = json.loads(out.stdout)["embeddings"]
        assert len(vectors) == 2 and len(vectors[0]) == 384

    stopped = cli(stack_env, "down")
    assert stopped.returncode == 0, stopped.stderr
    for pid in (triton["pid"], gateway["pid"], redis["pid"]):
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    gone = cli(stack_env, "status", "--json")
    assert gone.returncode == 3 and json.loads(gone.stdout)["running"] is False


def test_failed_gateway_start_leaves_nothing_unrecorded(stack_env: dict[str, str]) -> None:
    """A service that fails during `up` is reported; what did start is recorded, so `down`
    stops it (no orphan redis-server)."""
    started = cli({**stack_env, "GATEWAY_MAX_BODY_BYTES": "1"}, "up")  # invalid: >= 1024
    assert started.returncode == 1
    assert "max_body_bytes" in started.stderr  # the gateway's own message, via its log tail
    info = json.loads(cli(stack_env, "status", "--json").stdout)
    redis_pid = info["redis"]["pid"]
    assert info["gateway"] is None and info["triton"]["alive"]
    assert cli(stack_env, "down").returncode == 0
    for pid in (redis_pid, info["triton"]["pid"]):
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)


def test_infer_without_a_stack_says_what_to_do(stack_env: dict[str, str]) -> None:
    out = cli(stack_env, "infer", "hello")
    assert out.returncode == 1
    assert "no running stack" in out.stderr and "tritonstack up" in out.stderr


def test_bad_protocol_is_a_usage_error(stack_env: dict[str, str]) -> None:
    out = cli(stack_env, "infer", "hello", "--protocol", "smtp")
    assert out.returncode == 1 and "--protocol must be 'grpc' or 'http'" in out.stderr


def test_down_without_a_stack_is_an_error(stack_env: dict[str, str]) -> None:
    out = cli(stack_env, "down")
    assert out.returncode == 1 and "no stack recorded" in out.stderr
