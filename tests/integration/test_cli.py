"""The CLI as a user runs it, in subprocesses, against one real `tritonstack up` stack.

The module's stack serves a private copy (hard links) of the session's exported repository, so
that exporting into it while it runs touches nothing another test reads. Its tests run in
order: up, up again, status, infer, export into the running stack, reload, bench, the README's
quickstart, down (twice).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from deploy.local import TritonRuntime
from tests.readme_snippets import run_snippets

pytestmark = pytest.mark.integration


class Tiny(torch.nn.Module):
    """A user's model small enough to export in a second."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def build_tiny() -> torch.nn.Module:
    return Tiny()


def cli(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tritonstack.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _env(home: Path, repository: Path, runtime: TritonRuntime) -> dict[str, str]:
    return {
        **os.environ,
        "TRITONSTACK_HOME": str(home),
        "TRITONSTACK_MODEL_REPOSITORY": str(repository),
        "TRITONSTACK_RUNTIME_ENV": str(runtime.env_dir),
        "COLUMNS": "200",
    }


@dataclass
class Stack:
    env: dict[str, str]
    repository: Path
    started: subprocess.CompletedProcess

    def status(self) -> dict:
        shown = cli(self.env, "status", "--json")
        assert shown.returncode == 0, shown.stderr
        return dict(json.loads(shown.stdout))

    def model(self, name: str) -> dict:
        (found,) = [m for m in self.status()["models"] if m["name"] == name]
        return dict(found)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, model_repository: Path, runtime: TritonRuntime
) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("cli-stack")
    repository = base / "model_repository"
    for name in ("minilm", "minilm_tokenizer", "minilm_text"):
        shutil.copytree(model_repository / name, repository / name, copy_function=os.link)
    env = _env(base / "home", repository, runtime)
    started = cli(env, "up")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield Stack(env, repository, started)
    finally:
        cli(env, "down", timeout=60)  # never leave a server behind, even when a test failed


def test_up_again_says_already_running_and_refuses_other_ports(stack: Stack) -> None:
    again = cli(stack.env, "up")  # idempotent: reports the running stack, starts no second
    assert again.returncode == 0, again.stderr
    assert "already running since 20" in again.stdout and "nothing started" in again.stdout
    http = int(stack.status()["triton"]["http"].rsplit(":", 1)[1])
    other = cli(stack.env, "up", "--http-port", str(http + 1 if http < 65535 else http - 1))
    assert other.returncode == 1
    (line,) = other.stderr.strip().splitlines()
    assert f"http port {http} (asked: " in line and "`tritonstack down` first" in line
    moved = cli({**stack.env, "TRITONSTACK_GATEWAY": "false"}, "up")
    assert moved.returncode == 1 and "gateway True (asked: False)" in moved.stderr
    assert stack.status()["triton"]["http"].endswith(f":{http}")  # still the same stack


