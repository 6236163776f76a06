"""Triton-side failures the gateway used not to see, against a real Triton run with the
production manifest's restricted-API flags (deploy/k8s/base/triton.yaml): the repository API
refuses callers without the admin key, a dead python-backend stub is found (under traffic and
idle), reloaded through that API by the gateway (which holds the key) and /readyz is false
meanwhile; an unloaded model is refused within a health round, not answered from the cache."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.grpc as grpcclient
import yaml
from tritonclient.utils import InferenceServerException

from deploy.local.gateway import GatewayProcess
from deploy.local.runtime import TritonRuntime
from deploy.local.triton import TritonServer
from tests.fixtures_gateway import StartGateway, v2_json_body
from tests.reliability.conftest import ATTACK_TENANTS_JSON, HONEST_KEY, bearer, drive, summarize

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "admin-" + secrets.token_hex(16)
HEADER = "tritonstack-admin-key"
HONEST = {**bearer(HONEST_KEY), "Cache-Control": "no-cache"}
PIPELINE = ("minilm", "minilm_tokenizer", "minilm_text")


def manifest_restrictions(key: str) -> list[str]:
    """Triton's restricted-API flags exactly as the base manifest passes them, key filled in."""
    docs = yaml.safe_load_all((ROOT / "deploy/k8s/base/triton.yaml").read_text())
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    flags = [
        a.replace("$(TRITON_ADMIN_KEY)", key)
        for a in args
        if a.startswith(("--grpc-restricted-protocol=", "--http-restricted-api="))
    ]
    assert len(flags) == 2 and all(key in f for f in flags), args
    return flags


