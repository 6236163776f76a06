"""``make demo``: the main job on the embedded default, end to end, with a summary.

export (reused when the installed artefact still matches its report) -> ``up`` -> embeddings
over gRPC and REST checked against PyTorch (sentence-transformers) -> perf_analyzer sweep ->
summary. The stack stays up until ``tritonstack down``.
"""

from __future__ import annotations

import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from deploy.local import stack
from deploy.local.gateway import curl_examples
from deploy.local.runtime import TritonRuntime
from deploy.local.settings import StackSettings
from export.repository import served_dir

SENTENCES = [
    "Triton serves the exported model with dynamic batching.",
    "A platform engineer brings a PyTorch model.",
    "The cat sat on the mat.",
    "Embeddings of similar sentences point in similar directions.",
]
COSINE_FLOOR = 0.9999
DRIVERS = [1001, 1003, 1005, 1007]  # active drivers of the generated data (features/data.py)


def installed_export_is_current(repository: Path, name: str = "minilm") -> bool:
    """True when the latest version of ``name`` holds the artefact its OK report describes."""
    from export.repository import read_report, served_dir
    from export.torch2onnx import sha256

    try:
        version_dir = served_dir(repository, name)
        report = read_report(version_dir) or {}
        return bool(
            report.get("status") == "OK"
            and (repository / name / "config.pbtxt").is_file()
            and sha256(version_dir / "model.onnx") == report["served"]["sha256"]
        )
    except (OSError, KeyError):
        return False


def served_floor(repository: Path, name: str = "minilm") -> tuple[float, str]:
    """The cosine the served vectors must reach against PyTorch: the served variant's budget
    (int8: its cosine budget), or COSINE_FLOOR for fp32-faithful variants."""
    from export.repository import read_report, served_dir

    served = (read_report(served_dir(repository, name)) or {}).get("served", {})
    accuracy = served.get("accuracy", {})
    if accuracy.get("metric") == "cosine":
        return float(accuracy["budget"]), str(served.get("variant"))
    return COSINE_FLOOR, str(served.get("variant", "fp32"))


def _export(console: Console, settings: StackSettings) -> bool:
    from export.models import minilm
    from export.pipeline import export_model
    from tritonstack.export_report import render_export

    if installed_export_is_current(settings.model_repository):
        console.print("[green]1. export[/]: reusing the latest minilm version (hash matches)")
        return True
    with console.status("1. export: PyTorch -> ONNX -> variants -> parity -> fastest"):
        result = export_model(
            minilm.load(),
            settings.model_repository,
            build_dir=settings.home / "build" / minilm.NAME,
        )
    if not result.ok:
        failure = result.failure
        console.print(f"[red]1. export failed[/]: {failure.reason if failure else '?'}")
        return False
    render_export(console, result, "cpu")
    served = result.served.variant.value if result.served else "?"
    console.print(f"[green]1. export[/]: {result.version_dir} serves {served}")
    return True


def _reference(texts: list[str]) -> np.ndarray:
    """PyTorch reference: sentence-transformers' own encode of the same weights."""
    from sentence_transformers import SentenceTransformer

    from export.models.minilm import model_path

    model = SentenceTransformer(str(model_path()), device="cpu")
    return np.asarray(model.encode(texts, normalize_embeddings=True))


def _via_gateway(url: str, key: str) -> np.ndarray:
    """``POST /v1/embeddings`` through the gateway with the development key (cache bypassed)."""
    import httpx

    response = httpx.post(
        f"{url}/v1/embeddings",
        json={"input": SENTENCES, "model": "all-MiniLM-L6-v2"},
        headers={"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"},
        timeout=30,
    )
    response.raise_for_status()
    data = sorted(response.json()["data"], key=lambda d: d["index"])
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def _via_text_pipeline(grpc_url: str) -> tuple[np.ndarray, list[int]]:
    """The sentences as raw strings to ``minilm_text``: embeddings and the token counts."""
    import tritonclient.grpc as grpcclient

    from benchmarks.loadgen import grpc_string_input

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        result = client.infer("minilm_text", grpc_string_input(SENTENCES), client_timeout=30)
    finally:
        client.close()
    tokens = result.as_numpy("token_count").ravel().tolist()
    return result.as_numpy("sentence_embedding"), tokens


