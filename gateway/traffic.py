"""The route table: which model version answers a request, and which one gets a shadow copy.

Pure logic (no I/O): :mod:`gateway.traffic_store` keeps the table current from Redis, the rollout
controller (``rollout/``) writes it. One table holds a route per model name a client calls; a
model without a route is called as Triton serves it (its newest loaded version).

A route lists its **arms** in order, each a version with a weight in percent (the weights add
up to 100) and the Triton model + version that serves it: the encoder ``minilm`` version ``2``
is ``("minilm", "2")``, the text pipeline ``minilm_text`` in front of encoder version 2 is a
pipeline pinned to it (``("minilm_text__v2", "")``). A caller is **sticky**: its key (the
``X-Routing-Key`` header, else its tenant) hashed with the rollout's id gives a bucket in
[0, 10000), and the bucket picks the first arm whose cumulative share passes it. The rollout
controller lists the candidate first, so raising its weight only ever moves callers from the
stable version to the candidate, never back (10 → 50 → 100 % keeps every caller that saw the
candidate on it). An optional **shadow** names a version that gets a sampled copy of the
traffic, compared with the primary answer in the model's task metric against a budget
(:mod:`gateway.agreement`), whose answer no client ever sees.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast, get_args

ROUTING_KEY_HEADER = "x-routing-key"  # lower case: ASGI header names
VERSION_HEADER = "X-Model-Version"
BUCKETS = 10_000
MAX_MODELS = 64
MAX_ARMS = 8
MAX_KEY_CHARS = 256

Metric = Literal["cosine", "top1", "rel_l2"]
METRICS: tuple[str, ...] = get_args(Metric)


class RouteTableError(ValueError):
    """A route table that cannot be used; the message names the field and what to fix."""


@dataclass(frozen=True)
class Arm:
    version: str  # the version clients are told served them (the rolled-out model's)
    weight: float  # percent of callers
    model: str  # the Triton model to call
    model_version: str = ""  # "" = the target model's own (a pinned pipeline)


@dataclass(frozen=True)
class Shadow:
    version: str
    model: str
    model_version: str
    metric: Metric  # the model's task metric (cosine, top1, rel_l2)
    budget: float  # per row: cosine/top1 at least this, rel_l2 at most this
    sample: float = 1.0  # fraction of the primary's uncached requests copied


@dataclass(frozen=True)
class ModelRoute:
    model: str
    rollout: str  # the rollout's id: salts the sticky hash, names its statistics
    step: int  # the controller's step (statistics are kept per step)
    stable: str
    arms: tuple[Arm, ...]
    shadow: Shadow | None = None
    _cumulative: tuple[int, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        total, edges = 0.0, []
        for arm in self.arms:
            total += arm.weight
            edges.append(round(total * BUCKETS / 100))
        object.__setattr__(self, "_cumulative", tuple(edges))

    @property
    def versions(self) -> frozenset[str]:
        """Every version this route may answer with or shadow to (bounded metric labels)."""
        found = {arm.version for arm in self.arms}
        if self.shadow is not None:
            found.add(self.shadow.version)
        return frozenset(found)

    def choose(self, key: str) -> Arm:
        """The arm of the caller with sticky ``key`` (the same key, the same arm)."""
        if len(self.arms) == 1:
            return self.arms[0]
        point = bucket(self.rollout, key)
        for arm, edge in zip(self.arms, self._cumulative, strict=True):
            if point < edge:
                return arm
        return self.arms[-1]  # rounding: the last arm holds the top bucket

    def pinned(self, version: str) -> Arm | None:
        """The arm serving ``version`` (a caller asked for it by name), or None."""
        return next((arm for arm in self.arms if arm.version == version), None)


@dataclass(frozen=True)
class RouteTable:
    revision: int = 0  # grows with every change (the controller uses milliseconds since 1970)
    routes: Mapping[str, ModelRoute] = field(default_factory=dict)

    def get(self, model: str) -> ModelRoute | None:
        return self.routes.get(model)

    def to_json(self) -> str:
        body: dict[str, Any] = {"revision": self.revision, "models": {}}
        for name, route in sorted(self.routes.items()):
            entry = {k: v for k, v in asdict(route).items() if k not in ("model", "_cumulative")}
            entry["arms"] = [asdict(arm) for arm in route.arms]
            body["models"][name] = entry
        return json.dumps(body, sort_keys=True, separators=(",", ":"))


def bucket(salt: str, key: str) -> int:
    """A stable bucket in [0, BUCKETS) for ``key`` (the same on every replica and restart)."""
    digest = hashlib.blake2b(f"{salt}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def sticky_key(tenant: str, routing_key: str | None) -> str:
    """What a caller is sticky by: its ``X-Routing-Key`` (bounded), else its tenant."""
    if routing_key:
        return "k:" + routing_key[:MAX_KEY_CHARS]
    return "t:" + tenant


# -- parsing: every field checked, the message names it ------------------------------------------
def _field(obj: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    if name not in obj:
        raise RouteTableError(f"{where}: missing {name!r}")
    value = obj[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise RouteTableError(f"{where}.{name}: expected {kind.__name__}, got {value!r}")
    return value


def _version(value: Any, where: str, *, allow_empty: bool = False) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not (text.isdigit() or (allow_empty and text == "")):
        raise RouteTableError(f"{where}: a version is a number as a string, got {value!r}")
    return text


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 200 or "/" in value:
        raise RouteTableError(f"{where}: a Triton model name, got {value!r}")
    return value


def _arm(obj: Any, where: str) -> Arm:
    if not isinstance(obj, Mapping):
        raise RouteTableError(f"{where}: an object with version, weight, model")
    weight = _field(obj, "weight", float, where)
    if not math.isfinite(weight) or not 0 <= weight <= 100:
        raise RouteTableError(f"{where}.weight: a percentage in [0, 100], got {weight!r}")
    return Arm(
        _version(obj.get("version"), f"{where}.version"),
        weight,
        _name(obj.get("model"), f"{where}.model"),
        _version(obj.get("model_version", ""), f"{where}.model_version", allow_empty=True),
    )


def _shadow(obj: Any, where: str) -> Shadow | None:
    if obj is None:
        return None
    if not isinstance(obj, Mapping):
        raise RouteTableError(f"{where}: an object or null")
    metric = obj.get("metric")
    if metric not in METRICS:
        raise RouteTableError(f"{where}.metric: one of {', '.join(METRICS)}, got {metric!r}")
    budget = _field(obj, "budget", float, where)
    sample = _field(obj, "sample", float, where) if "sample" in obj else 1.0
    if not math.isfinite(budget) or budget < 0:
        raise RouteTableError(f"{where}.budget: a finite number >= 0, got {budget!r}")
    if not 0 < sample <= 1:
        raise RouteTableError(f"{where}.sample: a fraction in (0, 1], got {sample!r}")
    return Shadow(
        _version(obj.get("version"), f"{where}.version"),
        _name(obj.get("model"), f"{where}.model"),
        _version(obj.get("model_version", ""), f"{where}.model_version", allow_empty=True),
        cast(Metric, metric),
        budget,
        sample,
    )


def _route(model: str, obj: Any) -> ModelRoute:
    where = f"models.{model}"
    if not isinstance(obj, Mapping):
        raise RouteTableError(f"{where}: an object with rollout, step, stable, arms")
    arms_raw = obj.get("arms")
    if not isinstance(arms_raw, list) or not 1 <= len(arms_raw) <= MAX_ARMS:
        raise RouteTableError(f"{where}.arms: a list of 1..{MAX_ARMS} arms")
    arms = tuple(_arm(a, f"{where}.arms[{i}]") for i, a in enumerate(arms_raw))
    if len({a.version for a in arms}) != len(arms):
        raise RouteTableError(f"{where}.arms: each version at most once")
    total = sum(a.weight for a in arms)
    if abs(total - 100) > 1e-6:
        raise RouteTableError(f"{where}.arms: the weights add up to {total:g}, not 100")
    stable = _version(obj.get("stable"), f"{where}.stable")
    if stable not in {a.version for a in arms}:
        raise RouteTableError(f"{where}.stable: {stable!r} is not one of the arms' versions")
    shadow = _shadow(obj.get("shadow"), f"{where}.shadow")
    if shadow is not None and any(a.version == shadow.version and a.weight for a in arms):
        raise RouteTableError(f"{where}.shadow: version {shadow.version} also answers callers")
    rollout = _field(obj, "rollout", str, where)
    step = _field(obj, "step", int, where)
    if not rollout or len(rollout) > 64 or step < 0:
        raise RouteTableError(f"{where}: rollout is a short id and step a number >= 0")
    return ModelRoute(model, rollout, step, stable, arms, shadow)


def parse_table(raw: bytes | str | Mapping[str, Any]) -> RouteTable:
    """A route table from its JSON (``RouteTableError`` says which field is wrong)."""
    if isinstance(raw, bytes | str):
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise RouteTableError(f"not JSON: {exc}") from None
    else:
        doc = raw
    if not isinstance(doc, Mapping):
        raise RouteTableError("a JSON object with revision and models")
    revision = _field(doc, "revision", int, "table")
    models = doc.get("models", {})
    if not isinstance(models, Mapping) or len(models) > MAX_MODELS:
        raise RouteTableError(f"table.models: an object of at most {MAX_MODELS} routes")
    routes = {_name(name, "table.models"): _route(name, obj) for name, obj in models.items()}
    return RouteTable(revision, routes)


EMPTY = RouteTable()