@pytest.fixture(scope="module")
def guarded_triton(
    runtime: TritonRuntime, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    server = TritonServer(
        runtime, model_repository, work_dir=tmp_path_factory.mktemp("guarded-triton"),
        model_control_mode="explicit", startup_timeout_s=120,
        extra_args=[*(f"--load-model={m}" for m in PIPELINE), *manifest_restrictions(ADMIN_KEY),
                    "--exit-timeout-secs=3"],  # after a killed stub Triton's exit waits 30 s
    )  # fmt: skip
    with server:
        yield server


@pytest.fixture(scope="module")
def guarded_gateway(
    start_gateway: StartGateway, guarded_triton: TritonServer
) -> Iterator[GatewayProcess]:
    gateway = start_gateway(
        guarded_triton.grpc_url, None, extra_env={"GATEWAY_TENANTS": ATTACK_TENANTS_JSON},
        triton_admin_key=ADMIN_KEY, probe_interval_s=1,
    )  # fmt: skip
    yield gateway
    gateway.stop()  # before its Triton: its probes would keep Triton's shutdown waiting


def _http(triton: TritonServer, path: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(
        f"http://{triton.http_url}{path}", method="POST", headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _stub_pid(triton: TritonServer, model: str) -> int:
    """The python-backend stub process of ``model``'s first instance (a child of Triton that
    names the instance, ``<model>_cpu_0``, on its command line)."""
    instance = f"{model}_cpu_0".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            status = (proc / "status").read_text()
        except OSError:
            continue
        parent = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("PPid:"))
        if parent == triton.pid and instance in args:
            return int(proc.name)
    raise AssertionError(f"no python stub of {model} under Triton {triton.pid}")


def _ready(url: str) -> int:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


async def _until(check: Any, timeout_s: float, interval_s: float = 0.05) -> float:
    """Poll ``check`` (a blocking callable) until true; when it became true (monotonic)."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s")
        await asyncio.sleep(interval_s)
    return time.monotonic()


# -- 3. Triton's repository API needs the key ---------------------------------------------------
def test_repository_api_refuses_callers_without_the_admin_key(
    guarded_triton: TritonServer,
) -> None:
    assert _http(guarded_triton, "/v2/repository/models/minilm/unload") == 403
    assert _http(guarded_triton, "/v2/repository/index", {HEADER: "wrong"}) == 403
    client = grpcclient.InferenceServerClient(guarded_triton.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="restricted"):
            client.unload_model("minilm")
        with pytest.raises(InferenceServerException, match="restricted"):
            client.load_model("minilm", config='{"max_batch_size": 1}')
        assert all(client.is_model_ready(m) for m in PIPELINE)  # nothing was unloaded
    finally:
        client.close()
    assert _http(guarded_triton, "/v2/repository/index", {HEADER: ADMIN_KEY}) == 200


# -- 4. a dead python stub ----------------------------------------------------------------------
async def test_dead_stub_under_traffic_is_found_reloaded_and_ready_again(
    guarded_gateway: GatewayProcess, guarded_triton: TritonServer, figures: dict
) -> None:
    url = guarded_gateway.url
    assert _ready(url) == 200
    marks: dict[str, float] = {}
    stop = False

    def send(session: Any, i: int) -> Any:
        return session.post("/v1/embeddings", json={"input": f"stub {i}", "model": "minilm"},
                            headers=HONEST)  # fmt: skip

    async def controller() -> None:
        nonlocal stop
        try:
            await asyncio.sleep(1.5)
            os.kill(_stub_pid(guarded_triton, "minilm_tokenizer"), signal.SIGKILL)
            marks["killed"] = time.monotonic()
            marks["not_ready"] = await _until(lambda: _ready(url) == 503, 15)
            marks["ready"] = await _until(lambda: _ready(url) == 200, 30)
            await asyncio.sleep(1.0)
        finally:
            stop = True

    outcomes, _ = await asyncio.gather(
        drive(url, send, clients=4, until=lambda: stop), controller()
    )
    killed = marks["killed"]
    after = [o for o in outcomes if o.started > killed]
    recovered = min(o.finished for o in after if o.status == 200)
    failed = [o for o in after if o.status != 200]
    figures.update(
        summarize(outcomes),
        time_to_readiness_false_ms=round((marks["not_ready"] - killed) * 1000),
        time_to_ready_again_ms=round((marks["ready"] - killed) * 1000),
        time_to_first_200_after_kill_ms=round((recovered - killed) * 1000),
    )  # fmt: skip
    assert {o.status for o in outcomes} <= {200, 503}, summarize(outcomes)  # never a 502
    assert failed and all("retry-after" in o.headers for o in failed)
    assert marks["not_ready"] - killed < 5
    assert marks["ready"] - killed < 20 and recovered - killed < 20


async def test_dead_stub_without_traffic_is_found_by_the_probe(
    guarded_gateway: GatewayProcess, guarded_triton: TritonServer, figures: dict
) -> None:
    url = guarded_gateway.url
    await _until(lambda: _ready(url) == 200, 30)
    os.kill(_stub_pid(guarded_triton, "minilm_tokenizer"), signal.SIGKILL)
    killed = time.monotonic()
    not_ready = await _until(lambda: _ready(url) == 503, 15)
    ready = await _until(lambda: _ready(url) == 200, 30)
    r = httpx.post(f"{url}/v1/embeddings", json={"input": "idle", "model": "minilm"},
                   headers=HONEST, timeout=30)  # fmt: skip
    figures.update(
        time_to_readiness_false_ms=round((not_ready - killed) * 1000),
        time_to_ready_again_ms=round((ready - killed) * 1000),
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert not_ready - killed < 6  # probe every 1 s; a dead stub answers in about 1 s
    assert ready - killed < 20


# -- 11. an unloaded model is refused at once, not answered from the cache ---------------------
def test_unloaded_model_is_refused_within_a_health_round(
    guarded_gateway: GatewayProcess, guarded_triton: TritonServer, figures: dict
) -> None:
    body = v2_json_body([101, 5555, 102])
    headers = bearer(HONEST_KEY)
    with httpx.Client(base_url=guarded_gateway.url, timeout=30) as client:

        def send() -> httpx.Response:
            return client.post("/v2/models/minilm/infer", json=body, headers=headers)

        assert send().headers["x-cache"] == "MISS"
        assert send().headers["x-cache"] == "HIT"
        assert (
            _http(guarded_triton, "/v2/repository/models/minilm/unload", {HEADER: ADMIN_KEY}) == 200
        )
        unloaded = time.monotonic()
        try:
            while (answer := send()).status_code == 200 and time.monotonic() - unloaded < 10:
                time.sleep(0.05)
            refused_after = time.monotonic() - unloaded
        finally:
            for model in PIPELINE:
                _http(guarded_triton, f"/v2/repository/models/{model}/load", {HEADER: ADMIN_KEY})
        figures.update(refused_after_ms=round(refused_after * 1000), status=answer.status_code)
        assert answer.status_code in (404, 503), answer.text
        assert refused_after < 3  # a health round (1 s), not the 30 s metadata TTL