def _embed_both(
    console: Console,
    state: stack.TritonState,
    repository: Path,
    gateway: tuple[str, str] | None = None,
) -> bool:
    from tritonclient.utils import InferenceServerException

    from export.repository import served_dir
    from tritonstack.infer import Endpoint, TextEmbedder

    tokenizer = served_dir(repository, "minilm") / "tokenizer.json"
    floor, variant = served_floor(repository)
    reference = _reference(SENTENCES)
    table = Table(
        title=f"3. embeddings from Triton ({variant}) vs PyTorch fp32 (sentence-transformers)"
    )
    for column in ("protocol", "endpoint", "shape", "min cosine vs PyTorch", "ms"):
        table.add_column(column)
    ok = True
    for protocol, url in (("grpc", state.grpc_url), ("http", state.http_url)):
        embedder = TextEmbedder(Endpoint(url, protocol), tokenizer)  # type: ignore[arg-type]
        try:
            start = time.perf_counter()
            vectors = embedder.embed(SENTENCES)
            elapsed = (time.perf_counter() - start) * 1000
        finally:
            embedder.close()
        cosine = float(np.min(np.sum(vectors * reference, axis=1)))
        ok &= cosine >= floor
        table.add_row(protocol, url, str(vectors.shape), f"{cosine:.7f}", f"{elapsed:.1f}")
    # raw strings over gRPC to the text pipeline (a Triton ensemble: the model's tokenizer as a
    # python-backend model, then the encoder): no client-side tokenizer
    start = time.perf_counter()
    try:
        vectors, tokens = _via_text_pipeline(state.grpc_url)
    except InferenceServerException as exc:
        console.print(f"[red]raw strings to minilm_text failed[/]: {exc.message()}")
        ok = False
    else:
        elapsed = (time.perf_counter() - start) * 1000
        cosine = float(np.min(np.sum(vectors * reference, axis=1)))
        ok &= cosine >= floor
        table.add_row(
            "grpc, raw strings", f"{state.grpc_url} minilm_text (tokens {tokens})",
            str(vectors.shape), f"{cosine:.7f}", f"{elapsed:.1f}",
        )  # fmt: skip
    if gateway is not None:
        start = time.perf_counter()
        vectors = _via_gateway(*gateway)
        elapsed = (time.perf_counter() - start) * 1000
        cosine = float(np.min(np.sum(vectors * reference, axis=1)))
        ok &= cosine >= floor
        table.add_row(
            "gateway", f"{gateway[0]}/v1/embeddings", str(vectors.shape), f"{cosine:.7f}",
            f"{elapsed:.1f}",
        )  # fmt: skip
    console.print(table)
    if not ok:
        console.print(f"[red]embeddings differ from PyTorch (cosine < {floor}, {variant})[/]")
    return ok


def perf_sweep(
    console: Console,
    settings: StackSettings,
    state: stack.TritonState,
    concurrency: list[int],
    protocols: tuple[str, ...] = ("grpc", "http"),
    save_to: Path | None = None,
    batch_sizes: tuple[int, ...] = (1,),
    shared_memory: tuple[str, ...] = ("none",),
    models: tuple[str, ...] = ("minilm",),
) -> bool:
    """A short perf_analyzer sweep per protocol (x request batch size x shared memory) against
    the running stack; prints the table with the server-side split.

    With ``save_to``, also writes ``<date>-<host>.json`` and ``.md`` there (commands included).
    """
    from benchmarks.perf_analyzer import (
        PerfAnalyzerError,
        render_table,
        run_sweep,
        write_input_data,
        write_text_input_data,
    )
    from export.ensemble import text_model_name

    out_dir = settings.home / "bench"
    tokenizer = served_dir(settings.model_repository, "minilm") / "tokenizer.json"
    inputs = {  # token ids (16 per request) for the encoder, raw sentences for its text pipeline
        "minilm": write_input_data(SENTENCES, tokenizer, out_dir / "minilm-input.json", length=16),
        text_model_name("minilm"): write_text_input_data(SENTENCES, out_dir / "text-input.json"),
    }
    unknown = set(models) - set(inputs)
    if unknown:
        console.print(f"[red]no perf_analyzer input for {sorted(unknown)}[/]: use {list(inputs)}")
        return False
    runtime = TritonRuntime(settings.runtime_dir)
    points = []
    commands = []
    for model, protocol, batch, shm in itertools.product(
        models, protocols, batch_sizes, shared_memory
    ):
        url = state.grpc_url if protocol == "grpc" else state.http_url
        try:
            with console.status(
                f"perf_analyzer: {model} over {protocol}, concurrency {concurrency}, batch "
                f"{batch}, shared memory {shm}"
            ):
                sweep = run_sweep(
                    runtime,
                    model,
                    url,
                    protocol=protocol,  # type: ignore[arg-type]
                    input_data=inputs[model],
                    concurrency=concurrency,
                    out_dir=out_dir,
                    batch_size=batch,
                    shared_memory=shm,
                )
        except PerfAnalyzerError as exc:
            console.print(f"[red]perf_analyzer failed[/]: {exc}")
            return False
        console.print(f"[dim]$ {sweep.command_line}[/]", highlight=False)
        points += sweep.points
        commands.append(sweep.command_line)
    console.print(render_table(points, f"perf_analyzer: {', '.join(models)}"))
    if save_to is not None:
        for path in save_results(save_to, points, commands):
            console.print(f"wrote {path}")
    return True


