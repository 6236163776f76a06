"""The single-GPU-host Compose file: docker-compose's own schema (offline) and the structure
the stack relies on; broken copies fail."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from deploy.validate import compose
from tests.deploy.conftest import DEPLOY

COMPOSE = DEPLOY / "compose" / "compose.yaml"
Edit = Callable[[str, str, str], Path]
needs_docker_compose = pytest.mark.skipif(
    compose.docker_compose_binary() is None,
    reason="docker-compose is not installed (make setup installs Debian's docker-compose)",
)


def test_compose_file_passes() -> None:
    assert compose.check_compose(COMPOSE) == []


def test_compose_mounts_the_shared_monitoring_files() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    mounts = " ".join(services["prometheus"]["volumes"] + services["grafana"]["volumes"])
    for source in ("monitoring/prometheus", "monitoring/grafana/provisioning",
                   "monitoring/grafana/dashboards"):  # fmt: skip
        assert (COMPOSE.parent / f"../{source}").resolve().is_dir() and source in mounts
    assert services["gateway"]["environment"]["GATEWAY_HOST"] == "0.0.0.0"


@needs_docker_compose
def test_docker_compose_refuses_a_bad_condition(deploy_copy: Edit) -> None:
    root = deploy_copy(
        "compose/compose.yaml", "condition: service_healthy", "condition: when_healthy"
    )
    problems = compose.compose_config_problems(root / "compose" / "compose.yaml")
    assert problems and "when_healthy" in problems[0], problems


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(
            "              capabilities: [gpu]", "              capabilities: [utility]",
            "triton: no GPU reservation", id="no-gpu",
        ),
        pytest.param(
            '      test: ["CMD-SHELL", "REDISCLI_AUTH=$$(cat /run/secrets/redis_password) '
            'redis-cli --user gateway ping | grep -q PONG"]\n', "      disable: true\n",
            "gateway: waits for redis to be healthy; it has no healthcheck", id="no-healthcheck",
        ),
        pytest.param(
            "      redis:\n        condition: service_healthy",
            "      cache:\n        condition: service_healthy",
            "gateway: depends on unknown service 'cache'", id="unknown-dependency",
        ),
    ],
)  # fmt: skip
def test_structure_checks_fail_on_a_broken_compose_file(
    deploy_copy: Edit, old: str, new: str, expected: str
) -> None:
    root = deploy_copy("compose/compose.yaml", old, new)
    problems = compose.structure_problems(
        yaml.safe_load((root / "compose/compose.yaml").read_text())
    )
    assert any(expected in p for p in problems), problems
