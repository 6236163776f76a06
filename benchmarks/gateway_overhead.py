"""Gateway overhead: the same load directly to Triton (gRPC) and through the gateway, one run.

``python -m benchmarks.gateway_overhead --save benchmarks/results``

Starts its own Triton (the exported ``model_repository``), redis-server and gateway on free
loopback ports, then drives each target with the same closed-loop async load generator (N
workers, each sending its next request when the last one answered), interleaving targets over
repeats so that machine noise spreads evenly:

- ``triton-grpc``: ``tritonclient.grpc.aio`` straight to Triton (the reference);
- ``triton-grpc-text``: the same, with a raw sentence per request to the text pipeline
  ``minilm_text`` (tokenizer model -> encoder, a Triton ensemble), when it is exported;
- ``gateway-v2-miss``: ``POST /v2/models/minilm/infer`` with binary tensors (what
  ``tritonclient.http`` sends), every request a new input, so neither the gateway's cache nor
  Triton's response cache can answer;
- ``gateway-embeddings-miss``: ``POST /v1/embeddings`` with a new sentence per request
  (the gateway sends it to ``minilm_text``: tokenization runs in Triton);
- ``gateway-v2-hit``: the same request again and again (the gateway's cache answers).

Why an async Python generator and not wrk/hey/locust: one tool must drive gRPC and HTTP with
identical statistics, and it must make a fresh input per request (wrk needs Lua for that and
has no gRPC; locust's per-user overhead dominates at these latencies on 2 cores). The HTTP
client is aiohttp, not httpx: httpx spent several times the client CPU per request, and on
shared cores that CPU is taken from the server under test (benchmarks/README.md, "Gateway
overhead").
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import statistics
import sys
import tempfile
import urllib.request
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import cast

import aiohttp
import numpy as np
import tritonclient.grpc.aio as grpcaio
import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from benchmarks import report
from benchmarks.loadgen import Point, grpc_string_input, grpc_text_inputs, random_ids
from benchmarks.loadgen import binary_body as _binary_body
from benchmarks.loadgen import closed_loop as _closed_loop
from benchmarks.loadgen import make_point as _point
from deploy.local.harness import local_stack, unlimited_tenant
from deploy.local.settings import StackSettings
from export.reader import servable_models

SEQ = 16  # tokens per request, like the perf_analyzer sweep
WORDS = (
    "serving", "model", "triton", "gateway", "cache", "batch", "queue", "latency", "tensor",
)  # fmt: skip


def _ids(rng: np.random.Generator) -> np.ndarray:
    return random_ids(rng, SEQ)


def _sentence(rng: np.random.Generator, seed: int, i: int) -> str:
    """A fresh sentence of ten words plus a unique suffix (never a cache hit): 23-27 tokens
    with MiniLM's tokenizer, more than the ``SEQ`` ids of the ``triton-grpc`` target."""
    return " ".join(rng.choice(WORDS, size=10)) + f" {seed}-{i}"


async def _run_target(
    target: str, triton_url: str, gateway_url: str, key: str, c: int, seconds: float, seed: int
) -> tuple[list[float], int, float]:
    rng = np.random.default_rng(seed)
    auth = {"Authorization": f"Bearer {key}"}
    if target.startswith("triton-grpc"):
        client = grpcaio.InferenceServerClient(triton_url)

        async def send_grpc(i: int) -> bool:
            try:
                if target == "triton-grpc-text":
                    text = [_sentence(rng, seed, i)]
                    await client.infer("minilm_text", grpc_string_input(text), client_timeout=30)
                else:
                    await client.infer("minilm", grpc_text_inputs(_ids(rng)), client_timeout=30)
            except Exception:
                return False
            return True

        try:
            return await _closed_loop(send_grpc, c, seconds, 1.0)
        finally:
            await client.close()

    connector = aiohttp.TCPConnector(limit=c)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(gateway_url, connector=connector, timeout=timeout) as http:
        fixed_body, fixed_headers = _binary_body(_ids(rng))

        async def post(path: str, **kwargs: object) -> bool:
            async with http.post(path, **kwargs) as r:  # type: ignore[arg-type]
                await r.read()
                return r.status == 200

        async def send_http(i: int) -> bool:
            if target == "gateway-v2-miss":
                body, headers = _binary_body(_ids(rng))
                return await post("/v2/models/minilm/infer", data=body, headers={**auth, **headers})
            if target == "gateway-v2-hit":
                return await post(
                    "/v2/models/minilm/infer", data=fixed_body, headers={**auth, **fixed_headers}
                )
            text = _sentence(rng, seed, i)
            return await post(
                "/v1/embeddings", json={"input": text, "model": "minilm"}, headers=auth
            )

        return await _closed_loop(send_http, c, seconds, 1.0)


