"""The rollout's part of the gateways' route table: built from its state, published, awaited.

The table is one document for every model (``gateway.traffic_store.ROUTES_KEY``); a rollout
replaces only its model's entry and its pipelines' (``WATCH`` + ``MULTI``, so two rollouts of
different models never lose each other's change), with a revision that is the clock in
milliseconds (never lower than the one it replaces). ``wait_for_replicas`` returns once every
replica heard from within ``replica_fresh_s`` uses that revision, or after ``replica_wait_s``.
"""

from __future__ import annotations

import time
from typing import cast

from redis import Redis, WatchError
from redis.client import Pipeline
from redis.exceptions import RedisError

from gateway.traffic import Arm, ModelRoute, RouteTable, RouteTableError, Shadow, parse_table
from gateway.traffic_store import REPLICAS_KEY, ROUTES_KEY, parse_replicas
from rollout.errors import StoreError
from rollout.state import RolloutState


def routes_for(
    state: RolloutState, arms: list[tuple[str, float]], shadow: bool
) -> dict[str, ModelRoute]:
    """Routes of the model and each of its pipelines: ``arms`` are (version, weight), the
    candidate first (raising its weight only moves callers to it)."""
    step = state.current.index if state.current else 0
    built: dict[str, ModelRoute] = {}
    targets: dict[str, dict[str, tuple[str, str]]] = {
        state.model: {v: (state.model, v) for v in (state.stable, state.candidate)}
    }
    for pipeline, pinned in state.pipelines.items():
        targets[pipeline] = {state.stable: (pipeline, ""), state.candidate: (pinned, "")}
    for name, by_version in targets.items():
        shadow_route = None
        if shadow:
            model, model_version = by_version[state.candidate]
            shadow_route = Shadow(
                state.candidate,
                model,
                model_version,
                state.budget["metric"],
                float(state.budget["budget"]),
                state.shadow_sample,
            )
        built[name] = ModelRoute(
            name,
            state.id,
            step,
            state.stable,
            tuple(Arm(v, w, *by_version[v]) for v, w in arms),
            shadow_route,
        )
    return built


def promoted_arms(state: RolloutState) -> list[tuple[str, float]]:
    """The arms of a promotion: the candidate alone, the stable version kept at 0 % (a route
    names its stable version among its arms) until the routes go."""
    return [(state.candidate, 100), (state.stable, 0)]


def read_table(redis: Redis | Pipeline) -> RouteTable:
    raw = cast(bytes | None, redis.get(ROUTES_KEY))
    if raw is None:
        return RouteTable()
    try:
        return parse_table(raw)
    except RouteTableError:
        return RouteTable()  # an unusable table is replaced (the gateways ignore it anyway)


def publish(redis: Redis, state: RolloutState, routes: dict[str, ModelRoute] | None) -> int:
    """Replace the rollout's entries (None: remove them); the new revision."""
    names = {state.model, *state.pipelines}
    for _ in range(20):
        try:
            with redis.pipeline() as pipe:
                pipe.watch(ROUTES_KEY)  # type: ignore[no-untyped-call]
                current = read_table(pipe)
                kept = {n: r for n, r in current.routes.items() if n not in names}
                if routes:
                    kept.update(routes)
                revision = max(int(time.time() * 1000), current.revision + 1, state.revision + 1)
                encoded = RouteTable(revision, kept).to_json()
                try:  # what the gateways would refuse (and keep their old table) is never written
                    parse_table(encoded)
                except RouteTableError as exc:
                    msg = f"the rollout built a route table the gateways refuse: {exc}"
                    raise StoreError(msg) from None
                pipe.multi()
                pipe.set(ROUTES_KEY, encoded)
                pipe.execute()
                state.revision = revision
                return revision
        except WatchError:
            continue
        except RedisError as exc:
            raise StoreError(f"cannot write the route table to Redis: {exc}") from None
    raise StoreError("the route table kept changing under this rollout (20 tries)")


def republish_if_lost(
    redis: Redis, state: RolloutState, routes: dict[str, ModelRoute] | None
) -> bool:
    """Write the rollout's entries again when Redis no longer has them (it lost its data)."""
    current = read_table(redis)
    if current.revision >= state.revision and all(
        current.get(n) == r for n, r in (routes or {}).items()
    ):
        return False
    publish(redis, state, routes)
    return True


def wait_for_replicas(redis: Redis, revision: int, wait_s: float, fresh_s: float) -> dict[str, int]:
    """Replicas still behind ``revision`` when the wait ended (empty: all caught up)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            raw = cast(dict[bytes, bytes], redis.hgetall(REPLICAS_KEY))
            seen = parse_replicas(raw, time.time(), fresh_s)
        except RedisError as exc:
            raise StoreError(f"cannot read the replicas' route revisions: {exc}") from None
        behind = {r: v for r, v in seen.items() if v < revision}
        if not behind or time.monotonic() >= deadline:
            return behind
        time.sleep(0.1)
