"""The README's curl, OpenAI-client and /v1/score blocks, run as written against the real gateway
(the session one in front of Triton and Redis; a scoring one in front of the feature store)."""

from __future__ import annotations

import json

import pytest

from deploy.local.gateway import GatewayProcess
from deploy.local.redis import RedisServer
from deploy.local.triton import TritonServer
from tests.fixtures_features import FeatureEnv
from tests.fixtures_gateway import ALPHA_KEY, StartGateway
from tests.readme_snippets import run_snippets, snippets

pytestmark = pytest.mark.integration

SNIPPETS = {"env", "curl-embeddings", "openai-client", "curl-v2-infer", "curl-score"}


def _env(gateway: GatewayProcess) -> dict[str, str]:
    """What `eval "$(tritonstack status --env)"` sets (tested in tests/integration/test_cli.py)."""
    return {"TRITONSTACK_URL": gateway.url, "TRITONSTACK_KEY": ALPHA_KEY}


def test_the_readme_has_every_tested_snippet() -> None:
    assert set(snippets()) == SNIPPETS


def test_curl_embeddings(gateway: GatewayProcess) -> None:
    done = run_snippets(["curl-embeddings"], _env(gateway))
    assert done.returncode == 0, done.stdout + done.stderr
    body = json.loads(done.stdout)
    assert [len(d["embedding"]) for d in body["data"]] == [384, 384]
    assert body["usage"]["prompt_tokens"] > 4


def test_openai_client(gateway: GatewayProcess) -> None:
    done = run_snippets(["openai-client"], _env(gateway))
    assert done.returncode == 0, done.stdout + done.stderr
    vectors, _, _, dim, _, tokens, _ = done.stdout.split()
    assert (vectors, dim) == ("2", "384") and int(tokens) > 4


def test_curl_v2_infer(gateway: GatewayProcess) -> None:
    done = run_snippets(["curl-v2-infer"], _env(gateway))
    assert done.returncode == 0, done.stdout + done.stderr
    outputs = {o["name"]: o for o in json.loads(done.stdout)["outputs"]}
    assert outputs["sentence_embedding"]["shape"] == [1, 384]


def test_a_snippet_that_fails_fails_the_run(gateway: GatewayProcess) -> None:
    """--fail-with-body: a 401 is an error of the block, not an HTTP body that looks fine."""
    done = run_snippets(["curl-embeddings"], {**_env(gateway), "TRITONSTACK_KEY": "ts_wrong"})
    assert done.returncode != 0 and "401" in done.stderr


def test_curl_score(
    start_gateway: StartGateway,
    ranker_triton: TritonServer,
    redis_server: RedisServer,
    redis_features: FeatureEnv,
) -> None:
    scoring = start_gateway(
        ranker_triton.grpc_url,
        redis_server.url,
        extra_env={
            "FEATURES_STATE_DIR": str(redis_features.settings.state_dir),
            "FEATURES_REDIS_URL": str(redis_features.settings.redis_url),
            "GATEWAY_SCORING_ENABLED": "true",
        },
    )
    done = run_snippets(["curl-score"], _env(scoring))
    assert done.returncode == 0, done.stdout + done.stderr
    body = json.loads(done.stdout)
    assert [s["entity_id"] for s in body["scores"]] == [1001, 1003]
    assert all(s["features"] for s in body["scores"])
