"""What inference capture costs the gateway, and whether the sink keeps up: one run.

``python -m benchmarks.capture_overhead --save benchmarks/results``

One Triton and one redis-server, two gateways in front of them that differ only in capture
(``off``; ``on``: every request captured, ``GATEWAY_CAPTURE_SAMPLE_RATES={"*": 1.0}``), and the
capture sink. Each route is driven by the same closed-loop generator (``benchmarks.loadgen``,
a fresh input per request: no cache answers), alternating off/on (the order swapped every
repeat) so that the machine's noise spreads over both:

- ``ranker-v2``: ``POST /v2/models/driver_ranker/infer``, 8 random feature rows (JSON), when
  driver_ranker is exported: the cheapest model, so capture's share is largest;
- ``embeddings``: ``POST /v1/embeddings``, one fresh sentence (minilm_text), when exported:
  the largest record (a 384-float vector per text).

The sink is paused (SIGSTOP) while a point is measured, so that the gateways' own cost is what
is compared (in a cluster the sink runs in its own pod), and resumed between points, where it
drains what the ``on`` gateway wrote. Then the sink's capacity: the ``on`` gateway at full load
with the sink paused fills the stream, and the resumed sink's drain rate (records/s) is
compared with the gateway's request rate.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import redis
import typer
from rich.console import Console

from benchmarks import report
from benchmarks.loadgen import Point, closed_loop, make_point
from deploy.local.harness import gateway_process, local_stack, unlimited_tenant
from deploy.local.monitoring import MonitoringProcess
from deploy.local.settings import StackSettings
from export.reader import servable_models

STREAM = "tritonstack:capture"
WORDS = ("serving", "model", "triton", "gateway", "drift", "sink", "stream", "window", "tensor")


def _sender(route: str, url: str, key: str, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    headers = {"Authorization": f"Bearer {key}"}

    async def send(session: aiohttp.ClientSession, i: int) -> bool:
        body: dict[str, Any]
        if route == "ranker-v2":
            rows = np.column_stack([rng.random(8), rng.random(8), rng.integers(0, 30, 8)])
            tensor = {"name": "features", "datatype": "FP32", "shape": [8, 3]}
            body = {"inputs": [{**tensor, "data": rows.ravel().tolist()}]}
            path = "/v2/models/driver_ranker/infer"
        else:
            words = " ".join(rng.choice(WORDS, 8))
            body = {"input": f"{words} {seed} {i}", "model": "minilm"}
            path = "/v1/embeddings"
        async with session.post(url + path, json=body, headers=headers) as response:
            await response.read()
            return response.status == 200

    return send


async def _point(
    route: str, url: str, key: str, c: int, seconds: float
) -> tuple[list[float], int, float]:
    send = _sender(route, url, key, secrets.randbits(32))
    connector = aiohttp.TCPConnector(limit=c)
    async with aiohttp.ClientSession(connector=connector) as session:
        return await closed_loop(lambda i: send(session, i), c, seconds, warmup_s=1.0)


def _backlog(client: redis.Redis) -> int:
    for group in client.xinfo_groups(STREAM):  # type: ignore[union-attr]
        if group["name"] == b"sink":
            return int(group.get("lag") or 0) + int(group["pending"])
    return 0


def _drain(client: redis.Redis, timeout_s: float = 120.0) -> float:
    """Seconds until the sink has taken and acknowledged everything in the stream."""
    started = time.perf_counter()
    while _backlog(client) > 0 and time.perf_counter() - started < timeout_s:
        time.sleep(0.05)
    return time.perf_counter() - started


def main(
    concurrency: int = typer.Option(16, help="closed-loop workers"),
    seconds: float = typer.Option(8.0, help="measured seconds per point"),
    repeats: int = typer.Option(3, min=1),
    fill_seconds: float = typer.Option(10.0, help="full load with the sink paused (capacity)"),
    save: Path | None = typer.Option(None, help="directory for <date>-vm-capture.{json,md}"),
    shared: bool = typer.Option(
        True, "--shared/--quiet", help="label the results: the machine was shared (or quiet)"
    ),
) -> None:
    console = Console()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = StackSettings()
    served = servable_models(settings.model_repository)[0]
    routes = [r for r, m in (("ranker-v2", "driver_ranker"), ("embeddings", "minilm_text"))
              if m in served]  # fmt: skip
    if not routes:
        raise typer.BadParameter("export minilm (tritonstack export) or driver_ranker first")
    models = [m for m in served if m.startswith("minilm") or m == "driver_ranker"]
    key, tenants = unlimited_tenant()
    points: list[Point] = []
    with tempfile.TemporaryDirectory(prefix="tritonstack-capture-") as tmp, ExitStack() as run:
        base = Path(tmp)
        stack = run.enter_context(local_stack(base, settings, models=models, with_gateway=False))
        assert stack.redis is not None
        common = {"GATEWAY_ENVIRONMENT": "development", "GATEWAY_SCORING_ENABLED": "false",
                  "GATEWAY_PROBE_INTERVAL_S": "0"}  # fmt: skip
        gateways = {}
        for name, extra in (
            ("off", {"GATEWAY_CAPTURE_ENABLED": "false"}),
            ("on", {"GATEWAY_CAPTURE_ENABLED": "true",
                    "GATEWAY_CAPTURE_SAMPLE_RATES": '{"*": 1.0}'}),
        ):  # fmt: skip
            process = gateway_process(base / name, stack.triton.grpc_url,
                                      redis_url=stack.redis.url, tenants=tenants,
                                      settings={**common, **extra}, host=settings.host)  # fmt: skip
            gateways[name] = run.enter_context(process)
        sink = run.enter_context(
            MonitoringProcess("capture", base / "sink", store_url=str(base / "store"),
                              redis_url=stack.redis.url, settings={"CAPTURE_LINGER_S": "0.5"})
        )  # fmt: skip
        client = redis.Redis.from_url(stack.redis.url)
        drains: list[dict[str, float]] = []
        for repeat in range(repeats):
            order = ("off", "on") if repeat % 2 == 0 else ("on", "off")
            for route in routes:
                for name in order:
                    assert sink.pid is not None
                    os.killpg(sink.pid, signal.SIGSTOP)
                    lat, errors, secs = asyncio.run(
                        _point(route, gateways[name].url, key, concurrency, seconds)
                    )
                    os.killpg(sink.pid, signal.SIGCONT)
                    point = make_point(f"{route}/{name}", concurrency, repeat, lat, errors, secs)
                    console.print(point)
                    points.append(point)
                    if name == "on":
                        backlog = _backlog(client)
                        drains.append({"records": backlog, "seconds": _drain(client)})
        capacity = []
        for route in routes:  # fill with the sink paused, then time its drain
            assert sink.pid is not None
            os.killpg(sink.pid, signal.SIGSTOP)
            lat, _, secs = asyncio.run(_point(route, gateways["on"].url, key, concurrency,
                                              fill_seconds))  # fmt: skip
            backlog = _backlog(client)
            os.killpg(sink.pid, signal.SIGCONT)
            took = _drain(client)
            rate = round(backlog / took, 1) if took else None
            capacity.append({"route": route, "gateway_req_per_s": round(len(lat) / secs, 1),
                             "records": backlog, "sink_records_per_s": rate})  # fmt: skip
            console.print(capacity[-1])
    summary = _summarize(points, routes)
    console.print(summary)
    if save is not None:
        _save(save, points, summary, capacity, drains, concurrency, seconds, repeats, shared,
              fill_seconds)  # fmt: skip


def _summarize(points: list[Point], routes: list[str]) -> list[dict[str, Any]]:
    rows = []
    for route in routes:
        off = [p for p in points if p.target == f"{route}/off"]
        on = [p for p in points if p.target == f"{route}/on"]
        pairs = list(zip(sorted(off, key=lambda p: p.repeat), sorted(on, key=lambda p: p.repeat),
                         strict=True))  # fmt: skip
        rows.append(
            {
                "route": route,
                "throughput_off": round(statistics.median(p.throughput for p in off), 1),
                "throughput_on": round(statistics.median(p.throughput for p in on), 1),
                "throughput_ratio": round(
                    statistics.median(b.throughput / a.throughput for a, b in pairs), 4
                ),
                "p50_off_ms": round(statistics.median(p.p50_ms for p in off), 3),
                "p50_on_ms": round(statistics.median(p.p50_ms for p in on), 3),
                "added_p50_ms": round(statistics.median(b.p50_ms - a.p50_ms for a, b in pairs), 3),
                "errors": sum(p.errors for p in off + on),
            }
        )
    return rows


def _save(
    directory: Path, points: list[Point], summary: list[dict[str, Any]],
    capacity: list[dict[str, Any]], drains: list[dict[str, float]], c: int, seconds: float,
    repeats: int, shared: bool, fill_seconds: float,
) -> None:  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"{date.today().isoformat()}-vm-capture"
    machine = report.machine(
        "load generator, two gateways, Redis, the sink and Triton share the cores"
        + ("; measured while the machine was shared with other work" if shared else "")
    )
    label = "--shared" if shared else "--quiet"
    command = (f"python -m benchmarks.capture_overhead --concurrency {c} --seconds {seconds:g} "
               f"--repeats {repeats} --fill-seconds {fill_seconds:g} --save {directory} "
               f"{label}")  # fmt: skip
    stem.with_suffix(".json").write_text(json.dumps(
        {"machine": machine, "command": command, "summary": summary, "capacity": capacity,
         "drains": drains, "points": [asdict(p) for p in points]}, indent=2) + "\n")  # fmt: skip
    lines = [
        "# Inference capture: the gateway with capture off vs on (100 %), and the sink",
        "", f"Machine: {machine}.", f"Command: `{command}`.", "",
        f"Concurrency {c}; medians over {repeats} interleaved repeats; the ratio and the added "
        "p50 are medians of the per-repeat pairs. Targets: throughput on/off >= 0.95, added "
        "p50 < 0.2 ms.", "",
        "| route | req/s off | req/s on | on/off | p50 off ms | p50 on ms | added p50 ms "
        "| errors |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in summary:
        lines.append(f"| {r['route']} | {r['throughput_off']} | {r['throughput_on']} | "
                     f"{r['throughput_ratio']:.3f} | {r['p50_off_ms']} | {r['p50_on_ms']} | "
                     f"{r['added_p50_ms']:+.3f} | {r['errors']} |")  # fmt: skip
    lines += ["", "The sink's capacity: the stream filled at full load with the sink paused, "
              "then drained:", "", "| route | gateway req/s | records | sink records/s |",
              "|---|---|---|---|"]  # fmt: skip
    for r in capacity:
        lines.append(f"| {r['route']} | {r['gateway_req_per_s']} | {r['records']} | "
                     f"{r['sink_records_per_s']} |")  # fmt: skip
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    typer.run(main)
