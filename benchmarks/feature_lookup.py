"""Online lookup of 32 drivers from Redis, in-process: Feast's async SDK vs a direct HMGET read.

Starts its own redis-server (free loopback port), generates a small dataset, applies and
materializes it with Feast, then times ``OnlineFeatures.read`` for both readers on the same
keys, interleaved (one iteration of each in turn) so that machine noise hits both alike.

    .venv/bin/python -m benchmarks.feature_lookup [--iterations 5000] [--save benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from deploy.local.redis import RedisServer
from features.data import DatasetSpec, generate
from features.online import open_direct_redis, open_feast_sdk
from features.repo import FEATURE_TTL
from features.settings import FeatureSettings
from features.store import apply, materialize, open_store


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
    }


async def _measure(readers: dict[str, Any], ids: list[int], iterations: int, warmup: int):
    first = {name: await r.read(ids) for name, r in readers.items()}
    rows = list(first.values())
    if any(other != rows[0] for other in rows[1:]):
        raise SystemExit("the readers disagree: refusing to time them")
    samples: dict[str, list[float]] = {name: [] for name in readers}
    for i in range(warmup + iterations):
        for name, reader in readers.items():
            start = time.perf_counter()
            await reader.read(ids)
            elapsed = time.perf_counter() - start
            if i >= warmup:
                samples[name].append(elapsed)
    return {name: _percentiles(s) for name, s in samples.items()}, sum(r.found for r in rows[0])


def _run_on(
    redis_url: str, tmp: Path, iterations: int, warmup: int, entities: int
) -> tuple[dict[str, Any], int]:
    settings = FeatureSettings(state_dir=tmp / "features", redis_url=redis_url)
    dataset = generate(DatasetSpec(n_drivers=100, days=5, n_labels=100), settings.data_dir)
    store = open_store(settings)
    apply(settings, store)
    materialize(settings, start=dataset.end - FEATURE_TTL, end=dataset.end, store=store)
    active = dataset.drivers["active"]
    ids = [active[i % len(active)] for i in range(entities)]

    async def measure() -> tuple[dict[str, Any], int]:
        readers = {
            "feast_sdk_async": open_feast_sdk(settings),
            "direct_redis": open_direct_redis(settings),
        }
        try:
            return await _measure(readers, ids, iterations, warmup)
        finally:
            for reader in readers.values():
                await reader.close()

    return asyncio.run(measure())


def run(iterations: int, warmup: int, entities: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis")
        redis.start()
        try:
            results, found = _run_on(redis.url, Path(tmp), iterations, warmup, entities)
        finally:
            redis.stop()
    return {
        "benchmark": "online feature lookup, in-process, Redis",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "entities_per_lookup": entities,
        "found": found,
        "features": 3,
        "iterations": iterations,
        "warmup": warmup,
        "interleaved": True,
        "target_p99_ms": 2.0,
        "results": results,
        "machine": {
            "cpu_count": os.cpu_count(),
            "os": _os_name(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "gpu": "none",
            "redis_server": "Debian redis-server, loopback, no persistence",
        },
        "versions": {p: metadata.version(p) for p in ("feast", "redis", "hiredis")},
    }


def to_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# Online feature lookup: {result['entities_per_lookup']} drivers from Redis",
        "",
        f"Machine: {m['cpu_count']} cores, {m['os']} ({m['platform']}), "
        f"Python {m['python']}, no GPU; "
        f"{m['redis_server']}. {result['iterations']} interleaved iterations after "
        f"{result['warmup']} warm-up; target p99 < {result['target_p99_ms']} ms.",
        "",
        "| reader | p50 ms | p95 ms | p99 ms | mean ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["results"].items():
        lines.append(
            f"| {name} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | {r['p99_ms']:.3f} | "
            f"{r['mean_ms']:.3f} | {r['max_ms']:.3f} |"
        )
    lines += [
        "",
        f"Versions: {result['versions']}",
        "",
        "Command: `.venv/bin/python -m benchmarks.feature_lookup "
        f"--iterations {result['iterations']}`",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--entities", type=int, default=32)
    parser.add_argument("--save", type=Path, default=None, help="folder for the JSON + markdown")
    args = parser.parse_args()
    result = run(args.iterations, args.warmup, args.entities)
    text = to_markdown(result)
    print(text)
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        stem = args.save / f"{result['date'][:10]}-vm-feature-lookup"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        stem.with_suffix(".md").write_text(text)
        print(f"saved {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
