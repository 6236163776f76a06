"""Online feature lookup for the gateway: async, with a deadline, never blocking the loop.

Two readers return the same ``FeatureRow`` list for the same entities (tested):

* ``DirectRedisFeatures``: one pipelined HMGET per entity on Feast's own Redis keys, decoded
  by ``features.redis_layout`` (no ``import feast``); the default for Redis, because it was
  measured faster (benchmarks/README.md, "Online feature lookup").
* ``FeastSdkFeatures``: Feast's ``get_online_features_async`` (Redis), or the synchronous
  ``get_online_features`` in a single worker thread (SQLite has no async path in Feast).

Both normalise Feast's two spellings of "unknown entity" (SQLite: NOT_FOUND; Redis: PRESENT
with null values and a zero timestamp) to ``FeatureRow(event_timestamp=None)``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from features import redis_layout
from features.errors import FeatureStoreError, FeatureStoreUnavailable
from features.schema import (
    ENTITY_KEY,
    FEATURE_SERVICE,
    FEATURE_VIEW,
    MODEL_FEATURES,
    FeatureRow,
    Value,
    build_model_input,
)
from features.settings import FeatureSettings

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore


class OnlineFeatures(ABC):
    """Reads ``MODEL_FEATURES`` of entities from the online store. Open once, close once."""

    name: str = "online"

    def __init__(self, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    async def read(self, entity_ids: Sequence[int]) -> list[FeatureRow]:
        """One row per id, in order (duplicates allowed). Raises ``FeatureStoreUnavailable``
        when the store does not answer within ``timeout_s``."""
        ids = [int(i) for i in entity_ids]
        if not ids:
            return []
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._read(ids)
        except TimeoutError as exc:
            raise FeatureStoreUnavailable(
                f"{self.name}: online lookup of {len(ids)} entities exceeded {self.timeout_s} s"
            ) from exc
        except (OSError, redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            raise FeatureStoreUnavailable(f"{self.name}: online store unreachable: {exc}") from exc

    @abstractmethod
    async def _read(self, entity_ids: list[int]) -> list[FeatureRow]: ...

    @abstractmethod
    async def ping(self) -> bool:
        """True when the online store answers (readiness)."""

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class DirectRedisFeatures(OnlineFeatures):
    """Feast's Redis hashes read directly: HMGET of the model's fields, one round trip."""

    name = "redis-direct"

    def __init__(self, client: aioredis.Redis, *, project: str, timeout_s: float = 1.0) -> None:
        super().__init__(timeout_s=timeout_s)
        self.client = client
        self._prefix = redis_layout.entity_key_prefix(ENTITY_KEY)
        self._project = project.encode()
        self._fields = redis_layout.hash_fields(FEATURE_VIEW, MODEL_FEATURES)

    async def _read(self, entity_ids: list[int]) -> list[FeatureRow]:
        async with self.client.pipeline(transaction=False) as pipe:
            for entity_id in entity_ids:
                key = redis_layout.redis_key(self._prefix, entity_id, self._project)
                pipe.hmget(key, self._fields)  # type: ignore[arg-type]  # bytes keys are fine
            replies = await pipe.execute()
        return [self._row(i, reply) for i, reply in zip(entity_ids, replies, strict=True)]

    @staticmethod
    def _row(entity_id: int, reply: list[bytes | None]) -> FeatureRow:
        timestamp = redis_layout.decode_timestamp(reply[-1])
        if timestamp is None:
            return FeatureRow(entity_id, dict.fromkeys(MODEL_FEATURES), None)
        values = {
            name: redis_layout.decode_value(raw)
            for name, raw in zip(MODEL_FEATURES, reply, strict=False)
        }
        return FeatureRow(entity_id, values, timestamp)

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                return bool(await self.client.ping())  # type: ignore[misc]
        except (TimeoutError, OSError, redis_errors.ConnectionError, redis_errors.TimeoutError):
            return False

    async def close(self) -> None:
        await self.client.aclose()


def _timestamp(seconds: int, nanos: int) -> datetime | None:
    if seconds == 0 and nanos == 0:
        return None
    return datetime.fromtimestamp(seconds + nanos / 1e9, tz=UTC)


def rows_from_response(entity_ids: Sequence[int], proto: Any) -> list[FeatureRow]:
    """Feast's ``GetOnlineFeaturesResponse`` -> rows. Columns come back in Feast's own order
    (not the service's), so values are picked by name."""
    names = list(proto.metadata.feature_names.val)
    columns = {name: proto.results[j] for j, name in enumerate(names)}
    rows = []
    for i, entity_id in enumerate(entity_ids):
        values: dict[str, Value] = {}
        stamps: list[datetime] = []
        for name in MODEL_FEATURES:
            column = columns[name]
            value = column.values[i]
            kind = value.WhichOneof("val")
            values[name] = None if kind in (None, "null_val") else getattr(value, kind)
            ts = _timestamp(column.event_timestamps[i].seconds, column.event_timestamps[i].nanos)
            if ts is not None:
                stamps.append(ts)
        if not stamps:  # NOT_FOUND (SQLite) or PRESENT-with-null and no timestamp (Redis)
            rows.append(FeatureRow(entity_id, dict.fromkeys(MODEL_FEATURES), None))
        else:
            rows.append(FeatureRow(entity_id, values, max(stamps)))
    return rows


class FeastSdkFeatures(OnlineFeatures):
    """Feast's SDK. ``use_async``: ``get_online_features_async`` (Redis); otherwise the sync
    call runs in one dedicated worker thread so the event loop never blocks (SQLite)."""

    name = "feast-sdk"

    def __init__(self, store: FeatureStore, *, use_async: bool, timeout_s: float = 1.0) -> None:
        super().__init__(timeout_s=timeout_s)
        self.store = store
        self.use_async = use_async
        self.service: FeatureService = store.get_feature_service(FEATURE_SERVICE)
        self._executor = (
            None
            if use_async
            else concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="feast-online")
        )
        self._initialized = False

    async def _read(self, entity_ids: list[int]) -> list[FeatureRow]:
        rows = [{ENTITY_KEY: i} for i in entity_ids]
        if self._executor is None:
            if not self._initialized:
                await self.store.initialize()
                self._initialized = True
            response = await self.store.get_online_features_async(
                features=self.service, entity_rows=rows
            )
        else:
            loop = asyncio.get_running_loop()
            response = await loop.run_in_executor(
                self._executor,
                lambda: self.store.get_online_features(features=self.service, entity_rows=rows),
            )
        return rows_from_response(entity_ids, response.proto)

    async def ping(self) -> bool:
        try:
            await self.read([0])
        except Exception:
            return False
        return True

    async def close(self) -> None:
        if self._initialized:
            await self.store.close()
        # Feast 0.67's Redis store opens an async client in get_online_features_async and
        # never closes it (its close() is the base no-op): close it here, on this loop.
        online = getattr(self.store._get_provider(), "online_store", None)
        client = getattr(online, "_client_async", None)
        if client is not None:
            await client.aclose()
            online._client_async = None  # type: ignore[union-attr]
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def open_direct_redis(settings: FeatureSettings) -> DirectRedisFeatures:
    if not settings.redis_url:
        raise ValueError("the direct reader needs FEATURES_REDIS_URL")
    url = settings.redis_url
    if "://" not in url:  # Feast's host:port,db=N form
        host_port, *params = url.split(",")
        options = dict(p.split("=", 1) for p in params)
        url = f"redis://{host_port}/{options.get('db', 0)}"
    client = aioredis.Redis.from_url(
        url,
        socket_timeout=settings.lookup_timeout_s,
        socket_connect_timeout=settings.connect_timeout_s,
    )
    return DirectRedisFeatures(
        client, project=settings.project, timeout_s=settings.lookup_timeout_s
    )


