"""Kubernetes manifests rendered with `kubectl kustomize` and validated offline; broken copies
fail the same checks."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from deploy.validate import manifests
from gateway.settings import Environment, GatewaySettings
from gateway.tenants import TenantConfig, generate_key, hash_key, write_tenants
from tests.deploy.conftest import DEPLOY

OVERLAYS = DEPLOY / "k8s" / "overlays"
Edit = Callable[[str, str, str], Path]


def _render(overlay: str) -> dict[str, dict[str, Any]]:
    return {manifests.name_of(o): o for o in manifests.render(OVERLAYS / overlay)}


def _container(objects: dict[str, dict[str, Any]], deployment: str) -> dict[str, Any]:
    container: dict[str, Any] = objects[f"Deployment/{deployment}"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    return container


@pytest.mark.parametrize("overlay", ["gpu", "cpu"])
def test_overlay_renders_and_validates(kubectl: str, overlay: str) -> None:
    assert manifests.check_kustomization(OVERLAYS / overlay) == []


def test_gpu_overlay_has_what_production_needs(kubectl: str) -> None:
    objects = _render("gpu")
    kinds = {name.split("/")[0] for name in objects}
    assert {"ScaledObject", "ServiceMonitor", "PrometheusRule", "HorizontalPodAutoscaler"} <= kinds
    assert {"PodDisruptionBudget/triton", "PodDisruptionBudget/gateway"} <= objects.keys()
    assert all(o["metadata"].get("namespace") == "tritonstack" for o in objects.values()
               if o["kind"] != "Namespace")  # fmt: skip

    triton_pod = objects["Deployment/triton"]["spec"]["template"]["spec"]
    triton = _container(objects, "triton")
    # Triton 2.51: NVIDIA's 24.10-py3 plus `tokenizers` (deploy/docker/triton.Dockerfile)
    assert triton["image"] == "registry.example.com/tritonstack/triton:24.10-py3"
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    args = triton["args"]
    assert "--model-control-mode=explicit" in args and "--strict-readiness=true" in args
    # the pod outlives preStop + Triton's own drain, or Kubernetes kills it mid-request
    exit_timeout = int(next(a for a in args if a.startswith("--exit-timeout-secs=")).split("=")[1])
    pre_stop = int(triton["lifecycle"]["preStop"]["exec"]["command"][1])
    assert triton_pod["terminationGracePeriodSeconds"] > pre_stop + exit_timeout
    init = triton_pod["initContainers"][0]
    assert init["image"].startswith("registry.example.com/tritonstack/models:")

    gateway_pod = objects["Deployment/gateway"]["spec"]["template"]["spec"]
    gateway = _container(objects, "gateway")
    assert gateway["image"].startswith("registry.example.com/tritonstack/gateway:")
    # the tokenizer runs in Triton (minilm_text): the gateway pod needs no model files
    assert "initContainers" not in gateway_pod
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert objects["Deployment/gateway"]["spec"]["template"]["spec"]["securityContext"][
        "runAsNonRoot"
    ]
    scaled = objects["ScaledObject/triton"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "triton"
    assert any(
        "nv_inference_queue_duration_us" in t["metadata"]["query"] for t in scaled["triggers"]
    )


def test_gateway_config_and_a_tenants_secret_start_a_production_gateway(
    kubectl: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rendered ConfigMap + env + a tenants file made as deploy/README.md says are settings
    the gateway accepts in production (every variable is a real setting)."""
    objects = _render("gpu")
    config = next(o for n, o in objects.items() if n.startswith("ConfigMap/gateway-config"))
    env = dict(config["data"])
    for e in _container(objects, "gateway")["env"]:  # Secret references: a stand-in value
        env[e["name"]] = e["value"] if "value" in e else f"from-{e['valueFrom']['secretKeyRef']}"
    fields = {f"GATEWAY_{name.upper()}" for name in GatewaySettings.model_fields}
    assert set(env) - fields == set(), "unknown GATEWAY_ variables"

    key = generate_key()
    tenants = tmp_path / "tenants.toml"
    write_tenants(tenants, {"acme": TenantConfig(key_sha256=[hash_key(key)], models=["minilm"])})
    env["GATEWAY_TENANTS_FILE"] = str(tenants)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = GatewaySettings()
    assert settings.environment is Environment.production and settings.host == "0.0.0.0"
    assert settings.redis_url == "redis://redis:6379/0" and settings.redis_username == "gateway"
    assert settings.redis_password is not None and settings.triton_admin_key is not None
    assert settings.metrics_port != settings.port

    # and a development tenant is refused there, as it must be
    write_tenants(tenants, {"dev": TenantConfig(key_sha256=[hash_key(key)], development=True)})
    with pytest.raises(ValidationError, match="development tenant"):
        GatewaySettings()


