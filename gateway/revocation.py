"""Revoke an API key or a whole tenant on every gateway replica within seconds, through Redis.

The tenants file (a Kubernetes Secret) stays the source of truth, but a Secret volume reaches
the pods only after the kubelet's sync (a minute or more). So a revocation is also written to
one Redis set, ``tritonstack:revoked``, which every replica reads each ``health_interval_s``
(1 s by default): the key is refused everywhere within about a second. Remove the key from the
Secret afterwards; ``--restore`` takes an entry out of the set again.

Members are ``key:<sha256 hex>`` or ``tenant:<name>``. While Redis is unreachable a replica
keeps the last set it read (a revocation is never forgotten because Redis went away); Redis
here keeps no data on disk, so a restarted Redis forgets revocations that the Secret does not
carry yet.

    python -m gateway.revocation --tenant acme            # every key of tenant acme
    python -m gateway.revocation --key-sha256 9f86d0...   # one key (its hash, never the key)
    python -m gateway.revocation --key-sha256 9f86d0... --restore
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from redis.asyncio import Redis

from gateway.tenants import hash_key

REVOKED_SET = "tritonstack:revoked"


def entries(*, tenants: Sequence[str] = (), key_hashes: Sequence[str] = ()) -> list[str]:
    """Set members for tenant names and key hashes (hashes checked and lower-cased)."""
    members = [f"tenant:{name}" for name in tenants]
    for digest in key_hashes:
        digest = digest.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{digest!r} is not a SHA-256 hex digest")
        members.append(f"key:{digest}")
    return members


def parse(members: set[bytes] | set[str]) -> tuple[frozenset[bytes], frozenset[str]]:
    """The revoked key digests (raw bytes) and tenant names in a set read from Redis."""
    keys: set[bytes] = set()
    tenants: set[str] = set()
    for raw in members:
        member = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        kind, _, value = member.partition(":")
        if kind == "tenant" and value:
            tenants.add(value)
        elif kind == "key":
            try:
                keys.add(bytes.fromhex(value))
            except ValueError:
                continue  # not ours: ignore rather than fail every replica's poll
    return frozenset(keys), frozenset(tenants)


async def read(redis: Redis) -> tuple[frozenset[bytes], frozenset[str]]:
    return parse(await redis.smembers(REVOKED_SET))  # type: ignore[misc]


async def revoke(redis: Redis, members: list[str]) -> None:
    if members:
        await redis.sadd(REVOKED_SET, *members)  # type: ignore[misc]


async def restore(redis: Redis, members: list[str]) -> None:
    if members:
        await redis.srem(REVOKED_SET, *members)  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.revocation", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--redis-url", help="default: GATEWAY_REDIS_URL (and its credentials)")
    parser.add_argument("--tenant", action="append", default=[], help="revoke every key of it")
    parser.add_argument("--key-sha256", action="append", default=[], help="revoke one key hash")
    parser.add_argument("--key", action="append", default=[], help="a plain key (hashed here)")
    parser.add_argument("--restore", action="store_true", help="take the entries out again")
    args = parser.parse_args(argv)
    try:
        members = entries(
            tenants=args.tenant, key_hashes=[*args.key_sha256, *map(hash_key, args.key)]
        )
    except ValueError as exc:
        parser.error(str(exc))
    if not members:
        parser.error("give --tenant, --key-sha256 or --key")

    async def run() -> None:
        from gateway.settings import GatewaySettings  # deferred: it reads and checks tenants

        url, username, password = args.redis_url, None, None
        if url is None:
            settings = GatewaySettings()
            url, username = settings.redis_url, settings.redis_username
            secret = settings.redis_password
            password = secret.get_secret_value() if secret else None
        if not url:
            raise SystemExit("no Redis: pass --redis-url or set GATEWAY_REDIS_URL")
        redis = Redis.from_url(url, username=username, password=password, socket_timeout=5)
        try:
            await (restore if args.restore else revoke)(redis, members)
        finally:
            await redis.aclose()

    asyncio.run(run())
    print(("restored" if args.restore else "revoked") + ": " + ", ".join(members))
    return 0


if __name__ == "__main__":
    sys.exit(main())
