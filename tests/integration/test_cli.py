"""`tritonstack up | status --json | infer | down` as a user runs them, in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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

    for protocol in ("grpc", "http"):
        out = cli(
            stack_env, "infer", "hello world", "a second text", "--protocol", protocol, "--full"
        )
        assert out.returncode == 0, out.stderr
        vectors = json.loads(out.stdout)["embeddings"]
        assert len(vectors) == 2 and len(vectors[0]) == 384

    stopped = cli(stack_env, "down")
    assert stopped.returncode == 0, stopped.stderr
    with pytest.raises(ProcessLookupError):
        os.killpg(triton["pid"], 0)
    gone = cli(stack_env, "status", "--json")
    assert gone.returncode == 3 and json.loads(gone.stdout)["running"] is False


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
