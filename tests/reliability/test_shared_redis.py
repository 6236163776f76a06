"""Redis as the production manifest runs it (deploy/k8s/components/redis/redis.yaml: no
anonymous user, one ACL user for the gateway with a password from a Secret), shared by two
gateway replicas: limits, the signed cache and key revocations, which reach every replica
within seconds (a Secret volume takes a minute or more)."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from deploy.local.gateway import GatewayProcess
from deploy.local.redis import RedisServer
from deploy.local.triton import TritonServer
from tests.fixtures_gateway import StartGateway, v2_json_body
from tests.reliability.conftest import (
    ATTACK_TENANTS_JSON,
    HONEST_KEY,
    TINY_A_KEY,
    bearer,
    drive,
    summarize,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = secrets.token_urlsafe(24)


def manifest_acl(password: str) -> list[str]:
    """The Redis container's ACL arguments as the manifest has them, password filled in."""
    docs = yaml.safe_load_all((ROOT / "deploy/k8s/components/redis/redis.yaml").read_text())
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    args = [str(a) for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]]
    acl = args[args.index("--user") :]
    return [a.replace("$(REDIS_PASSWORD)", password) for a in acl]


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("acl-redis"), extra_args=manifest_acl(PASSWORD)) as s:
        yield s


@pytest.fixture(scope="module")
def replicas(
    start_gateway: StartGateway, triton: TritonServer, acl_redis: RedisServer
) -> list[GatewayProcess]:
    env: dict[str, str | None] = {
        "GATEWAY_TENANTS": ATTACK_TENANTS_JSON,
        "GATEWAY_REDIS_USERNAME": "gateway",
        "GATEWAY_REDIS_PASSWORD": PASSWORD,
        "GATEWAY_CACHE_SIGNING_KEY": secrets.token_urlsafe(32),
    }
    return [start_gateway(triton.grpc_url, acl_redis.url, extra_env=env) for _ in range(2)]


def test_redis_refuses_anonymous_clients_and_bounds_the_gateway_user(
    acl_redis: RedisServer,
) -> None:
    def client(**auth: str) -> redis.Redis:  # no retries: a refusal is the answer
        return redis.Redis(host=acl_redis.host, port=acl_redis.port, socket_timeout=5,
                           retry=Retry(NoBackoff(), 0), **auth)  # fmt: skip

    anonymous = client()
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    gateway = client(username="gateway", password=PASSWORD)
    assert gateway.ping()
    gateway.set("tritonstack:probe", b"1")
    for forbidden in (
        lambda: gateway.set("elsewhere", b"1"),
        gateway.flushall,
        lambda: gateway.config_get("*"),
        lambda: gateway.keys("*"),
        gateway.script_flush,
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()
    with pytest.raises(redis.exceptions.AuthenticationError):
        client(username="gateway", password="wrong").ping()


async def test_replicas_share_limits_and_the_signed_cache(
    replicas: list[GatewayProcess],
) -> None:
    first, second = replicas
    body = v2_json_body([101, 3030, 102])
    with httpx.Client(timeout=30) as client:
        ready = [client.get(f"{g.url}/readyz").json()["checks"]["redis"] for g in replicas]
        miss = client.post(f"{first.url}/v2/models/minilm/infer", json=body,
                           headers=bearer(HONEST_KEY))  # fmt: skip
        time.sleep(0.3)  # the write-behind SET lands
        hit = client.post(f"{second.url}/v2/models/minilm/infer", json=body,
                          headers=bearer(HONEST_KEY))  # fmt: skip
    assert ready == [True, True]
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
    assert hit.content == miss.content

    def limited(session: Any, i: int) -> Any:
        return session.get("/v2/models/minilm", headers=bearer(TINY_A_KEY))

    answers = await asyncio.gather(
        *(drive(g.url, limited, clients=3, requests_per_client=2) for g in replicas)
    )
    statuses = summarize([o for a in answers for o in a])["by_status"]
    assert statuses == {"200": 2, "429": 10}  # burst 2 across both replicas


def _revocation(acl_redis: RedisServer, *args: str) -> None:
    url = f"redis://gateway:{PASSWORD}@{acl_redis.host}:{acl_redis.port}/0"
    subprocess.run(
        [sys.executable, "-m", "gateway.revocation", "--redis-url", url, *args],
        check=True, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


def test_a_revoked_tenant_is_refused_by_every_replica_within_seconds(
    replicas: list[GatewayProcess], acl_redis: RedisServer, figures: dict
) -> None:
    def statuses() -> list[int]:
        return [
            httpx.get(
                f"{g.url}/v2/models/minilm", headers=bearer(HONEST_KEY), timeout=10
            ).status_code
            for g in replicas
        ]

    assert statuses() == [200, 200]
    _revocation(acl_redis, "--tenant", "honest")
    revoked = time.monotonic()
    while statuses() != [401, 401] and time.monotonic() - revoked < 10:
        time.sleep(0.05)
    refused_after = time.monotonic() - revoked
    _revocation(acl_redis, "--tenant", "honest", "--restore")
    restored = time.monotonic()
    while statuses() != [200, 200] and time.monotonic() - restored < 10:
        time.sleep(0.05)
    figures.update(refused_on_every_replica_after_s=round(refused_after, 2),
                   accepted_again_after_s=round(time.monotonic() - restored, 2))  # fmt: skip
    assert refused_after < 5
    assert statuses() == [200, 200]
