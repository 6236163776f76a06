"""Tenants and their API keys: stored as SHA-256 hashes, compared in constant time.

A tenants file is TOML::

    [tenants.acme]
    key_sha256 = ["9f86d0…"]      # one or more (rotation: add the new hash, then drop the old)
    models = ["minilm", "driver_ranker"]   # or ["*"]; none given: no model at all
    rate_per_s = 20.0             # sustained items per second (a request weighs its items)
    burst = 40                    # items allowed at once
    max_inflight = 16             # optional: requests in flight per replica (default: setting)

Keys are 32 random bytes (``ts_`` + URL-safe base64), so one SHA-256 is enough: there is no
low-entropy password to stretch. Plain keys are never stored, logged or echoed.

The file is read again when it changes (``Authenticator.replace``), and a key or a whole tenant
can be revoked at once on every replica through Redis (``gateway.revocation``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field, TypeAdapter, field_validator

KEY_PREFIX = "ts_"
# Keys that must never guard anything outside development.
_PLACEHOLDER_KEYS = ("changeme", "change-me", "dev", "development", "test", "secret", "password")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class TenantConfig(BaseModel):
    key_sha256: list[str] = Field(min_length=1)
    models: list[str] = Field(default_factory=list)  # fail closed: no model unless listed
    rate_per_s: float = Field(50.0, gt=0)
    burst: int = Field(100, ge=1)
    max_inflight: int | None = Field(None, ge=1)
    development: bool = False  # written by `tritonstack up`; refused outside development

    @field_validator("key_sha256")
    @classmethod
    def _hex_digests(cls, values: list[str]) -> list[str]:
        for value in values:
            if len(value) != 64 or any(c not in "0123456789abcdef" for c in value.lower()):
                raise ValueError("key_sha256 entries must be SHA-256 hex digests (64 hex chars)")
        return [v.lower() for v in values]

    def may_use(self, model: str) -> bool:
        return "*" in self.models or model in self.models


_TENANTS = TypeAdapter(dict[str, TenantConfig])


def load_tenants(path: Path) -> dict[str, TenantConfig]:
    """Read a tenants TOML file (a clear error names the file and the problem)."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"tenants file {path} does not exist") from exc
    except PermissionError as exc:
        raise ValueError(
            f"tenants file {path} is not readable by uid {os.getuid()} (gid {os.getgid()}): "
            "mount it readable by the gateway's user or group (Kubernetes: fsGroup and the "
            "Secret's defaultMode)"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"tenants file {path} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"tenants file {path} is not valid TOML: {exc}") from exc
    return _TENANTS.validate_python(data.get("tenants", {}))


def write_tenants(path: Path, tenants: dict[str, TenantConfig]) -> None:
    """Write tenants as TOML (only hashes), readable by the owner only."""
    lines = ["# tritonstack gateway tenants: API keys are stored as SHA-256 hashes only", ""]
    for name, tenant in tenants.items():
        hashes = ", ".join(f'"{h}"' for h in tenant.key_sha256)
        models = ", ".join(f'"{m}"' for m in tenant.models)
        lines += [
            f'[tenants."{name}"]',
            f"key_sha256 = [{hashes}]",
            f"models = [{models}]",
            f"rate_per_s = {tenant.rate_per_s}",
            f"burst = {tenant.burst}",
            *([f"max_inflight = {tenant.max_inflight}"] if tenant.max_inflight else []),
            f"development = {'true' if tenant.development else 'false'}",
            "",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.write_text("\n".join(lines))


def placeholder_problems(tenants: dict[str, TenantConfig]) -> list[str]:
    """Why these tenants must not guard a non-development gateway (empty list: fine)."""
    placeholder_hashes = {hash_key(k) for k in _PLACEHOLDER_KEYS}
    problems = []
    for name, tenant in tenants.items():
        if tenant.development:
            problems.append(f"tenant {name!r} is a development tenant")
        if placeholder_hashes.intersection(tenant.key_sha256):
            problems.append(f"tenant {name!r} has a placeholder key")
    return problems


@dataclass(frozen=True)
class Tenant:
    name: str
    config: TenantConfig


class Authenticator:
    """Finds the tenant of a presented key without early exit on the stored hashes.

    ``replace`` swaps the tenants (a reloaded file) and ``revoke`` the revoked key hashes and
    tenant names (from Redis) while requests are served: each is one attribute assignment.
    """

    def __init__(self, tenants: dict[str, TenantConfig]) -> None:
        self._entries: list[tuple[bytes, Tenant]] = []
        self._revoked_keys: frozenset[bytes] = frozenset()
        self._revoked_tenants: frozenset[str] = frozenset()
        self.replace(tenants)

    def replace(self, tenants: dict[str, TenantConfig]) -> None:
        self._entries = [
            (bytes.fromhex(digest), Tenant(name, config))
            for name, config in tenants.items()
            for digest in config.key_sha256
        ]

    def revoke(self, key_hashes: frozenset[bytes], tenants: frozenset[str]) -> None:
        self._revoked_keys, self._revoked_tenants = key_hashes, tenants

    @property
    def tenant_names(self) -> set[str]:
        return {tenant.name for _, tenant in self._entries}

    def authenticate(self, key: str | None) -> Tenant | None:
        if not key:
            return None
        presented = hashlib.sha256(key.encode("utf-8", "replace")).digest()
        found: Tenant | None = None
        for digest, tenant in self._entries:  # every entry compared: no timing by position
            if hmac.compare_digest(presented, digest):
                found = tenant
        if found is None or presented in self._revoked_keys:
            return None
        if found.name in self._revoked_tenants:
            return None
        return found