def _durations(metrics_url: str) -> dict[str, float]:
    """The gateway's own timing counters: the sum and count of its request durations (from the
    middleware's entry to the response's last byte) and of its upstream (gRPC) calls."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        return durations_from_text(response.read().decode())


def durations_from_text(text: str) -> dict[str, float]:
    """Sum and count of the model routes' request durations and of the upstream calls, from a
    Prometheus exposition (routes without a model, /metrics and health, are left out)."""
    totals = dict.fromkeys(("request_sum", "request_count", "upstream_sum", "upstream_count"), 0.0)
    for family in text_string_to_metric_families(text):
        kind = {"gateway_request_duration_seconds": "request",
                "gateway_upstream_duration_seconds": "upstream"}.get(family.name)  # fmt: skip
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


TARGETS = (
    "triton-grpc",
    "triton-grpc-text",
    "gateway-v2-miss",
    "gateway-embeddings-miss",
    "gateway-v2-hit",
)


def main(
    concurrency: str = typer.Option("1,16", help="comma-separated concurrency levels"),
    seconds: float = typer.Option(8.0, help="measured seconds per point"),
    repeats: int = typer.Option(2, min=1),
    save: Path | None = typer.Option(None, help="directory for <date>-<host>-gateway.{json,md}"),
) -> None:
    console = Console()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on a kill too
    settings = StackSettings()
    levels = [int(c) for c in concurrency.split(",")]
    # the encoder and, when exported, its text pipeline (what /v1/embeddings calls)
    models = [m for m in servable_models(settings.model_repository)[0] if m.startswith("minilm")]
    targets = [t for t in TARGETS if t != "triton-grpc-text" or "minilm_text" in models]
    key, tenants = unlimited_tenant()  # a tenant the load cannot rate-limit
    with (
        tempfile.TemporaryDirectory(prefix="tritonstack-bench-") as tmp,
        local_stack(Path(tmp), settings, models=models, tenants=tenants) as stack,
    ):
        triton, gateway = stack.triton, stack.gateway
        assert gateway is not None
        points: list[Point] = []
        splits: dict[tuple[str, int, int], dict[str, float]] = {}
        for repeat in range(repeats):
            for c in levels:
                for target in targets:
                    before = _durations(gateway.metrics_url)
                    lat, errors, secs = asyncio.run(
                        _run_target(
                            target, triton.grpc_url, gateway.url, key, c, seconds,
                            seed=secrets.randbits(64),  # inputs never repeat
                        )
                    )  # fmt: skip
                    point = _point(target, c, repeat, lat, errors, secs)
                    console.print(point)
                    points.append(point)
                    mean_ms = 1000 * statistics.fmean(lat) if lat else float("nan")
                    if target.startswith("gateway"):
                        splits[(target, c, repeat)] = split_time(
                            before, _durations(gateway.metrics_url), mean_ms
                        )
                    else:
                        splits[(target, c, repeat)] = {"client_mean_ms": round(mean_ms, 2)}
    summary = _summarize(points, levels, targets, splits)
    console.print(_table(summary))
    if save is not None:
        _save(save, points, summary, concurrency, seconds, repeats)


def _summarize(
    points: list[Point],
    levels: list[int],
    targets: list[str],
    splits: dict[tuple[str, int, int], dict[str, float]] | None = None,
) -> list[dict[str, object]]:
    rows = []
    for c in levels:
        base = [p for p in points if p.concurrency == c and p.target == "triton-grpc"]
        base_tp = statistics.median(p.throughput for p in base)
        base_p50 = statistics.median(p.p50_ms for p in base)
        for target in targets:
            mine = [p for p in points if p.concurrency == c and p.target == target]
            tp = [p.throughput for p in mine]
            rows.append(
                {
                    "target": target,
                    "concurrency": c,
                    "throughput": round(statistics.median(tp), 1),
                    "throughput_range": [min(tp), max(tp)],
                    "vs_triton": round(statistics.median(tp) / base_tp, 3),
                    "p50_ms": round(statistics.median(p.p50_ms for p in mine), 2),
                    "added_p50_ms": round(statistics.median(p.p50_ms for p in mine) - base_p50, 2),
                    "p99_ms": max(p.p99_ms for p in mine),
                    "errors": sum(p.errors for p in mine),
                    **_median_split(splits or {}, target, c),
                }
            )
    return rows


def _median_split(
    splits: dict[tuple[str, int, int], dict[str, float]], target: str, c: int
) -> dict[str, float]:
    mine = [v for (t, level, _), v in splits.items() if t == target and level == c]
    keys = mine[0].keys() if mine else ()
    return {k: round(statistics.median(v[k] for v in mine), 2) for k in keys}


def _table(rows: list[dict[str, object]]) -> Table:
    table = Table(title="gateway overhead (median of repeats; range in brackets)")
    for col in ("target", "c", "req/s", "vs triton", "p50 ms", "+p50 ms", "p99 ms", "errors"):
        table.add_column(col)
    for r in rows:
        low, high = cast(list[float], r["throughput_range"])
        table.add_row(
            str(r["target"]), str(r["concurrency"]), f"{r['throughput']} [{low}-{high}]",
            f"{r['vs_triton']:.2f}x", str(r["p50_ms"]), str(r["added_p50_ms"]), str(r["p99_ms"]),
            str(r["errors"]),
        )  # fmt: skip
    return table


def _machine() -> str:
    return report.machine("load generator, gateway, Redis and Triton share the same cores")


def _save(
    directory: Path,
    points: list[Point],
    summary: list[dict[str, object]],
    concurrency: str,
    seconds: float,
    repeats: int,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"{date.today().isoformat()}-vm-gateway"
    command = (
        f"python -m benchmarks.gateway_overhead --concurrency {concurrency} "
        f"--seconds {seconds:g} --repeats {repeats} --save {directory}"
    )
    stem.with_suffix(".json").write_text(
        json.dumps(
            {"machine": _machine(), "command": command, "summary": summary,
             "points": [asdict(p) for p in points]},
            indent=2,
        ) + "\n"
    )  # fmt: skip
    lines = [
        "# Gateway overhead: direct Triton gRPC vs through the gateway",
        "",
        f"Machine: {_machine()}.",
        f"Command: `{command}`. Model: MiniLM (python backend + ONNX Runtime), {SEQ} tokens, "
        "batch 1 per request, a fresh random input per request for every *miss* target.",
        "",
        "| target | concurrency | req/s (median [range]) | vs Triton gRPC | p50 ms | added p50 ms "
        "| p99 ms (worst) | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        low, high = cast(list[float], r["throughput_range"])
        lines.append(
            f"| {r['target']} | {r['concurrency']} | {r['throughput']} [{low}-{high}] | "
            f"{r['vs_triton']:.2f}x | {r['p50_ms']} | {r['added_p50_ms']} | {r['p99_ms']} | "
            f"{r['errors']} |"
        )
    lines += [
        "",
        "Where the time goes (means per request, median over repeats; the gateway's own "
        "`gateway_request_duration_seconds` and `gateway_upstream_duration_seconds` counters, "
        "read before and after each point):",
        "",
        "| target | concurrency | client mean ms | gateway first→last byte ms "
        "| upstream gRPC ms per request "
        "| gateway own ms | HTTP + client ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        if "gateway_server_ms" in r:
            lines.append(
                f"| {r['target']} | {r['concurrency']} | {r['client_mean_ms']} | "
                f"{r['gateway_server_ms']} | {r['upstream_ms']} | {r['gateway_own_ms']} | "
                f"{r['http_and_client_ms']} |"
            )
        elif "client_mean_ms" in r:
            lines.append(
                f"| {r['target']} | {r['concurrency']} | {r['client_mean_ms']} | | "
                f"{r['client_mean_ms']} (direct) | | |"
            )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    Console().print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    typer.run(main)
