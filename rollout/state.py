"""A rollout's state: in Redis (every controller and CLI sees it) and copied to disk.

One JSON document per model (``tritonstack:rollout:state:<model>``), written after every
change; a copy goes to ``ROLLOUT_STATE_DIR/<model>.json`` when set, so a Redis that lost its
data (no persistence in the local stack) gets it back from the next controller. A controller
holds a lease on the model (``...:lease:<model>``, renewed every check) so that two cannot drive
one rollout; ``promote`` and ``abort`` from another terminal leave a request
(``...:request:<model>``) that the driving controller acts on at its next check.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from rollout.errors import StoreError
from rollout.kv import KV

PREFIX = "tritonstack:rollout"
HISTORY_LIMIT = 50
TERMINAL = frozenset({"promoted", "aborted"})


@dataclass
class Step:
    phase: str  # shadow | canary
    weight: int  # the candidate's percent (shadow: 0)
    index: int  # the statistics' step number (route table ``step``)
    started_unix: float
    ended_unix: float | None = None
    verdict: str = ""  # pass | fail | ""
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class RolloutState:
    id: str
    model: str
    stable: str
    candidate: str
    pipelines: dict[str, str]  # pipeline -> the in-memory pipeline in front of the candidate
    plan: list[int]  # canary weights
    shadow: bool
    shadow_sample: float
    step_seconds: float
    budget: dict[str, Any]  # metric, budget, why
    phase: str = "loading"  # loading, shadow, canary, promoting, aborting, promoted, aborted
    steps: list[Step] = field(default_factory=list)
    revision: int = 0  # of the last route table this rollout published
    started_unix: float = field(default_factory=time.time)
    ended_unix: float | None = None
    reason: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    baseline: dict[str, Any] = field(default_factory=dict)  # the stable's last figures
    result: dict[str, Any] = field(default_factory=dict)  # failed requests, detection times

    @property
    def done(self) -> bool:
        return self.phase in TERMINAL

    @property
    def current(self) -> Step | None:
        return self.steps[-1] if self.steps else None

    def event(self, what: str, detail: str = "") -> None:
        self.events.append({"unix": round(time.time(), 3), "what": what, "detail": detail})

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> RolloutState:
        doc = json.loads(raw)
        doc["steps"] = [Step(**s) for s in doc.get("steps", [])]
        return cls(**doc)


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class StateStore:
    def __init__(self, redis: Redis, state_dir: Path | None = None) -> None:
        self.redis = KV(redis)
        self.state_dir = state_dir

    def _key(self, kind: str, model: str) -> str:
        return f"{PREFIX}:{kind}:{model}"

    def _file(self, model: str) -> Path | None:
        return self.state_dir / f"{model}.json" if self.state_dir else None

    def load(self, model: str) -> RolloutState | None:
        """The model's rollout (Redis first; the disk copy when Redis lost it)."""
        try:
            raw = self.redis.get(self._key("state", model))
        except RedisError as exc:
            raise StoreError(f"cannot read the rollout state from Redis: {exc}") from None
        path = self._file(model)
        if raw is None and path is not None and path.is_file():
            raw = path.read_bytes()
            if raw:
                self.save(RolloutState.from_json(raw))
        return RolloutState.from_json(raw) if raw else None

    def models(self) -> list[str]:
        try:
            keys = self.redis.keys(self._key("state", "*"))
        except RedisError as exc:
            raise StoreError(f"cannot list rollouts in Redis: {exc}") from None
        found = {k.decode().rsplit(":", 1)[-1] for k in keys}
        if self.state_dir and self.state_dir.is_dir():
            found |= {p.stem for p in self.state_dir.glob("*.json")}
        return sorted(found)

    def save(self, state: RolloutState) -> None:
        raw = state.to_json()
        try:
            self.redis.set(self._key("state", state.model), raw)
            if state.done:
                self.redis.push_unique(self._key("history", state.model), raw, HISTORY_LIMIT)
        except RedisError as exc:
            raise StoreError(f"cannot write the rollout state to Redis: {exc}") from None
        path = self._file(state.model)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            staging.write_text(raw)
            staging.replace(path)

    def history(self, model: str) -> list[RolloutState]:
        """Finished rollouts of ``model`` kept in Redis, oldest first."""
        try:
            raw = self.redis.lrange(self._key("history", model), 0, HISTORY_LIMIT - 1)
        except RedisError as exc:
            raise StoreError(f"cannot read the rollout history from Redis: {exc}") from None
        found = {s.id: s for s in (RolloutState.from_json(r) for r in raw)}
        return sorted(found.values(), key=lambda s: s.started_unix)

    # -- one driver per rollout ----------------------------------------------------------------
    def claim(self, model: str, me: str, lease_s: float) -> str | None:
        """Take or renew the lease; None when taken, else who holds it."""
        key = self._key("lease", model)
        ms = int(lease_s * 1000)
        try:
            if self.redis.set(key, me, nx=True, px=ms):
                return None
            holder = self.redis.get(key)
            if holder is not None and holder.decode() == me:
                self.redis.pexpire(key, ms)
                return None
        except RedisError as exc:
            raise StoreError(f"cannot claim the rollout lease in Redis: {exc}") from None
        return holder.decode() if holder else "?"

    def holder(self, model: str) -> str | None:
        raw = self.redis.get(self._key("lease", model))
        return raw.decode() if raw else None

    def release(self, model: str, me: str) -> None:
        key = self._key("lease", model)
        if (self.redis.get(key) or b"").decode() == me:
            self.redis.delete(key)

    def request(self, model: str, what: str) -> None:
        self.redis.set(self._key("request", model), what, ex=3600)

    def take_request(self, model: str) -> str | None:
        raw = self.redis.getdel(self._key("request", model))
        return raw.decode() if raw else None
