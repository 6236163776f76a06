"""A fake of the few ``redis.asyncio`` calls the route store and the step recorder make: a
pipeline of get/hset/hincrby/hincrbyfloat/expire, and a switch that makes Redis unreachable."""

from __future__ import annotations

from typing import Any


class FakePipeline:
    def __init__(self, store: FakeRedis) -> None:
        self.store = store
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, args))

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        if self.store.down:
            raise ConnectionError("redis down")
        return [self.store.apply(name, args) for name, args in self.calls]


class FakeRedis:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.down = False

    def pipeline(self, transaction: bool = False) -> FakePipeline:
        return FakePipeline(self)

    def apply(self, name: str, args: tuple[Any, ...]) -> Any:
        if name == "get":
            return self.data.get(args[0])
        if name in ("hincrby", "hincrbyfloat"):
            h = self.data.setdefault(args[0], {})
            h[args[1]] = h.get(args[1], 0) + args[2]
        elif name == "hset":
            self.data.setdefault(args[0], {})[args[1]] = args[2]
        return None

    def hash(self, key: str) -> dict[bytes, bytes]:
        return {k.encode(): str(v).encode() for k, v in self.data.get(key, {}).items()}