def open_feast_sdk(settings: FeatureSettings) -> FeastSdkFeatures:
    # deferred on purpose: the SDK reader's alone (Feast's store), never the direct reader's
    from features.store import open_store

    return FeastSdkFeatures(
        open_store(settings),
        use_async=settings.store_kind == "redis",
        timeout_s=settings.lookup_timeout_s,
    )


def open_online_features(settings: FeatureSettings | None = None) -> OnlineFeatures:
    """The reader ``settings`` select: Redis -> direct (``reader=sdk`` for Feast's async SDK);
    SQLite -> Feast's SDK in a worker thread. Connections open lazily on first use."""
    settings = settings or FeatureSettings()
    if settings.store_kind == "redis" and settings.reader in ("auto", "direct"):
        return open_direct_redis(settings)
    if settings.reader == "direct":
        raise ValueError("reader 'direct' needs the Redis online store (FEATURES_REDIS_URL)")
    return open_feast_sdk(settings)


async def lookup(settings: FeatureSettings, entity_ids: Sequence[int]) -> list[dict[str, object]]:
    """Each entity's features in the online store and what serving would make of them ("ok",
    or the error it would answer), as ``tritonstack features get`` prints them."""
    async with open_online_features(settings) as reader:
        rows = await reader.read(entity_ids)
    out: list[dict[str, object]] = []
    for row in rows:
        try:
            build_model_input([row], policy="reject", max_age_s=settings.max_age_s)
            outcome = "ok"
        except FeatureStoreError as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        ts = row.event_timestamp.isoformat() if row.event_timestamp else None
        out.append(
            {"driver_id": row.entity_id, **row.values, "event_timestamp": ts, "outcome": outcome}
        )
    return out
