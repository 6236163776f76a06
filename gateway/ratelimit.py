"""Per-tenant rate limits with GCRA (the generic cell rate algorithm, a leaky bucket in one number).

Each tenant has a sustained rate ``r`` (items/s) and a burst ``b``. The state is one
timestamp, the theoretical arrival time (TAT). A request of ``n`` items (its weight: texts,
rows, entities; at most ``b``) at ``now`` is allowed when ``max(TAT, now) + n/r - b/r <= now``;
then TAT advances by ``n/r``. In Redis the check and the update run in one Lua script against
Redis' own clock, so any number of gateway replicas share one limit without races or clock
skew. The in-process limiter runs the same algorithm.

Every decision also says when the next single item could pass (``blocked_for_s``): the gateway
remembers it per tenant and refuses a tenant known to be over its limit (``Gate``) unread.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from gateway.cache import CachedResponse, RedisCache, ResponseCache
from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.redis_pipe import RedisPipe
from gateway.settings import RedisFailurePolicy
from gateway.tenants import Tenant

log = logging.getLogger("gateway")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int  # the burst
    remaining: int  # requests that could be made right now
    reset_s: float  # seconds until the bucket is full again
    retry_after_s: float  # seconds until this request would have passed (0 when allowed)
    blocked_for_s: float = 0.0  # seconds until a request of one item could pass (0: now)

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_s)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers


def blocked_for(reset_s: float, rate: float, burst: int) -> float:
    """Seconds until one item could pass, from a decision's ``reset_s`` (TAT - now)."""
    return max(0.0, reset_s - (burst - 1) / rate)


def gcra(tat: float, now: float, rate: float, burst: int, cost: int = 1) -> tuple[Decision, float]:
    """One GCRA step of ``cost`` items: the decision and the new TAT (unchanged when denied)."""
    interval = 1.0 / rate
    tolerance = burst * interval
    tat = max(tat, now)
    new_tat = tat + cost * interval
    allow_at = new_tat - tolerance
    if allow_at > now:
        wait = blocked_for(tat - now, rate, burst)
        return Decision(False, burst, 0, tat - now, allow_at - now, wait), tat
    remaining = int((now + tolerance - new_tat) / interval + 1e-9)
    wait = blocked_for(new_tat - now, rate, burst)
    return Decision(True, burst, remaining, new_tat - now, 0.0, wait), new_tat


