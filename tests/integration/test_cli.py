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


def test_failed_gateway_start_leaves_nothing_running(stack_env: dict[str, str]) -> None:
    """`up` is all or nothing: a service that fails to start is reported with its own message,
    the supervisor stops what did start (no orphan Triton or redis-server), `status` says why."""
    started = cli({**stack_env, "GATEWAY_MAX_BODY_BYTES": "1"}, "up")  # invalid: >= 1024
    assert started.returncode == 1
    assert "max_body_bytes" in started.stderr  # the gateway's own message, via its log tail
    shown = cli(stack_env, "status", "--json")
    info = json.loads(shown.stdout)
    assert shown.returncode == 3 and not info["running"]
    assert (
        info["supervisor"]["phase"].startswith("failed")
        and "gateway" in info["supervisor"]["error"]
    )
    assert info["gateway"]["state"] == "failed"
    for name in ("triton", "redis"):
        assert info[name]["state"] == "stopped" and info[name]["pid"] is None
    home = stack_env["TRITONSTACK_HOME"]
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if home in _read(p)]
    assert not list(Path("/dev/shm").glob(f"{info['shm_prefix']}*"))
    assert cli(stack_env, "down").returncode == 0  # forgets the failed stack


def _read(path: Path) -> str:
    try:
        return path.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


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