# -- the checks fail on broken manifests -------------------------------------------------------
@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        pytest.param(  # a typo: strict schemas refuse unknown fields
            "k8s/base/triton.yaml",
            "              path: /v2/health/live",
            "              paht: /v2/health/live",
            "paht",
            id="unknown-field",
        ),
        pytest.param(
            "k8s/base/gateway.yaml",
            "  replicas: 2\n",
            "  replicas: two\n",
            "is not of type 'integer'",
            id="wrong-type",
        ),
        pytest.param(
            "k8s/base/triton.yaml",
            "      targetPort: metrics\n",
            "      targetPort: metric\n",
            "targetPort 'metric' is no container port",
            id="service-port",
        ),
        pytest.param(
            "k8s/base/gateway.yaml",
            "              port: http\n            periodSeconds: 10",
            "              port: web\n            periodSeconds: 10",
            "livenessProbe uses unknown port 'web'",
            id="probe-port",
        ),
        pytest.param(
            "k8s/overlays/gpu/kustomization.yaml",
            "    newTag: 0.1.0\n",
            "    newTag: latest\n",
            "has no pinned tag",
            id="unpinned-image",
        ),
        pytest.param(
            "monitoring/servicemonitors.yaml",
            "    - port: metrics\n",
            "    - port: metricz\n",
            "no selected Service has port 'metricz'",
            id="servicemonitor-port",
        ),
        pytest.param(
            "k8s/components/keda/triton-scaledobject.yaml",
            '        threshold: "10"\n',
            "",
            "metadata.threshold is required",
            id="scaledobject-field",
        ),
        pytest.param(
            "k8s/components/keda/triton-scaledobject.yaml",
            "    name: triton\n  minReplicaCount",
            "    name: trition\n  minReplicaCount",
            "scale target 'trition' not rendered",
            id="scale-target",
        ),
        pytest.param(
            "k8s/base/kustomization.yaml",
            "  - gateway.yaml\n",
            "  - gateway.yml\n",
            "kubectl kustomize",
            id="render-error",
        ),
    ],
)
def test_checks_fail_on_a_broken_manifest(
    kubectl: str, deploy_copy: Edit, file: str, old: str, new: str, expected: str
) -> None:
    root = deploy_copy(file, old, new)
    problems = manifests.check_kustomization(root / "k8s" / "overlays" / "gpu")
    assert any(expected in p for p in problems), problems


def test_unknown_custom_kind_is_a_problem_not_a_pass() -> None:
    obj = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert manifests.schema_problems([obj]) == [
        "Widget/w: no schema and no check: Couldn't find schema for kind Widget with api "
        f"version example.com/v1 for kubernetes version {manifests.KUBERNETES_VERSION[:4]}"
    ]


def test_prometheus_rule_without_expr_is_a_problem() -> None:
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "r"},
        "spec": {"groups": [{"name": "g", "rules": [{"alert": "A"}]}]},
    }
    good = copy.deepcopy(rule)
    good["spec"]["groups"][0]["rules"][0]["expr"] = "up == 0"
    assert manifests.schema_problems([good]) == []
    assert manifests.schema_problems([rule]) == [
        "PrometheusRule/r: rule {'alert': 'A'} needs expr and exactly one of alert/record"
    ]
