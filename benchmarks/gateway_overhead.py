"""What the gateway costs its users: direct Triton, the floor of a Python forwarder and the
gateway, side by side in one run against the same Triton.

``python -m benchmarks.gateway_overhead --concurrency 1,8,32 --save benchmarks/results``

Starts its own Triton (the exported ``model_repository``), redis-server, gateway and the floor
forwarder (``benchmarks/floor.py``: raw ASGI on uvicorn, one key check, stdlib json,
``tritonclient.grpc.aio``, no Redis) on free loopback ports, then drives each target with the
same closed-loop async load generator (N workers, each sending its next request when the last
one answered), interleaving targets over repeats so that machine noise spreads evenly:

- ``triton-grpc``: ``tritonclient.grpc.aio`` straight to Triton, token ids (the reference of
  the v2 targets);
- ``triton-grpc-text``: the same with a raw sentence to the text pipeline ``minilm_text``
  (the reference of ``/v1/embeddings``), when it is exported;
- ``floor-v2-json``: the floor, KServe v2 JSON, a fresh input per request;
- ``gateway-v2-json-miss``: the gateway, the same requests, every feature on (auth, the Redis
  rate limit, the cache lookup and its refill, validation, metrics);
- ``gateway-v2-json-hit``: one request again and again (the gateway's cache answers);
- ``gateway-v2-binary-miss``: binary tensors (what ``tritonclient.http`` sends), fresh inputs;
- ``gateway-embeddings-miss``: ``POST /v1/embeddings`` with a fresh sentence per request.

Each point reports throughput, latency percentiles and the server's **own CPU per request**
(the process's user + system seconds from ``/proc/<pid>/stat`` over the measured window,
divided by the requests completed in it; Redis' beside it for the gateway), so the gateway is
compared with the floor on what it costs, not only on what the shared cores let it reach.
``--profile DIR`` then profiles the floor and the gateway under one more load of the chosen
point with py-spy (flame graph + top functions).

Why an async Python generator and not wrk/hey/locust: one tool must drive gRPC and HTTP with
identical statistics, and it must make a fresh input per request (wrk needs Lua for that and
has no gRPC; locust's per-user overhead dominates at these latencies on 2 cores). The HTTP
client is aiohttp, not httpx: httpx spent several times the client CPU per request, and on
shared cores that CPU is taken from the server under test (benchmarks/README.md, "Gateway
overhead").
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
import tempfile
import urllib.request
from pathlib import Path

import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from benchmarks import gateway_report
from benchmarks.floor import FloorProcess
from benchmarks.gateway_load import TARGETS, Servers, run_target
from benchmarks.loadgen import make_point
from benchmarks.profiling import record, summarize
from deploy.local.harness import local_stack, unlimited_tenant
from deploy.local.settings import StackSettings
from export.reader import servable_models


def _durations(metrics_url: str) -> dict[str, float]:
    """The gateway's own timing counters: the sum and count of its request durations (from the
    middleware's entry to the response's last byte) and of its upstream (gRPC) calls."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        return durations_from_text(response.read().decode())


def durations_from_text(text: str) -> dict[str, float]:
    """Sum and count of the model routes' request durations and of the upstream calls, from a
    Prometheus exposition (routes without a model, /metrics and health, are left out)."""
    totals = dict.fromkeys(("request_sum", "request_count", "upstream_sum", "upstream_count"), 0.0)
    names = {
        "gateway_request_duration_seconds": "request",
        "gateway_upstream_duration_seconds": "upstream",
    }
    for family in text_string_to_metric_families(text):
        kind = names.get(family.name)
        for sample in family.samples if kind else ():
            for suffix in ("sum", "count"):
                if sample.name.endswith(f"_{suffix}") and sample.labels.get("model"):
                    totals[f"{kind}_{suffix}"] += sample.value
    return totals


def split_time(
    before: dict[str, float], after: dict[str, float], client_ms: float
) -> dict[str, float]:
    """Where a gateway request's time goes (means per request over the point, warm-up
    included): the client's round trip, the gateway's own time from the first to the last byte,
    the time in upstream (gRPC) calls, what is left in the gateway (auth, limits, validation,
    cache, encoding) and what is left outside it (HTTP on the wire, the client)."""
    delta = {k: after[k] - before[k] for k in after}
    requests = max(delta["request_count"], 1)
    server = 1000 * delta["request_sum"] / requests
    upstream = 1000 * delta["upstream_sum"] / requests  # a cache hit calls nothing upstream
    return {
        "client_mean_ms": round(client_ms, 2),
        "gateway_server_ms": round(server, 2),
        "upstream_ms": round(upstream, 2),
        "gateway_own_ms": round(server - upstream, 2),
        "http_and_client_ms": round(client_ms - server, 2),
    }


