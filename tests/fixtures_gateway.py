"""Gateway fixtures: real gateway processes in front of the real Triton and a real Redis.

Registered as a plugin by tests/conftest.py, so every test directory can use them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest

from deploy.local.gateway import GatewayProcess
from deploy.local.harness import gateway_process, local_stack
from deploy.local.redis import RedisServer
from deploy.local.settings import StackSettings
from deploy.local.triton import TritonServer
from gateway.tenants import TenantConfig, hash_key

ALPHA_KEY = "ts_alpha-key-for-tests-0123456789abcdef"  # every model, generous limit
BETA_KEY = "ts_beta-key-for-tests-0123456789abcdef"  # only driver_ranker
LIMITED_KEY = "ts_limited-key-for-tests-0123456789ab"  # burst 6, no refill during a test
LIMITED_BURST = 6
UNLIMITED_KEY = "ts_unlimited-key-for-load-tests-0123456789"  # load tests: no rate limit

ALL = ["*"]  # a tenant lists its models: none listed is no model at all
TENANTS = {
    "alpha": TenantConfig(
        key_sha256=[hash_key(ALPHA_KEY)], models=ALL, rate_per_s=1000, burst=2000
    ),
    "beta": TenantConfig(key_sha256=[hash_key(BETA_KEY)], models=["driver_ranker"]),
    "unlimited": TenantConfig(
        key_sha256=[hash_key(UNLIMITED_KEY)],
        models=ALL,
        rate_per_s=1e9,
        burst=10**9,
        max_inflight=10_000,
    ),
    "limited": TenantConfig(
        key_sha256=[hash_key(LIMITED_KEY)], models=ALL, rate_per_s=0.001, burst=LIMITED_BURST
    ),
}
NO_SCORING = {"GATEWAY_SCORING_ENABLED": "false"}  # the scoring tests turn it on

AUTH = {"Authorization": f"Bearer {ALPHA_KEY}"}
StartGateway = Callable[..., GatewayProcess]


@pytest.fixture(scope="session")
def start_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartGateway]:
    """Start gateway processes with test tenants; all are stopped at the end of the session."""
    started: list[GatewayProcess] = []

    def start(
        triton_grpc_url: str,
        redis_url: str | None = None,
        extra_env: dict[str, str | None] | None = None,
        **settings: object,
    ) -> GatewayProcess:
        """``extra_env`` values of None leave that variable unset (e.g. to get a default)."""
        env = {**NO_SCORING, **{f"GATEWAY_{k.upper()}": str(v) for k, v in settings.items()}}
        # production is the default; these test tenants and servers are development ones
        env.setdefault("GATEWAY_ENVIRONMENT", "development")
        # no background inference probes: tests count Triton's inferences exactly (the stub
        # failure tests turn them on)
        env.setdefault("GATEWAY_PROBE_INTERVAL_S", "0")
        for name, value in (extra_env or {}).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        process = gateway_process(
            tmp_path_factory.mktemp("gateway"),
            triton_grpc_url,
            redis_url=redis_url,
            tenants=TENANTS,
            settings=env,
        )
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, triton: TritonServer, redis_server: RedisServer
) -> Iterator[GatewayProcess]:
    """The gateway with Redis (shared rate limits, Redis response cache), started by the
    stack harness in front of the session's Triton and redis-server (which it leaves running)."""
    work = tmp_path_factory.mktemp("stack")
    with local_stack(
        work,
        StackSettings(),
        triton=triton,
        redis=redis_server,
        tenants=TENANTS,
        # no background inference probes: tests count Triton's inferences exactly
        gateway_settings={**NO_SCORING, "GATEWAY_PROBE_INTERVAL_S": "0"},
    ) as stack:
        assert stack.gateway is not None
        yield stack.gateway


@pytest.fixture
def client(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30) as c:
        yield c


def token_inputs(ids: list[int]) -> dict[str, np.ndarray]:
    input_ids = np.array([ids], dtype=np.int64)
    return {
        "input_ids": input_ids,
        "attention_mask": np.ones_like(input_ids),
        "token_type_ids": np.zeros_like(input_ids),
    }


def v2_json_body(ids: list[int], **extra: object) -> dict[str, object]:
    """A JSON (non-binary) Open Inference Protocol request for the MiniLM encoder."""
    return {
        "inputs": [
            {"name": name, "datatype": "INT64", "shape": list(a.shape), "data": a.ravel().tolist()}
            for name, a in token_inputs(ids).items()
        ],
        **extra,
    }
