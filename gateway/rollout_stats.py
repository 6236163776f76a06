"""Per-version figures of a rollout step, summed over every gateway replica in Redis.

Each replica counts, for the models under a rollout only, what each version did in the current
step (requests, upstream errors, upstream latency in log-spaced buckets) and what the shadow
comparisons found, and adds its counts to one Redis hash per step every ``flush_s``
(``HINCRBY`` deltas in one pipeline: exact across replicas, restarts and scrapes, and a replica
that cannot reach Redis keeps its deltas for the next flush). The rollout controller reads that
hash (``read_step``) to judge the step: error rate, p99 latency ratio, shadow agreement. The
same events are Prometheus metrics with a ``version`` label for the dashboards and alerts.

Latency buckets grow by 10 % from 0.1 ms (bucket ``i`` holds [0.1 ms * 1.1^i, 0.1 ms *
1.1^(i+1))), so a p99 read from them is within 10 % of the true one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from redis.asyncio import Redis

from gateway.traffic import ModelRoute

STATS_PREFIX = "tritonstack:rollout:stats"
STATS_TTL_S = 7 * 24 * 3600
_BASE_S = 1e-4
_GROWTH = 1.1
LATENCY_BUCKETS = 160  # up to 0.1 ms * 1.1^160: about 4 minutes


def stats_key(rollout: str, step: int) -> str:
    return f"{STATS_PREFIX}:{rollout}:{step}"


def latency_bucket(seconds: float) -> int:
    if seconds <= _BASE_S:
        return 0
    return min(LATENCY_BUCKETS - 1, int(math.log(seconds / _BASE_S) / math.log(_GROWTH)))


def bucket_bounds(index: int) -> tuple[float, float]:
    low = 0.0 if index == 0 else _BASE_S * _GROWTH**index
    return low, _BASE_S * _GROWTH ** (index + 1)


def quantile(buckets: dict[int, int], q: float) -> float | None:
    """The ``q`` quantile (seconds) of a bucketed distribution, interpolated within its bucket."""
    total = sum(buckets.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index in sorted(buckets):
        count = buckets[index]
        if seen + count >= rank:
            low, high = bucket_bounds(index)
            return low + (high - low) * ((rank - seen) / count if count else 0.0)
        seen += count
    return bucket_bounds(max(buckets))[1]


@dataclass
class VersionFigures:
    requests: int = 0
    errors: int = 0
    latency: dict[int, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def p99(self) -> float | None:
        return quantile(self.latency, 0.99)


@dataclass
class ShadowFigures:
    compared: int = 0  # rows compared
    within: int = 0  # rows within the budget
    total: float = 0.0  # sum of the rows' figures (their mean: total / compared)
    errors: int = 0  # shadow calls that failed (or answered another shape)
    dropped: int = 0  # copies dropped because the shadow queue was full
    worst: float | None = None

    @property
    def mean(self) -> float | None:
        return self.total / self.compared if self.compared else None


@dataclass
class StepFigures:
    versions: dict[str, VersionFigures] = field(default_factory=dict)
    shadow: ShadowFigures = field(default_factory=ShadowFigures)

    def version(self, name: str) -> VersionFigures:
        return self.versions.get(name) or VersionFigures()


def parse_step(raw: dict[bytes, bytes], metric_worst_is_max: bool = False) -> StepFigures:
    """A step's hash (``HGETALL``) as figures; unknown or malformed fields are skipped."""
    figures = StepFigures()
    worst: list[float] = []
    for key_b, value_b in raw.items():
        try:
            key, value = key_b.decode(), value_b.decode()
            parts = key.split(":")
            if parts[0] == "v" and len(parts) >= 3:
                entry = figures.versions.setdefault(parts[1], VersionFigures())
                if parts[2] == "n":
                    entry.requests += int(value)
                elif parts[2] == "err":
                    entry.errors += int(value)
                elif parts[2] == "lat" and len(parts) == 4:
                    entry.latency[int(parts[3])] = int(value)
            elif parts[0] == "s" and len(parts) >= 2:
                shadow = figures.shadow
                if parts[1] == "n":
                    shadow.compared = int(value)
                elif parts[1] == "ok":
                    shadow.within = int(value)
                elif parts[1] == "sum":
                    shadow.total = float(value)
                elif parts[1] == "err":
                    shadow.errors = int(value)
                elif parts[1] == "drop":
                    shadow.dropped = int(value)
                elif parts[1] == "worst":
                    worst.append(float(value))
        except (UnicodeDecodeError, ValueError):
            continue
    if worst:
        figures.shadow.worst = max(worst) if metric_worst_is_max else min(worst)
    return figures


