"""Per-tenant rate limits with GCRA (the generic cell rate algorithm, a leaky bucket in one number).

Each tenant has a sustained rate ``r`` (requests/s) and a burst ``b``. The state is one
timestamp, the theoretical arrival time (TAT). A request at ``now`` is allowed when
``max(TAT, now) + 1/r - b/r <= now``; then TAT advances by ``1/r``. In Redis the check and the
update run in one Lua script against Redis' own clock, so any number of gateway replicas share
one limit without races or clock skew. The in-process limiter runs the same algorithm.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import NoScriptError


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int  # the burst
    remaining: int  # requests that could be made right now
    reset_s: float  # seconds until the bucket is full again
    retry_after_s: float  # seconds until the next request would pass (0 when allowed)

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_s)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers


def gcra(tat: float, now: float, rate: float, burst: int) -> tuple[Decision, float]:
    """One GCRA step: the decision and the new TAT (unchanged when denied)."""
    interval = 1.0 / rate
    tolerance = burst * interval
    tat = max(tat, now)
    new_tat = tat + interval
    allow_at = new_tat - tolerance
    if allow_at > now:
        return Decision(False, burst, 0, tat - now, allow_at - now), tat
    remaining = int((now + tolerance - new_tat) / interval + 1e-9)
    return Decision(True, burst, remaining, new_tat - now, 0.0), new_tat


class RateLimiter(Protocol):
    async def hit(self, key: str, rate: float, burst: int) -> Decision: ...


class LocalRateLimiter:
    """In-process GCRA: the embedded default, and the fallback while Redis is away."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._tat: dict[str, float] = {}
        self._clock = clock

    async def hit(self, key: str, rate: float, burst: int) -> Decision:
        now = self._clock()
        decision, self._tat[key] = gcra(self._tat.get(key, 0.0), now, rate, burst)
        if len(self._tat) > 100_000:  # drop tenants whose bucket is full again
            self._tat = {k: v for k, v in self._tat.items() if v > now}
        return decision


# KEYS[1] = bucket key; ARGV = rate, burst. Returns {allowed, remaining, reset_us, retry_us}.
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local interval = 1000000 / rate
local tolerance = burst * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
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

    def __init__(self, redis: Redis, prefix: str = "tritonstack:rl:") -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_GCRA_LUA)

    @property
    def redis(self) -> Redis:
        return self._redis

    async def hit(self, key: str, rate: float, burst: int) -> Decision:
        raw = await self._script(keys=[self._prefix + key], args=[rate, burst])
        return self._decision(raw, burst)

    async def hit_and_get(
        self, key: str, rate: float, burst: int, get_key: str
    ) -> tuple[Decision, bytes | None]:
        """The rate decision and ``GET get_key`` in one round trip (a pipeline, no MULTI)."""
        # EVALSHA queued by hand: a Script object in a pipeline makes redis-py send SCRIPT
        # EXISTS first, on every execute (one more round trip per request, measured)
        for attempt in (1, 2):
            pipe = self._redis.pipeline(transaction=False)
            pipe.evalsha(self._script.sha, 1, self._prefix + key, rate, burst)
            pipe.get(get_key)
            try:
                raw, blob = await pipe.execute()
            except NoScriptError:  # a restarted or flushed Redis: load it once, then retry
                if attempt == 2:
                    raise
                await self._redis.script_load(_GCRA_LUA)
                continue
            return self._decision(raw, burst), blob
        raise AssertionError("unreachable")

    @staticmethod
    def _decision(raw: list[int], burst: int) -> Decision:
        allowed, remaining, reset_us, retry_us = raw
        return Decision(
            bool(allowed), burst, int(remaining), int(reset_us) / 1e6, int(retry_us) / 1e6
        )
