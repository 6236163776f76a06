"""The rendered manifests and the Compose file are closed where issue 17 found them open: the
tenants Secret readable by the gateway's user, no service-account token or writable root in
Triton, NetworkPolicies, Redis without anonymous access, Triton's repository API behind a key,
metrics on their own port, nothing published beyond 127.0.0.1; broken copies fail the checks."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.validate import compose, manifests, security
from gateway.tenants import TenantConfig, hash_key, write_tenants
from tests.deploy.conftest import DEPLOY

OVERLAYS = DEPLOY / "k8s" / "overlays"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
Edit = Callable[[str, str, str], Path]
ROOT = Path(__file__).resolve().parents[2]


def _objects(overlay: str | Path) -> dict[str, dict[str, Any]]:
    path = overlay if isinstance(overlay, Path) else OVERLAYS / overlay
    return {manifests.name_of(o): o for o in manifests.render(path)}


def _pod(objects: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    spec: dict[str, Any] = objects[f"Deployment/{name}"]["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("overlay", ["gpu", "cpu"])
def test_rendered_manifests_are_closed(kubectl: str, overlay: str) -> None:
    objects = _objects(overlay)
    assert security.security_problems(objects.values()) == []

    gateway = _pod(objects, "gateway")  # the Secret's root-owned files: group 10001 reads them
    assert gateway["securityContext"]["fsGroup"] == gateway["securityContext"]["runAsUser"]
    tenants = next(v for v in gateway["volumes"] if v["name"] == "tenants")
    assert tenants["secret"]["defaultMode"] & 0o040
    container = gateway["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["GATEWAY_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "redis-auth"
    assert env["GATEWAY_TRITON_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "triton-admin"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": 8080,
        "metrics": 9102,
    }
    config = next(o for n, o in objects.items() if n.startswith("ConfigMap/gateway-config"))
    assert config["data"]["GATEWAY_METRICS_PORT"] == "9102"
    # production fails closed when Redis is away (a per-replica limit is limit x replicas)
    assert config["data"]["GATEWAY_RATE_LIMIT_ON_REDIS_ERROR"] == "deny"

    triton = _pod(objects, "triton")
    assert triton["automountServiceAccountToken"] is False
    args = triton["containers"][0]["args"]
    for flag in ("--grpc-restricted-protocol=", "--http-restricted-api="):
        value = next(a for a in args if a.startswith(flag))
        assert value.endswith(":tritonstack-admin-key=$(TRITON_ADMIN_KEY)"), value
        assert "model-repository" in value
    assert triton["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True

    redis = _pod(objects, "redis")["containers"][0]
    assert redis["args"][redis["args"].index("default") + 1] == "off"
    assert ">$(REDIS_PASSWORD)" in redis["args"]

    policies = {n for n in objects if n.startswith("NetworkPolicy/")}
    assert {"NetworkPolicy/default-deny", "NetworkPolicy/redis"} <= policies


def test_monitoring_scrapes_the_metrics_port(kubectl: str) -> None:
    objects = _objects("gpu")
    monitor = objects["ServiceMonitor/gateway"]["spec"]["endpoints"][0]
    assert monitor["port"] == "metrics"
    ports = {p["name"]: p["port"] for p in objects["Service/gateway"]["spec"]["ports"]}
    assert ports["metrics"] == 9102
    scrape = yaml.safe_load((DEPLOY / "monitoring/prometheus/prometheus.yml").read_text())
    gateway = next(j for j in scrape["scrape_configs"] if j["job_name"] == "gateway")
    assert gateway["static_configs"][0]["targets"] == ["gateway:9102"]


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        pytest.param(
            "k8s/base/gateway.yaml", "        fsGroup: 10001\n", "",
            "Deployment/gateway: Secret volume 'tenants' (mode 0440", id="no-fsgroup",
        ),
        pytest.param(
            "k8s/base/triton.yaml", "      automountServiceAccountToken: false  #", "      #",
            "Deployment/triton: automountServiceAccountToken must be false", id="token",
        ),
        pytest.param(
            "k8s/base/triton.yaml", "readOnlyRootFilesystem: true  #",
            "readOnlyRootFilesystem: false  #",
            "container triton: readOnlyRootFilesystem must be true", id="writable-root",
        ),
        pytest.param(
            "k8s/base/triton.yaml", "--grpc-restricted-protocol=model-repository,",
            "--grpc-restricted-protocol=",
            "leaves the repository API open: add --grpc-restricted-protocol", id="grpc-open",
        ),
        pytest.param(
            "k8s/base/triton.yaml", "admin-key=$(TRITON_ADMIN_KEY)\n            - --http",
            "admin-key=hunter2\n            - --http",
            "--grpc-restricted-protocol= names its key in the manifest", id="key-in-manifest",
        ),
        pytest.param(
            "k8s/components/redis/redis.yaml", '            - default\n            - "off"\n', "",
            "Redis lets anyone in", id="anonymous-redis",
        ),
        pytest.param(
            "k8s/base/networkpolicies.yaml", "  name: default-deny\n",
            "  name: default-deny\n  labels: {a: b}\n",
            "", id="still-fine",
        ),
        pytest.param(
            "k8s/base/networkpolicies.yaml", 'policyTypes: ["Ingress", "Egress"]\n---',
            'policyTypes: ["Ingress"]\n---', "NetworkPolicy: no default deny", id="no-default-deny",
        ),
    ],
)  # fmt: skip
def test_security_checks_fail_on_a_broken_copy(
    kubectl: str, deploy_copy: Edit, file: str, old: str, new: str, expected: str
) -> None:
    root = deploy_copy(file, old, new)
    problems = manifests.check_kustomization(root / "k8s" / "overlays" / "gpu")
    if expected:
        assert any(expected in p for p in problems), problems
    else:
        assert problems == []


def test_compose_publishes_nothing_beyond_loopback() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert compose.exposure_problems({"services": services}) == []
    published = [str(p) for s in services.values() for p in s.get("ports", [])]
    assert published and all(p.startswith("127.0.0.1:") for p in published), published
    assert "--web.enable-lifecycle" not in " ".join(services["prometheus"]["command"])
    assert "--user default off" in " ".join(services["redis"]["command"])
    assert "gateway:9102" in (DEPLOY / "monitoring/prometheus/prometheus.yml").read_text()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('"127.0.0.1:8080:8080"', '"8080:8080"', "gateway: port '8080:8080' is published"),
        ("--storage.tsdb.retention.time=15d\n", "--storage.tsdb.retention.time=15d\n"
         "      - --web.enable-lifecycle\n", "prometheus: --web.enable-lifecycle"),
        ("--user default off", "--user default on", "redis: anonymous access"),
    ],
)  # fmt: skip
def test_compose_exposure_checks_fail_on_a_broken_copy(
    deploy_copy: Edit, old: str, new: str, expected: str
) -> None:
    root = deploy_copy("compose/compose.yaml", old, new)
    problems = compose.check_compose(root / "compose" / "compose.yaml")
    assert any(expected in p for p in problems), problems


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the gateway as uid 10001")
@pytest.mark.parametrize("group_readable", [False, True])
def test_tenants_secret_as_mounted_is_read_or_refused_clearly(group_readable: bool) -> None:
    """The Secret volume's file: root-owned, 0440; the gateway runs as 10001. Without fsGroup
    (group root) it cannot read it and says so (exit 2, no traceback); with fsGroup (group
    10001, as the pod's securityContext now sets) it reads it."""
    with tempfile.TemporaryDirectory() as folder:  # pytest's tmp_path: under a 0700 folder
        Path(folder).chmod(0o755)
        _run_as_10001(Path(folder) / "tenants.toml", group_readable)


def _run_as_10001(path: Path, group_readable: bool) -> None:
    write_tenants(path, {"acme": TenantConfig(key_sha256=[hash_key("ts_" + "k" * 40)])})
    os.chown(path, 0, 10001 if group_readable else 0)
    path.chmod(0o440)
    code = (  # imported as root (the interpreter lives under /root), then run as 10001
        "import os, sys; from gateway.settings import GatewaySettings\n"
        "from pydantic import ValidationError\n"
        "os.setgroups([]); os.setgid(10001); os.setuid(10001)\n"
        "try:\n    print(len(GatewaySettings().tenants))\n"
        "except ValidationError as e:\n    print(e.errors()[0]['msg']); sys.exit(2)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "GATEWAY_TENANTS_FILE": str(path)},
    )  # fmt: skip
    if group_readable:
        assert (done.returncode, done.stdout.strip()) == (0, "1"), done.stderr
    else:
        assert done.returncode == 2, done.stderr
        assert "not readable by uid 10001" in done.stdout and "fsGroup" in done.stdout
        assert "Traceback" not in done.stderr