def test_status_shows_services_models_and_gateway(stack: Stack) -> None:
    info = stack.status()
    triton, gateway, redis = info["triton"], info["gateway"], info["redis"]
    assert info["running"] and triton["ready"] and gateway["ready"] and redis["alive"], info
    assert triton["grpc"].startswith("127.0.0.1:") and triton["http"].startswith("http://127.0")
    assert str(triton["pid"]) in stack.started.stdout
    models = {m["name"]: m for m in info["models"]}
    assert models["minilm"]["served_versions"] == [1] and models["minilm"]["state"] == "READY"
    assert models["minilm"]["variant"] == "fp32"  # the session export is fp32 only
    assert models["minilm_text"]["variant"] == "ensemble"
    table = cli(stack.env, "status")
    assert table.returncode == 0
    assert f"models of {stack.repository}:" in table.stdout
    assert "│ minilm " in table.stdout and "fp32" in table.stdout

    key = gateway["dev_api_key"]
    assert key.startswith("ts_") and f"Bearer {key}" in stack.started.stdout  # curl examples
    embedded = httpx.post(
        f"{gateway['url']}/v1/embeddings",
        json={"input": "through the gateway", "model": "minilm"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert embedded.status_code == 200, embedded.text
    assert len(embedded.json()["data"][0]["embedding"]) == 384
    tenants = Path(stack.env["TRITONSTACK_HOME"]) / "gateway" / "tenants.toml"
    assert key not in tenants.read_text()  # only its hash is stored


def test_infer_over_grpc_and_http(stack: Stack) -> None:
    for protocol in ("grpc", "http"):
        out = cli(stack.env, "infer", "hello world", "a second text", "--protocol", protocol,
                  "--full")  # fmt: skip
        assert out.returncode == 0, out.stderr
        vectors = json.loads(out.stdout)["embeddings"]
        assert len(vectors) == 2 and len(vectors[0]) == 384


def test_an_export_is_served_at_once_and_reload_serves_a_new_version(stack: Stack) -> None:
    """A brand-new model exported while the stack runs is loaded and shown by `status`; a
    version put on disk by hand is served after `reload`."""
    exported = cli(
        stack.env, "export", "--model", f"{__name__}:build_tiny", "--input", "x:float32:4",
        "--name", "tiny", "--variants", "fp32",
    )  # fmt: skip
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert "loaded into the running stack" in exported.stdout
    assert "tiny: READY, serving version 1 (fp32)" in exported.stdout
    tiny = stack.model("tiny")
    assert (tiny["served_versions"], tiny["state"], tiny["variant"]) == ([1], "READY", "fp32")

    shutil.copytree(stack.repository / "tiny" / "1", stack.repository / "tiny" / "2")
    waiting = stack.model("tiny")
    assert waiting["served_versions"] == [1] and waiting["newer_on_disk"]
    assert "`tritonstack reload tiny`" in cli(stack.env, "status").stdout
    reloaded = cli(stack.env, "reload", "tiny")
    assert reloaded.returncode == 0, reloaded.stderr
    assert "tiny: READY, serving version 2 (fp32)" in reloaded.stdout
    assert stack.model("tiny")["served_versions"] == [2]
    unknown = cli(stack.env, "reload", "nosuch")
    assert unknown.returncode == 1 and "no model 'nosuch'" in unknown.stderr


def test_bench_any_concurrency_list_prints_each_point_and_plots(
    stack: Stack, tmp_path: Path
) -> None:
    out = cli(
        stack.env, "bench", "--protocol", "grpc", "--concurrency", "1,2,4",
        "--interval-ms", "800", "--save", str(tmp_path),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if " infer/s, p50 " in line]
    assert [line.split(":")[0].rsplit(" ", 1)[1] for line in lines] == ["1", "2", "4"]
    assert out.stdout.count("--concurrency-range") == 3  # one perf_analyzer run per point
    (png,) = tmp_path.glob("*-perf-analyzer.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    points = json.loads(next(tmp_path.glob("*-perf-analyzer.json")).read_text())["points"]
    assert [p["concurrency"] for p in points] == [1, 2, 4]
    assert all(p["throughput_infer_per_s"] > 0 for p in points)


def test_the_readme_quickstart_runs_as_written(stack: Stack) -> None:
    """`eval "$(tritonstack status --env)"`, then the embeddings call, in one shell."""
    done = run_snippets(["env", "curl-embeddings"], stack.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [len(d["embedding"]) for d in json.loads(done.stdout)["data"]] == [384, 384]


def test_down_is_idempotent_and_status_says_what_to_run(stack: Stack) -> None:
    info = stack.status()
    stopped = cli(stack.env, "down")
    assert stopped.returncode == 0, stopped.stderr
    shown = stopped.stdout
    assert shown.index("gateway stopped") < shown.index("triton stopped")  # progress, in order
    for name in ("triton", "gateway", "redis"):
        with pytest.raises(ProcessLookupError):
            os.killpg(info[name]["pid"], 0)
    again = cli(stack.env, "down")
    assert again.returncode == 0 and "nothing to stop" in again.stdout
    gone = cli(stack.env, "status", "--json")
    assert gone.returncode == 3 and json.loads(gone.stdout)["running"] is False
    assert "start one with `tritonstack up`" in gone.stderr  # stdout stays pure JSON
    plain = cli(stack.env, "status")
    assert plain.returncode == 3 and "tritonstack up" in plain.stderr


@pytest.fixture()
def stack_env(
    tmp_path: Path, model_repository: Path, runtime: TritonRuntime
) -> Iterator[dict[str, str]]:
    env = _env(tmp_path / "home", model_repository, runtime)
    yield env
    cli(env, "down", timeout=60)  # never leave a server behind, even when a test failed


def test_failed_gateway_start_leaves_nothing_running(stack_env: dict[str, str]) -> None:
    """`up` is all or nothing: a service that fails to start is reported with its own message,
    the supervisor stops what did start (no orphan Triton or redis-server), `status` says why."""
    started = cli({**stack_env, "GATEWAY_MAX_BODY_BYTES": "1"}, "up")  # invalid: >= 1024
    assert started.returncode == 1
    assert "max_body_bytes" in started.stderr  # the gateway's own message, via its log tail
    assert "CUDA driver version is insufficient" not in started.stderr  # no red herring
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
