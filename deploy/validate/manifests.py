"""Kubernetes manifests checked without a cluster: render, schemas, custom resources, references.

* ``render`` runs ``kubectl kustomize`` (Kustomize is built into kubectl; no cluster needed).
* ``schema_problems`` validates each built-in object against the Kubernetes OpenAPI schemas
  bundled in the ``kubernetes-validate`` wheel (offline), strictly: unknown fields are errors.
* Custom resources (ServiceMonitor, PrometheusRule, ScaledObject) have no bundled schema: they
  are skipped explicitly and their required fields checked here instead. A kind that is neither
  known to the schemas nor listed here is a problem, so nothing passes unchecked.
* ``reference_problems`` checks what the API server would accept but the cluster would not run:
  selectors that match no pod, named ports that do not exist, ConfigMaps and Secrets that are
  neither rendered nor created by the operator, images without a pinned tag; for an Indexed Job
  (batch scoring), that its workers setting equals its completions and that the Triton address
  it scores against is a Service port, found among the objects or in ``context`` (the overlay it
  runs beside).
* ``security_problems`` checks what the cluster would run but should not (``security.py``).

Each check returns a list of problems (empty: fine) of the form ``Kind/name: what is wrong``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from deploy.local.errors import DeployError, RuntimeMissingError
from deploy.validate import security

KUBERNETES_VERSION = "1.31.0"  # the oldest minor we support; schemas are in the wheel
RENDER_TIMEOUT_S = 60.0
# Secrets created by the operator, never rendered from git (deploy/README.md says how).
EXTERNAL_SECRETS = frozenset({"gateway-tenants", "triton-admin", "redis-auth"})

Manifest = dict[str, Any]


class RenderError(DeployError):
    """``kubectl kustomize`` refused a kustomization; carries its error output."""


def kubectl_binary() -> str:
    found = shutil.which("kubectl")
    if found is None:
        raise RuntimeMissingError(
            "kubectl is not installed (Debian 12 has no current kubectl package): install it "
            "from https://kubernetes.io/docs/tasks/tools/ (pkgs.k8s.io); `kubectl kustomize` "
            "needs no cluster"
        )
    return found


def render(kustomization: Path, timeout_s: float = RENDER_TIMEOUT_S) -> list[Manifest]:
    """The objects ``kubectl kustomize <kustomization>`` renders (raises :class:`RenderError`)."""
    result = subprocess.run(
        [kubectl_binary(), "kustomize", str(kustomization)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if result.returncode != 0:
        raise RenderError(f"kubectl kustomize {kustomization} failed:\n{result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def name_of(obj: Manifest) -> str:
    return f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"


# -- schemas -------------------------------------------------------------------------------------
def schema_problems(objects: Iterable[Manifest], version: str = KUBERNETES_VERSION) -> list[str]:
    """Each object against its Kubernetes schema (strict), or its custom-resource check."""
    problems: list[str] = []
    for obj in objects:
        custom = CUSTOM_RESOURCES.get((obj.get("apiVersion", ""), obj.get("kind", "")))
        if custom is not None:
            problems += [f"{name_of(obj)}: {p}" for p in custom(obj)]
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path) or "(object)"
            problems.append(f"{name_of(obj)}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{name_of(obj)}: no schema and no check: {exc.message}")
    return problems


def _missing(obj: Manifest, *paths: str) -> list[str]:
    """The dotted paths that ``obj`` lacks (or holds empty)."""
    missing = []
    for path in paths:
        node: Any = obj
        for key in path.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if node in (None, "", [], {}):
            missing.append(f"{path} is required")
    return missing


def _service_monitor(obj: Manifest) -> list[str]:
    problems = _missing(obj, "metadata.name", "spec.selector", "spec.endpoints")
    for i, endpoint in enumerate(obj.get("spec", {}).get("endpoints") or []):
        if not (endpoint.get("port") or endpoint.get("targetPort")):
            problems.append(f"spec.endpoints[{i}] needs port or targetPort")
    return problems


def _prometheus_rule(obj: Manifest) -> list[str]:
    problems = _missing(obj, "metadata.name", "spec.groups")
    for group in obj.get("spec", {}).get("groups") or []:
        if not group.get("name") or not group.get("rules"):
            problems.append(f"group {group.get('name')!r} needs a name and rules")
        for rule in group.get("rules") or []:
            if not rule.get("expr") or bool(rule.get("alert")) == bool(rule.get("record")):
                problems.append(f"rule {rule} needs expr and exactly one of alert/record")
    return problems


def _scaled_object(obj: Manifest) -> list[str]:
    problems = _missing(obj, "metadata.name", "spec.scaleTargetRef.name", "spec.triggers")
    for trigger in obj.get("spec", {}).get("triggers") or []:
        problems += [f"trigger {p}" for p in _missing(trigger, "type", "metadata")]
        if trigger.get("type") == "prometheus":
            meta = trigger.get("metadata", {})
            problems += [f"trigger {p}" for p in _missing(meta, "serverAddress", "query")]
            if "threshold" not in meta:
                problems.append("trigger metadata.threshold is required")
    return problems


CUSTOM_RESOURCES: dict[tuple[str, str], Callable[[Manifest], list[str]]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _service_monitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): _prometheus_rule,
    ("keda.sh/v1alpha1", "ScaledObject"): _scaled_object,
}


# -- references ---------------------------------------------------------------------------------
def _pod_specs(objects: Iterable[Manifest]) -> list[tuple[Manifest, Manifest]]:
    return [
        (obj, obj["spec"]["template"])
        for obj in objects
        if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job")
    ]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def reference_problems(objects: list[Manifest], context: list[Manifest] | None = None) -> list[str]:
    """Cross-object references a cluster would need to work (see the module docstring)."""
    problems: list[str] = job_problems(objects, context or [])
    by_kind: dict[str, dict[str, Manifest]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    workloads = _pod_specs(objects)
    pods = [(template.get("metadata", {}).get("labels", {}), template) for _, template in workloads]

    for owner, template in workloads:
        selector = owner["spec"].get("selector", {}).get("matchLabels", {})  # Jobs: generated
        if not _matches(selector, template["metadata"].get("labels", {})):
            problems.append(f"{name_of(owner)}: selector {selector} misses its own pod labels")
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name_of(owner)}: container {container['name']}"
            image = container.get("image", "")
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                problems.append(f"{where}: image {image!r} has no pinned tag")
            ports = {p.get("name") for p in container.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in ports:
                    problems.append(f"{where}: {probe} uses unknown port {port!r}")
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef", {}).get("name")
                if ref and ref not in by_kind.get("ConfigMap", {}):
                    problems.append(f"{where}: ConfigMap {ref!r} is not rendered")
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problems.append(f"{where}: mounts unknown volume {mount['name']!r}")
            for env in container.get("env", []):
                secret = env.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
                if secret and secret not in by_kind.get("Secret", {}) | dict.fromkeys(
                    EXTERNAL_SECRETS
                ):
                    problems.append(f"{where}: Secret {secret!r} is neither rendered nor external")
        for volume in volumes.values():
            secret = volume.get("secret", {}).get("secretName")
            if secret and secret not in by_kind.get("Secret", {}) | dict.fromkeys(EXTERNAL_SECRETS):
                problems.append(
                    f"{name_of(owner)}: Secret {secret!r} is neither rendered nor external"
                )

    for service in by_kind.get("Service", {}).values():
        selector = service["spec"].get("selector", {})
        targets = [t for labels, t in pods if _matches(selector, labels)]
        if not targets:
            problems.append(f"{name_of(service)}: selector {selector} matches no pod")
        names = {
            p.get("name")
            for t in targets
            for c in t["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort")
            if isinstance(target, str) and targets and target not in names:
                problems.append(f"{name_of(service)}: targetPort {target!r} is no container port")

    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for obj in by_kind.get(kind, {}).values():
            target = obj["spec"].get("scaleTargetRef", {})
            if target.get("name") not in by_kind.get(target.get("kind", "Deployment"), {}):
                problems.append(f"{name_of(obj)}: scale target {target.get('name')!r} not rendered")
    for pdb in by_kind.get("PodDisruptionBudget", {}).values():
        selector = pdb["spec"].get("selector", {}).get("matchLabels", {})
        if not any(_matches(selector, labels) for labels, _ in pods):
            problems.append(f"{name_of(pdb)}: selector {selector} matches no pod")
    for monitor in by_kind.get("ServiceMonitor", {}).values():
        selector = monitor["spec"].get("selector", {}).get("matchLabels", {})
        services = [
            s for s in by_kind.get("Service", {}).values()
            if _matches(selector, s["metadata"].get("labels", {}))
        ]  # fmt: skip
        ports = {p.get("name") for s in services for p in s["spec"].get("ports", [])}
        for endpoint in monitor["spec"].get("endpoints", []):
            if endpoint.get("port") and endpoint["port"] not in ports:
                problems.append(
                    f"{name_of(monitor)}: no selected Service has port {endpoint['port']!r}"
                )
    return problems


def _environment(container: Manifest, objects: list[Manifest]) -> dict[str, str]:
    """A container's environment: its ConfigMaps' data, then its own ``env`` values."""
    maps = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "ConfigMap"}
    found: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef", {}).get("name")
        found.update(maps.get(ref, {}).get("data", {}))
    found.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return found


def job_problems(objects: list[Manifest], context: list[Manifest]) -> list[str]:
    """Indexed batch Jobs: completions, workers and the Triton Service they call."""
    problems = []
    services = {
        (s["metadata"].get("namespace"), s["metadata"]["name"]): s
        for s in [*objects, *context]
        if s.get("kind") == "Service"
    }
    for job in (o for o in objects if o.get("kind") == "Job"):
        spec, where = job["spec"], name_of(job)
        namespace = job["metadata"].get("namespace")
        if spec.get("completionMode") != "Indexed":
            continue
        completions = spec.get("completions")
        if not completions:
            problems.append(f"{where}: an Indexed Job needs completions (one per shard range)")
        if spec.get("backoffLimitPerIndex") is not None and (
            spec["template"]["spec"].get("restartPolicy") != "Never"
        ):
            problems.append(f"{where}: backoffLimitPerIndex needs restartPolicy Never")
        for container in spec["template"]["spec"]["containers"]:
            env = _environment(container, objects)
            workers = env.get("BATCH_WORKERS")
            if workers is not None and str(workers) != str(completions):
                problems.append(
                    f"{where}: BATCH_WORKERS={workers} but completions={completions}: some shard "
                    "ranges would never be scored (or scored twice)"
                )
            url = env.get("BATCH_TRITON_URL")
            if url is None:
                continue
            host, _, port = url.removeprefix("dns:///").rpartition(":")
            parts = host.split(".")
            target_ns = parts[1] if len(parts) > 1 and parts[1] != "svc" else namespace
            service = services.get((target_ns, parts[0]))
            if service is None:
                problems.append(
                    f"{where}: BATCH_TRITON_URL {url!r} names no Service {parts[0]!r} in "
                    f"namespace {target_ns!r}"
                )
            elif not any(str(p.get("port")) == port for p in service["spec"].get("ports", [])):
                problems.append(f"{where}: Service {parts[0]!r} has no port {port} ({url!r})")
    return problems


def check_kustomization(
    kustomization: Path,
    version: str = KUBERNETES_VERSION,
    context: list[Manifest] | None = None,
) -> list[str]:
    """Render one kustomization and run every check on its objects; ``context``: objects of
    another kustomization they refer to (the overlay a batch Job runs beside)."""
    try:
        objects = render(kustomization)
    except RenderError as exc:
        return [str(exc)]
    return (
        schema_problems(objects, version)
        + reference_problems(objects, context)
        + security.security_problems(objects, context)
    )
