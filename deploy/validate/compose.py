"""The Compose file checked offline: ``docker-compose config -q`` (its own schema) when the
binary is there, and always the structure tritonstack relies on (health checks, the GPU
reservation, ``depends_on`` conditions on services that exist and have health checks) and its
exposure: host ports bound to 127.0.0.1 only, no Prometheus lifecycle API, no anonymous Redis,
Triton's repository API behind the admin key."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

COMPOSE_TIMEOUT_S = 60.0
REQUIRED_SERVICES = ("triton", "gateway", "redis", "prometheus", "grafana")


def docker_compose_binary() -> str | None:
    return shutil.which("docker-compose")


def compose_config_problems(path: Path) -> list[str]:
    """``docker-compose -f PATH config -q`` (needs no engine); [] when it passes."""
    binary = docker_compose_binary()
    if binary is None:
        return []
    result = subprocess.run(
        [binary, "-f", str(path), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=COMPOSE_TIMEOUT_S,
        check=False,
        cwd=path.parent,
    )
    if result.returncode == 0:
        return []
    return [f"docker-compose config: {(result.stdout + result.stderr).strip()}"]


def _has_healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck") or {}
    return bool(check.get("test")) and not check.get("disable")


def structure_problems(compose: dict[str, Any]) -> list[str]:
    """What the stack needs beyond a valid file."""
    services: dict[str, Any] = compose.get("services") or {}
    problems = [f"service {s!r} is missing" for s in REQUIRED_SERVICES if s not in services]
    for name, service in services.items():
        if not (service.get("image") or service.get("build")):
            problems.append(f"{name}: image or build is required")
        if not _has_healthcheck(service):
            problems.append(f"{name}: a healthcheck is required")
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            problems.append(f"{name}: depends_on must give conditions, not a list")
            continue
        for other, spec in depends.items():
            condition = (spec or {}).get("condition")
            if other not in services:
                problems.append(f"{name}: depends on unknown service {other!r}")
            elif condition == "service_healthy" and not _has_healthcheck(services[other]):
                problems.append(f"{name}: waits for {other} to be healthy; it has no healthcheck")
            elif condition not in ("service_started", "service_healthy"):
                problems.append(f"{name}: depends_on {other} has condition {condition!r}")
    triton = services.get("triton", {})
    devices = (
        triton.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    )
    if not any("gpu" in d.get("capabilities", []) for d in devices):
        problems.append("triton: no GPU reservation (deploy.resources.reservations.devices)")
    if "service_healthy" not in str(services.get("gateway", {}).get("depends_on", {})):
        problems.append("gateway: must wait for a healthy Triton")
    return problems


def _command(service: dict[str, Any]) -> str:
    command = service.get("command") or []
    return command if isinstance(command, str) else " ".join(str(c) for c in command)


def exposure_problems(compose: dict[str, Any]) -> list[str]:
    """What the file would open to other hosts or to anyone on the Compose network."""
    services: dict[str, Any] = compose.get("services") or {}
    problems = []
    for name, service in services.items():
        for port in service.get("ports") or []:
            text = str(port.get("host_ip", "") if isinstance(port, dict) else port)
            if not text.startswith("127.0.0.1:") and text != "127.0.0.1":
                problems.append(f"{name}: port {port!r} is published on every interface")
        if "--web.enable-lifecycle" in _command(service):
            problems.append(f"{name}: --web.enable-lifecycle lets anyone stop or reload it")
    redis = _command(services.get("redis", {}))
    if "--user default off" not in redis:
        problems.append("redis: anonymous access (add --user default off and an ACL user)")
    triton = _command(services.get("triton", {}))
    for flag in ("--grpc-restricted-protocol=", "--http-restricted-api="):
        if f"{flag}model-repository" not in triton:
            problems.append(f"triton: the repository API is open (add {flag}model-repository:...)")
    return problems


def check_compose(path: Path) -> list[str]:
    try:
        compose = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        return [f"{path}: not YAML: {exc}"]
    if not isinstance(compose, dict):
        return [f"{path}: not a mapping"]
    return compose_config_problems(path) + structure_problems(compose) + exposure_problems(compose)