def _measure(
    servers: Servers, targets: list[str], levels: list[int], seconds: float, repeats: int
) -> tuple[list[gateway_report.Measured], Console]:
    console = Console(width=200)
    measured: list[gateway_report.Measured] = []
    for repeat in range(repeats):
        for c in levels:
            for target in targets:
                before = _durations(servers.metrics_url) if target.startswith("gateway") else None
                window = asyncio.run(
                    run_target(target, servers, c, seconds, seed=secrets.randbits(64))
                )
                point = make_point(
                    target, c, repeat, window.latencies, window.errors, window.seconds
                )
                extra = gateway_report.cpu_per_request(window, target)
                if before is not None:
                    mean_ms = 1000 * sum(window.latencies) / max(1, len(window.latencies))
                    extra.update(split_time(before, _durations(servers.metrics_url), mean_ms))
                console.print(point, extra)
                measured.append(gateway_report.Measured(point, extra))
    return measured, console


def _profile(
    servers: Servers, directory: Path, target: str, c: int, seconds: float
) -> dict[str, object]:
    """py-spy on the floor and the gateway, each under its own load of the same point."""
    found: dict[str, object] = {}
    for name, which, pid in (
        ("floor", "floor-v2-json", servers.floor_pid),
        ("gateway", target, servers.gateway_pid),
    ):
        stem = directory / f"profile-{name}-{which}-c{c}"
        commands = asyncio.run(_load_and_profile(servers, which, pid, stem, c, seconds))
        found[name] = {
            "target": which,
            "concurrency": c,
            "commands": commands,
            "flame_graph": stem.with_suffix(".svg").name,
            **summarize(stem.with_suffix(".txt").read_text()),
        }
    return found


async def _load_and_profile(
    servers: Servers, target: str, pid: int, stem: Path, c: int, seconds: float
) -> list[str]:
    running = asyncio.ensure_future(run_target(target, servers, c, seconds + 4, seed=1))
    await asyncio.sleep(1.5)  # past the warm-up
    commands = await asyncio.to_thread(record, pid, stem, seconds / 2)
    await running
    return commands


def _relative(path: Path) -> Path:
    """A path under the working directory as the command line would write it."""
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def main(
    concurrency: str = typer.Option("1,8,32", help="comma-separated concurrency levels"),
    seconds: float = typer.Option(8.0, help="measured seconds per point"),
    repeats: int = typer.Option(2, min=1),
    targets: str = typer.Option(",".join(TARGETS), help="which targets, comma-separated"),
    save: Path | None = typer.Option(None, help="directory for <date>-vm-gateway.{json,md}"),
    profile: Path | None = typer.Option(None, help="directory for py-spy profiles"),
    profile_point: str = typer.Option("gateway-v2-json-miss:32", help="target:concurrency"),
    label: str = typer.Option("", help="a note on the machine's state (e.g. shared)"),
    stem: str = typer.Option("gateway", help="results file name: <date>-vm-<stem>.{json,md}"),
) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on a kill too
    settings = StackSettings()
    levels = [int(c) for c in concurrency.split(",")]
    models = [m for m in servable_models(settings.model_repository)[0] if m.startswith("minilm")]
    chosen = [t for t in targets.split(",") if t != "triton-grpc-text" or "minilm_text" in models]
    key, tenants = unlimited_tenant()  # a tenant the load cannot rate-limit
    with (
        tempfile.TemporaryDirectory(prefix="tritonstack-bench-") as tmp,
        local_stack(Path(tmp), settings, models=models, tenants=tenants) as stack,
    ):
        assert stack.gateway is not None and stack.redis is not None
        with FloorProcess(Path(tmp) / "floor", stack.triton.grpc_url, key) as floor:
            servers = Servers.of(stack, floor, key)
            measured, console = _measure(servers, chosen, levels, seconds, repeats)
            profiles: dict[str, object] = {}
            if profile is not None:
                target, _, c = profile_point.partition(":")
                profiles = _profile(servers, profile, target, int(c), seconds)
    summary = gateway_report.summarize(measured, levels, chosen)
    console.print(gateway_report.table(summary))
    checks = gateway_report.targets_met(summary)
    console.print(checks)
    if save is not None:
        save, profile = _relative(save), _relative(profile) if profile else None
        command = (
            f"python -m benchmarks.gateway_overhead --concurrency {concurrency} "
            f"--seconds {seconds:g} --repeats {repeats} --save {save}"
            + (f" --profile {profile} --profile-point {profile_point}" if profile else "")
            + (f" --stem {stem}" if stem != "gateway" else "")
        )
        gateway_report.save(save, measured, summary, checks, profiles, command, label, stem)


if __name__ == "__main__":
    typer.run(main)
