"""What the cluster would run but should not: rendered manifests checked for the security
properties tritonstack relies on (each a ``Kind/name: problem`` line, empty list: fine).

* every pod: no service-account token (``automountServiceAccountToken: false``), not root,
  and every container without privilege escalation, with a read-only root file system and no
  capabilities;
* a Secret mounted as files is readable by the pod's user: its files are root-owned, so the
  pod's ``fsGroup`` with a group-readable ``defaultMode`` (or a world-readable mode) is needed;
* NetworkPolicy: a namespace-wide default deny, and every workload opened by a policy of its own
  (a batch Job rendered beside an overlay: the overlay's default deny counts, and Triton's
  policy must let the Job's pods in);
* Triton: with a model-control mode that has a repository API, the API is restricted on gRPC
  and HTTP, with a key that is not written in the manifest;
* Redis: no anonymous (``default``) user.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Manifest = dict[str, Any]
_WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


def _name(obj: Manifest) -> str:
    return f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_problems(owner: Manifest) -> list[str]:
    spec = owner["spec"]["template"]["spec"]
    where = _name(owner)
    problems = []
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}: automountServiceAccountToken must be false")
    pod_security = spec.get("securityContext", {})
    if not pod_security.get("runAsNonRoot"):
        problems.append(f"{where}: securityContext.runAsNonRoot must be true")
    for container in spec.get("initContainers", []) + spec.get("containers", []):
        security = container.get("securityContext", {})
        name = f"{where}: container {container['name']}"
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem must be true")
        if "ALL" not in security.get("capabilities", {}).get("drop", []):
            problems.append(f"{name}: capabilities must drop ALL")
    for volume in spec.get("volumes", []):
        secret = volume.get("secret")
        if secret is None:
            continue
        mode = int(secret.get("defaultMode", 0o644))
        group_readable = mode & 0o040 and pod_security.get("fsGroup") is not None
        if not (mode & 0o004 or group_readable):
            problems.append(
                f"{where}: Secret volume {volume['name']!r} (mode {mode:04o}, files owned by "
                "root) is unreadable by the pod's user: set securityContext.fsGroup with a "
                "group-readable defaultMode"
            )
    return problems


def network_problems(objects: list[Manifest], context: list[Manifest] | None = None) -> list[str]:
    """Default deny and a policy per workload of ``objects``; ``context``'s policies count."""
    policies = [o for o in [*objects, *(context or [])] if o.get("kind") == "NetworkPolicy"]
    problems = []
    default_deny = [
        p for p in policies
        if p["spec"].get("podSelector") in ({}, None)
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress") and not p["spec"].get("egress")
    ]  # fmt: skip
    if not default_deny:
        problems.append("NetworkPolicy: no default deny (podSelector {}, Ingress and Egress)")
    for owner in (o for o in objects if o.get("kind") in _WORKLOADS):
        labels = owner["spec"]["template"].get("metadata", {}).get("labels", {})
        own = [
            p for p in policies
            if p not in default_deny
            and _labels_match(p["spec"].get("podSelector", {}).get("matchLabels", {}), labels)
        ]  # fmt: skip
        if not own:
            problems.append(f"{_name(owner)}: no NetworkPolicy selects its pods")
        if owner.get("kind") == "Job" and context and not _admitted_by_triton(policies, labels):
            problems.append(
                f"{_name(owner)}: no NetworkPolicy of Triton's pods lets this Job's pods in "
                "(an ingress rule `from` a podSelector matching its labels)"
            )
    return problems


def _admitted_by_triton(policies: list[Manifest], labels: dict[str, str]) -> bool:
    triton = {"app.kubernetes.io/name": "triton"}
    for policy in policies:
        selector = policy["spec"].get("podSelector", {}).get("matchLabels", {})
        if not selector or not _labels_match(selector, triton):
            continue
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                wanted = peer.get("podSelector", {}).get("matchLabels", {})
                if wanted and "namespaceSelector" not in peer and _labels_match(wanted, labels):
                    return True
    return False


def _args(container: Manifest) -> list[str]:
    return [str(a) for a in container.get("command", []) + container.get("args", [])]


def triton_problems(owner: Manifest, container: Manifest) -> list[str]:
    args = _args(container)
    mode = next((a.split("=", 1)[1] for a in args if a.startswith("--model-control-mode=")), "none")
    if mode == "none":
        return []
    problems = []
    for flag in ("--grpc-restricted-protocol=", "--http-restricted-api="):
        value = next((a.removeprefix(flag) for a in args if a.startswith(flag)), None)
        where = f"{_name(owner)}: container {container['name']}"
        if value is None or "model-repository" not in value.split(":", 1)[0].split(","):
            problems.append(
                f"{where}: model control {mode!r} leaves the repository API open: add "
                f"{flag}model-repository:<header>=$(SECRET)"
            )
        elif "$(" not in value:
            problems.append(f"{where}: {flag} names its key in the manifest; use $(SECRET)")
    return problems


def redis_problems(owner: Manifest, container: Manifest) -> list[str]:
    args = _args(container)
    pairs = list(zip(args, args[1:], args[2:], strict=False))
    if ("--user", "default", "off") not in pairs:
        return [
            f"{_name(owner)}: container {container['name']}: Redis lets anyone in: "
            "add --user default off and an ACL user with a password from a Secret"
        ]
    return []


def security_problems(
    objects: Iterable[Manifest], context: list[Manifest] | None = None
) -> list[str]:
    """Every check on ``objects``; ``context``: the overlay a batch Job is applied beside."""
    objects = list(objects)
    problems: list[str] = []
    for owner in (o for o in objects if o.get("kind") in _WORKLOADS):
        problems += pod_problems(owner)
        for container in owner["spec"]["template"]["spec"].get("containers", []):
            args = _args(container)
            if any("tritonserver" in a for a in args):
                problems += triton_problems(owner, container)
            if any("redis-server" in a for a in args):
                problems += redis_problems(owner, container)
    return problems + network_problems(objects, context)
