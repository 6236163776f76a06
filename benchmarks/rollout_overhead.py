"""What a rollout costs the gateway's primary path: routing, and shadow copies.

``python -m benchmarks.rollout_overhead --save benchmarks/results``

The real gateway app (``create_app``, its middleware, routers, cache and limiter in process, its
lifespan running) called through ASGI in one event loop, in front of the route tests' fake
Triton (tests/fake_triton.py), so that what is measured is the gateway's own work; every
configuration runs in the same process, in interleaved rounds, and the ratios are taken
within the run:

- **routing**: ``POST /v2/models/minilm/infer`` (JSON, ``Cache-Control: no-cache``, a new
  ``X-Routing-Key`` per request), one caller at a time, the fake answering at once: the median
  request time with no route table against a table with a route for the model (two arms,
  50/50, sticky by the key). Also ``Rollouts.route`` timed alone.
- **shadow**: 16 callers, the fake Triton answering after 2 ms (an upstream with capacity of
  its own): requests per second with a route without a shadow against the same route with a
  shadow copying every request (``sample`` 1.0), copies compared in the gateway. The shadow
  version's compute on a real Triton is capacity the operator provisions for it; what the
  primary path pays in the gateway is what this measures.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import typer
from fastapi import FastAPI
from rich.console import Console
from starlette.types import Message

from benchmarks import report
from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.tenants import TenantConfig, hash_key
from tests.fake_triton import FakeTriton

KEY = "ts_bench-rollouts-0123456789abcdefghijk"
PATH = "/v2/models/minilm/infer"
BODY = json.dumps(
    {"inputs": [{"name": n, "datatype": "INT64", "shape": [1, 8], "data": d}
                for n, d in (("input_ids", [101, *range(2000, 2006), 102]),
                             ("attention_mask", [1] * 8), ("token_type_ids", [0] * 8))]}
).encode()  # fmt: skip
ARMS = [
    {"version": "2", "weight": 50, "model": "minilm", "model_version": "2"},
    {"version": "1", "weight": 50, "model": "minilm", "model_version": "1"},
]
UPSTREAM_S = (0.010, 0.002)  # a MiniLM-like model time (the gateway has CPU to spare); a fast one
SHADOW = {"version": "2", "model": "minilm", "model_version": "2", "metric": "cosine",
          "budget": 0.99, "sample": 1.0}  # fmt: skip


class SlowTriton(FakeTriton):
    """The fake Triton, answering after ``delay_s`` (an upstream with capacity of its own)."""

    delay_s = 0.0

    async def infer(self, *args: Any, **kwargs: Any) -> Any:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return await super().infer(*args, **kwargs)


def _app(directory: Path, name: str, arms: list[Any] | None, shadow: Any, delay_s: float) -> Any:
    """The gateway with the fake Triton (answering after ``delay_s``) and a route table."""
    routes = None
    if arms is not None:
        routes = directory / f"{name}.json"
        entry = {"rollout": "bench", "step": 1, "stable": "1", "arms": arms, "shadow": shadow}
        routes.write_text(json.dumps({"revision": 1, "models": {"minilm": entry}}))
    fake = SlowTriton()
    fake.delay_s = delay_s
    tenant = TenantConfig(key_sha256=[hash_key(KEY)], models=["*"], rate_per_s=1e9, burst=10**9,
                          max_inflight=10_000)  # fmt: skip
    settings = GatewaySettings(
        tenants={"bench": tenant}, environment="development", metrics_port=0,
        probe_interval_s=0, scoring_enabled=False, routes_file=routes, health_interval_s=60,
        shadow_workers=32, shadow_queue=1024,  # enough to make every copy, not drop it
    )  # fmt: skip
    return create_app(settings, upstream=fake)


async def _call(app: Any, key: str) -> int:
    sent = False
    status = 0

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    headers = [(b"host", b"bench"), (b"authorization", f"Bearer {KEY}".encode()),
               (b"content-type", b"application/json"), (b"cache-control", b"no-cache"),
               (b"content-length", str(len(BODY)).encode()),
               (b"x-routing-key", key.encode())]  # fmt: skip
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": PATH, "raw_path": PATH.encode(), "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 2), "state": {}}  # fmt: skip
    await app(scope, receive, send)
    return status


async def _latencies(app: Any, n: int, offset: int) -> list[float]:
    times = []
    for i in range(n):
        started = time.perf_counter()
        status = await _call(app, f"user{offset + i}")
        times.append(time.perf_counter() - started)
        assert status == 200, status
    return times


async def _throughput(app: Any, seconds: float, concurrency: int) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller(k: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < deadline:
            assert await _call(app, f"c{k}-{i}") == 200
            done += 1
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(concurrency)))
    return done / (time.perf_counter() - started)


async def _with_lifespans(apps: dict[str, FastAPI], run: Callable[[], Any]) -> Any:
    contexts = [app.router.lifespan_context(app) for app in apps.values()]
    for context in contexts:
        await context.__aenter__()
    try:
        return await run()
    finally:
        for context in reversed(contexts):
            await context.__aexit__(None, None, None)


async def _routing(directory: Path, rounds: int, n: int) -> dict[str, Any]:
    apps = {"no route table": _app(directory, "none", None, None, 0.0),
            "a route, 2 arms 50/50, sticky key": _app(directory, "route", ARMS, None,
                                                      0.0)}  # fmt: skip

    async def run() -> dict[str, Any]:
        times: dict[str, list[float]] = {name: [] for name in apps}
        for app in apps.values():  # warm-up
            await _latencies(app, 300, 0)
        for r in range(rounds):
            for name, app in apps.items():
                times[name] += await _latencies(app, n, r * n)
        medians = {name: 1e3 * statistics.median(t) for name, t in times.items()}
        plain, routed = medians.values()
        rollouts = apps["a route, 2 arms 50/50, sticky key"].state.services.rollouts
        model = await rollouts.upstream.model("minilm")
        request = type("R", (), {"headers": {"x-routing-key": "user42"}})()
        tenant = next(iter(rollouts.settings.tenants.values()))
        tenant_obj = type("T", (), {"name": "bench", "config": tenant})()
        alone = min(timeit.repeat(lambda: rollouts.route(model, tenant_obj, request),
                                  number=20_000, repeat=5)) / 20_000  # fmt: skip
        return {
            "median_ms": {k: round(v, 4) for k, v in medians.items()},
            "added_median_ms": round(routed - plain, 4),
            "route_call_us": round(1e6 * alone, 2),
            "requests_each": rounds * n,
        }

    result: dict[str, Any] = await _with_lifespans(apps, run)
    return result


async def _shadow(directory: Path, rounds: int, seconds: float, delay_s: float) -> dict[str, Any]:
    stable = [{**ARMS[1], "weight": 100}]  # every caller on version 1; the copy to version 2
    apps = {"route without shadow": _app(directory, "plain", stable, None, delay_s),
            "route with shadow, every request copied": _app(directory, "shadow", stable, SHADOW,
                                                            delay_s)}  # fmt: skip

    async def run() -> dict[str, Any]:
        rates: dict[str, list[float]] = {name: [] for name in apps}
        for app in apps.values():
            await _throughput(app, 0.5, 16)  # warm-up
        for _ in range(rounds):
            for name, app in apps.items():
                rates[name].append(await _throughput(app, seconds, 16))
        shadowed = apps["route with shadow, every request copied"].state.services
        registry = shadowed.metrics.registry
        outcomes = {
            o: registry.get_sample_value("gateway_shadow_comparisons_total",
                                         {"model": "minilm", "version": "2", "outcome": o}) or 0
            for o in ("within", "outside", "error", "dropped")
        }  # fmt: skip
        medians = {name: statistics.median(r) for name, r in rates.items()}
        plain, copied = medians.values()
        return {
            "requests_per_s": {k: round(v, 1) for k, v in medians.items()},
            "rounds": {k: [round(x, 1) for x in v] for k, v in rates.items()},
            "throughput_cost_percent": round(100 * (1 - copied / plain), 2),
            "shadow_outcomes": outcomes,
        }

    result: dict[str, Any] = await _with_lifespans(apps, run)
    return result


def main(
    rounds: int = typer.Option(5, help="interleaved rounds per configuration"),
    requests: int = typer.Option(1000, help="routing: requests per round and configuration"),
    seconds: float = typer.Option(3.0, help="shadow: seconds per round and configuration"),
    save: Path | None = typer.Option(None, help="directory for <date>-vm-rollout-overhead.*"),
    shared: bool = typer.Option(True, help="say the machine was shared with other work"),
) -> None:
    console = Console(width=160)
    with tempfile.TemporaryDirectory(prefix="tritonstack-rollout-bench-") as tmp:
        results: dict[str, Any] = {
            "routing": asyncio.run(_routing(Path(tmp), rounds, requests)),
            "shadow": {
                f"upstream {round(1e3 * delay)} ms": asyncio.run(
                    _shadow(Path(tmp), rounds, seconds, delay)
                )
                for delay in UPSTREAM_S
            },
        }
    console.print_json(json.dumps(results))
    if save is None:
        return
    save.mkdir(parents=True, exist_ok=True)
    stem = save / f"{date.today().isoformat()}-vm-rollout-overhead"
    where = "the gateway, its callers and the fake Triton in one process"
    machine = report.machine(f"{where}; measured while the machine was shared with other work"
                             if shared else where)  # fmt: skip
    command = (f"python -m benchmarks.rollout_overhead --rounds {rounds} --requests {requests} "
               f"--seconds {seconds} --save {save}")  # fmt: skip
    body = {"machine": machine, "command": command, "results": results}
    stem.with_suffix(".json").write_text(json.dumps(body, indent=2) + "\n")
    routing = results["routing"]
    lines = [
        "# What a rollout costs the gateway's primary path",
        "",
        f"Machine: {machine}.",
        "",
        f"Command: `{command}` (benchmarks/rollout_overhead.py says what each part does).",
        "",
        "## Routing (target: < 0.1 ms added to the median request)",
        "",
        "| configuration | median request, ms |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in routing["median_ms"].items()),
        "",
        f"Added by routing: **{routing['added_median_ms']} ms** at the median "
        f"({routing['requests_each']} requests each, interleaved); `Rollouts.route` alone: "
        f"{routing['route_call_us']} us per call.",
        "",
        "## Shadow (target: < 5 % of the primary's throughput at concurrency 16)",
        "",
        "| upstream time | configuration | requests/s (median of rounds) | rounds |",
        "|---|---|---|---|",
    ]
    for upstream, shadow in results["shadow"].items():
        lines += [
            f"| {upstream} | {k} | {v} | {shadow['rounds'][k]} |"
            for k, v in shadow["requests_per_s"].items()
        ]
    lines += [""]
    for upstream, shadow in results["shadow"].items():
        lines.append(
            f"- {upstream}: the shadow cost the primary path **{shadow['throughput_cost_percent']}"
            f" %** of its throughput; shadow outcomes {shadow['shadow_outcomes']}"
        )
    lines += [
        "",
        "A copy is a second upstream call made by the same gateway process (the shadow "
        "version's compute is Triton capacity provisioned for it); a full shadow queue drops a "
        "copy rather than slow the primary.",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    console.print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    typer.run(main)