class StepRecorder:
    """This replica's counts since its last flush, per (rollout, step) hash."""

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self._ints: dict[str, defaultdict[str, int]] = {}
        self._floats: dict[str, defaultdict[str, float]] = {}
        # key -> (metric, this replica's worst in that step): kept for the step's life (every
        # flush writes it again), the newest 16 steps only
        self._worst: dict[str, tuple[str, float]] = {}
        self._dirty: set[str] = set()

    def _bins(self, route: ModelRoute) -> tuple[defaultdict[str, int], defaultdict[str, float]]:
        key = stats_key(route.rollout, route.step)
        ints = self._ints.get(key)
        if ints is None:
            ints = self._ints[key] = defaultdict(int)
        floats = self._floats.get(key)
        if floats is None:
            floats = self._floats[key] = defaultdict(float)
        return ints, floats

    def request(self, route: ModelRoute, version: str, ok: bool, latency_s: float) -> None:
        """One upstream call of ``version`` (failed: Triton or the network failed it)."""
        ints, _ = self._bins(route)
        ints[f"v:{version}:n"] += 1
        if not ok:
            ints[f"v:{version}:err"] += 1
        ints[f"v:{version}:lat:{latency_bucket(latency_s)}"] += 1

    def shadow(
        self, route: ModelRoute, rows: int, rows_within: int, total: float, worst: float
    ) -> None:
        assert route.shadow is not None
        ints, floats = self._bins(route)
        ints["s:n"] += rows
        ints["s:ok"] += rows_within
        floats["s:sum"] += total
        key = stats_key(route.rollout, route.step)
        metric = route.shadow.metric
        _, before = self._worst.get(key, (metric, worst))
        self._worst[key] = (
            metric,
            max(before, worst) if metric == "rel_l2" else min(before, worst),
        )
        self._dirty.add(key)
        while len(self._worst) > 16:
            self._worst.pop(next(iter(self._worst)))

    def shadow_failed(self, route: ModelRoute, *, dropped: bool = False) -> None:
        ints, _ = self._bins(route)
        ints["s:drop" if dropped else "s:err"] += 1

    @property
    def pending(self) -> bool:
        return bool(self._ints or self._dirty)

    async def flush(self, redis: Redis) -> None:
        """Add the counts to Redis in one pipeline; on failure they are kept for the next."""
        if not self.pending:
            return
        ints, floats, dirty = self._ints, self._floats, self._dirty
        self._ints, self._floats, self._dirty = {}, {}, set()
        try:
            pipe = redis.pipeline(transaction=False)
            for key in set(ints) | dirty:
                for name, count in ints.get(key, {}).items():
                    pipe.hincrby(key, name, count)
                for name, amount in floats.get(key, {}).items():
                    pipe.hincrbyfloat(key, name, amount)
                if key in dirty and key in self._worst:  # the reader takes every replica's
                    pipe.hset(key, f"s:worst:{self.replica}", repr(self._worst[key][1]))
                pipe.expire(key, STATS_TTL_S)
            await pipe.execute()
        except Exception:
            self._merge(ints, floats)
            self._dirty |= dirty
            raise

    def _merge(
        self, ints: dict[str, defaultdict[str, int]], floats: dict[str, defaultdict[str, float]]
    ) -> None:
        for key, values in ints.items():
            mine = self._ints.setdefault(key, defaultdict(int))
            for name, count in values.items():
                mine[name] += count
        for key, fvalues in floats.items():
            fmine = self._floats.setdefault(key, defaultdict(float))
            for name, amount in fvalues.items():
                fmine[name] += amount