def save_results(directory: Path, points: list, commands: list[str]) -> list[Path]:
    """JSON + markdown of a sweep, named by date and machine, with the machine described."""
    from benchmarks.perf_analyzer import to_markdown

    directory.mkdir(parents=True, exist_ok=True)
    host = platform.node() or "host"
    stem = directory / f"{time.strftime('%Y-%m-%d')}-{host}-perf-analyzer"
    from benchmarks.report import machine as describe

    machine = describe("perf_analyzer and Triton share the cores") + (
        "; tritonserver 2.51 python backend + ONNX Runtime CPU"
    )
    stem.with_suffix(".json").write_text(
        json.dumps(
            {"machine": machine, "commands": commands, "points": [p.as_dict() for p in points]},
            indent=2,
        )
        + "\n"
    )
    md = (
        f"# perf_analyzer: {', '.join(sorted({p.model for p in points}))}\n\n"
        "Inputs: `minilm` 16 token ids per item; `minilm_text` one raw sentence per item "
        f"(tokenised in Triton).\n\nMachine: {machine}\n\n"
        + to_markdown(points)
        + "\nCommands:\n\n"
        + "".join(f"    {c}\n" for c in commands)
    )
    stem.with_suffix(".md").write_text(md)
    return [stem.with_suffix(".json"), stem.with_suffix(".md")]


def _features(console: Console, settings: StackSettings) -> bool:
    """Driver statistics into Feast (SQLite online store), then the driver_ranker trained on
    point-in-time features and exported next to MiniLM."""
    import typer

    from features import cli as features_cli

    console.print("1b. features: generate -> apply -> materialize -> train driver_ranker")
    try:
        features_cli.generate()
        features_cli.apply()
        features_cli.materialize()
        features_cli.train(repository=settings.model_repository)
    except typer.Exit:
        return False
    return True


def _score(console: Console, url: str, key: str) -> bool:
    """``POST /v1/score`` through the gateway: online features -> driver_ranker."""
    import httpx

    response = httpx.post(
        f"{url}/v1/score",
        json={"entity_ids": DRIVERS, "include_features": True, "include_timestamps": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    if response.status_code != 200:
        console.print(f"[red]5. scoring failed[/]: {response.status_code} {response.text}")
        return False
    table = Table(title="5. driver scores through the gateway (features from the online store)")
    for column in ("driver", "score", "features", "as of"):
        table.add_column(column)
    for row in response.json()["scores"]:
        values = ", ".join(f"{k}={v:.3g}" for k, v in row["features"].items())
        table.add_row(str(row["entity_id"]), f"{row['score']:.3f}", values, row["event_timestamp"])
    console.print(table)
    unknown = httpx.post(
        f"{url}/v1/score",
        json={"entity_ids": [424242]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    console.print(
        f"   unknown driver 424242 -> {unknown.status_code}: {unknown.json()['error']['message']}"
    )
    return unknown.status_code == 404


def run_demo(console: Console) -> int:
    """Run every step; return the exit code (0: all green)."""
    settings = StackSettings()
    if not _export(console, settings):
        return 1
    if not _features(console, settings):
        return 1
    with console.status("2. tritonstack up"):
        state = stack.up(settings)
    console.print(
        f"[green]2. up[/]: tritonserver pid {state.pid}, gRPC {state.grpc_url}, "
        f"HTTP {state.http_url}"
    )
    gateway = stack.read_service(settings, "gateway")
    key = stack.dev_api_key(settings) or ""
    if gateway is not None:
        console.print(f"[green]   gateway[/]: {gateway.url} (dev API key in `tritonstack status`)")
    ok = _embed_both(
        console, state, settings.model_repository, (gateway.url, key) if gateway else None
    )
    console.print("4. perf_analyzer sweep")
    ok = perf_sweep(console, settings, state, [1, 4]) and ok
    if gateway is not None:
        ok = _score(console, gateway.url, key) and ok
    summary = (
        f"Triton gRPC  {state.grpc_url}\nTriton HTTP  http://{state.http_url}\n"
        f"metrics      http://{state.host}:{state.metrics_port}/metrics\n"
        f"log          {state.log}\n"
        + (f"gateway      {gateway.url}  (key: {key})\n\n" if gateway else "\n")
        + "try:  .venv/bin/tritonstack infer 'hello world' --protocol http\n"
        "      .venv/bin/tritonstack status --json\n"
        "stop: .venv/bin/tritonstack down"
    )
    console.print(
        Panel(
            summary,
            title="demo " + ("OK" if ok else "FAILED"),
            border_style="green" if ok else "red",
        )
    )
    if gateway is not None:  # unwrapped, so the commands copy and paste
        examples = curl_examples(gateway.url, key, gateway.metrics or None)
        console.print(examples, soft_wrap=True, highlight=False)
    return 0 if ok else 1