class RateLimiter(Protocol):
    async def hit(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision: ...


class Gate:
    """Per tenant: until when it is known to be over its limit (from its last decision)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._until: dict[str, float] = {}
        self._clock = clock

    def learn(self, key: str, decision: Decision) -> None:
        if decision.blocked_for_s > 1e-3:  # sub-millisecond: let Redis decide
            self._until[key] = self._clock() + decision.blocked_for_s
            if len(self._until) > 100_000:  # drop the ones that are free again
                now = self._clock()
                self._until = {k: v for k, v in self._until.items() if v > now}
        else:
            self._until.pop(key, None)

    def blocked_for(self, key: str) -> float:
        """Seconds the tenant must still wait (0: let the request in)."""
        until = self._until.get(key)
        if until is None:
            return 0.0
        left = until - self._clock()
        return left if left > 0 else 0.0


class LocalRateLimiter:
    """In-process GCRA: the embedded default, and the fallback while Redis is away."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._tat: dict[str, float] = {}
        self._clock = clock

    async def hit(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision:
        now = self._clock()
        decision, self._tat[key] = gcra(self._tat.get(key, 0.0), now, rate, burst, cost)
        if len(self._tat) > 100_000:  # drop tenants whose bucket is full again
            self._tat = {k: v for k, v in self._tat.items() if v > now}
        return decision


# KEYS[1] = bucket key; ARGV = rate, burst, cost. Returns {allowed, remaining, reset_us, retry_us}.
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3] or '1')
local interval = 1000000 / rate
local tolerance = burst * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, 0, math.ceil(tat - now), math.ceil(allow_at - now)}
end
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return {1, math.floor((now + tolerance - new_tat) / interval + 1e-9), math.ceil(new_tat - now), 0}
"""


class RedisRateLimiter:
    """GCRA in one Lua script: atomic, shared by every replica that uses this Redis."""

    def __init__(
        self, redis: Redis, prefix: str = "tritonstack:rl:", pipe: RedisPipe | None = None
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_GCRA_LUA)
        self._pipe = pipe  # the hot path's commands (gateway.redis_pipe); None: redis-py

    @property
    def redis(self) -> Redis:
        return self._redis

    async def hit(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision:
        if self._pipe is not None:
            (raw,) = await self._run((self._evalsha(key, rate, burst, cost),))
        else:
            raw = await self._script(keys=[self._prefix + key], args=[rate, burst, cost])
        return self._decision(raw, rate, burst)

    def _evalsha(self, key: str, rate: float, burst: int, cost: int) -> tuple[Any, ...]:
        return ("EVALSHA", self._script.sha, 1, self._prefix + key, rate, burst, cost)

    async def _run(self, commands: tuple[tuple[Any, ...], ...]) -> list[Any]:
        """Commands on the pipe; a restarted or flushed Redis gets the script once, then again."""
        assert self._pipe is not None
        try:
            return await self._pipe.execute(*commands)
        except NoScriptError:
            await self._pipe.execute(("SCRIPT", "LOAD", _GCRA_LUA))
            return await self._pipe.execute(*commands)

    async def hit_and_get(
        self, key: str, rate: float, burst: int, get_key: str, cost: int = 1
    ) -> tuple[Decision, bytes | None]:
        """The rate decision and ``GET get_key`` in one round trip (a pipeline, no MULTI)."""
        if self._pipe is not None:
            raw, blob = await self._run((self._evalsha(key, rate, burst, cost), ("GET", get_key)))
            return self._decision(raw, rate, burst), blob
        # without the pipe: EVALSHA queued by hand (a Script object in a pipeline makes redis-py
        # send SCRIPT EXISTS first, on every execute: one more round trip per request)
        for attempt in (1, 2):
            pipe = self._redis.pipeline(transaction=False)
            pipe.evalsha(self._script.sha, 1, self._prefix + key, rate, burst, cost)
            pipe.get(get_key)
            try:
                raw, blob = await pipe.execute()
            except NoScriptError:  # a restarted or flushed Redis: load it once, then retry
                if attempt == 2:
                    raise
                await self._redis.script_load(_GCRA_LUA)
                continue
            return self._decision(raw, rate, burst), blob
        raise AssertionError("unreachable")

    @staticmethod
    def _decision(raw: list[int], rate: float, burst: int) -> Decision:
        allowed, remaining, reset_us, retry_us = raw
        reset_s = int(reset_us) / 1e6
        return Decision(
            bool(allowed),
            burst,
            int(remaining),
            reset_s,
            int(retry_us) / 1e6,
            blocked_for(reset_s, rate, burst),
        )


class ResilientRateLimiter:
    """Redis-backed when configured; on a Redis error, the configured policy decides.

    Every decision teaches ``gate`` when the tenant may next pass, so a tenant known to be over
    its limit is refused by ``blocked_for`` without Redis (see ``gateway.guard``).
    """

    def __init__(
        self, primary: RateLimiter | None, policy: RedisFailurePolicy, metrics: Metrics
    ) -> None:
        self.primary = primary
        self.local = LocalRateLimiter()
        self.policy = policy
        self.metrics = metrics
        self.gate = Gate()

    def blocked_for(self, tenant: str) -> float:
        return self.gate.blocked_for(tenant)

    async def hit(self, tenant: Tenant, cost: int = 1) -> Decision:
        decision = await self._hit(tenant, cost)
        self.gate.learn(tenant.name, decision)
        return decision

    async def _hit(self, tenant: Tenant, cost: int) -> Decision:
        rate, burst = tenant.config.rate_per_s, tenant.config.burst
        if self.primary is None:
            return await self.local.hit(tenant.name, rate, burst, cost)
        try:
            return await self.primary.hit(tenant.name, rate, burst, cost)
        except (RedisError, OSError) as exc:
            return await self._redis_failed(tenant, cost, exc)

    async def hit_and_lookup(
        self, tenant: Tenant, cost: int, cache: ResponseCache, key: str
    ) -> tuple[Decision, CachedResponse | None]:
        """The rate decision and the cache lookup; one Redis round trip when both live there."""
        primary = self.primary
        if not (
            isinstance(primary, RedisRateLimiter)
            and isinstance(cache, RedisCache)
            and cache.redis is primary.redis
        ):
            if isinstance(primary, RedisRateLimiter) or isinstance(cache, RedisCache):
                found, hit = await asyncio.gather(self.hit(tenant, cost), cache.get(key))
                return found, hit
            return await self.hit(tenant, cost), await cache.get(key)  # in memory: no tasks
        waiting = cache.pending(key)  # written by this process a moment ago, still in flight
        if waiting is not None:
            return await self.hit(tenant, cost), waiting
        rate, burst = tenant.config.rate_per_s, tenant.config.burst
        try:
            decision, blob = await primary.hit_and_get(
                tenant.name, rate, burst, cache.full_key(key), cost
            )
        except (RedisError, OSError) as exc:
            self.metrics.redis_errors.labels(use="cache").inc()
            decision = await self._redis_failed(tenant, cost, exc)  # and a cache miss
            self.gate.learn(tenant.name, decision)
            return decision, None
        self.gate.learn(tenant.name, decision)
        return decision, cache.open(key, blob)

    async def _redis_failed(self, tenant: Tenant, cost: int, exc: Exception) -> Decision:
        self.metrics.redis_errors.labels(use="rate_limit").inc()
        if self.policy is RedisFailurePolicy.deny:
            log.warning("rate limiter: Redis unreachable, refusing (policy deny): %s", exc)
            raise GatewayError(
                503,
                "rate_limiter_unavailable",
                "the rate limiter's store is unreachable; retry later",
                headers={"Retry-After": "1"},
            ) from None
        log.warning("rate limiter: Redis unreachable, using the in-process limiter: %s", exc)
        rate, burst = tenant.config.rate_per_s, tenant.config.burst
        return await self.local.hit(tenant.name, rate, burst, cost)


def limited(tenant: Tenant, retry_after_s: float, headers: dict[str, str]) -> GatewayError:
    """The 429 of a tenant over its limit."""
    return GatewayError(
        429,
        "rate_limited",
        f"rate limit of {tenant.config.rate_per_s:g} items/s (burst {tenant.config.burst}) "
        f"exceeded; retry after {max(1, math.ceil(retry_after_s))} s",
        headers=headers,
    )
