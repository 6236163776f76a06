"""``make demo``: the main job on the embedded default, end to end, with a summary.

export (reused when the installed artefact still matches its report) -> features -> ``up`` ->
embeddings over gRPC, REST and the gateway checked against PyTorch (sentence-transformers) ->
perf_analyzer sweep -> driver scores -> a second MiniLM version rolled out (shadow, canary,
promote) -> a drift report of the demo's own traffic -> summary. The stack stays up until
``tritonstack down``.
Each step is a call into the package that owns it; this module strings them together and
prints. The export step's imports load torch and are deferred into it on purpose: a reused
export never pays for them.
"""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel

from benchmarks.perf_analyzer import Protocol
from benchmarks.sweep import SweepError, perf_sweep
from deploy.local import stack
from deploy.local.gateway import curl_examples
from deploy.local.settings import StackSettings
from export.reader import is_current
from tritonstack import features_cli
from tritonstack.console import styled
from tritonstack.demo_checks import embed_and_compare, score
from tritonstack.demo_monitoring import drift_report
from tritonstack.demo_rollout import rollout_step


def _export(console: Console, settings: StackSettings) -> bool:
    if is_current(settings.model_repository, "minilm"):
        reused = ": reusing the latest minilm version (hash matches)"
        console.print(styled("1. export", "green", reused))
        return True
    from export.models import minilm
    from export.pipeline import export_model
    from tritonstack.export_report import render_export

    with console.status("1. export: PyTorch -> ONNX -> variants -> parity -> fastest"):
        result = export_model(
            minilm.load(),
            settings.model_repository,
            build_dir=settings.home / "build" / minilm.NAME,
        )
    if not result.ok:
        failure = result.failure
        console.print(styled("1. export failed", "red", f": {failure.reason if failure else '?'}"))
        return False
    render_export(console, result, "cpu")
    served = result.served.variant.value if result.served else "?"
    console.print(styled("1. export", "green", f": {result.version_dir} serves {served}"))
    return True


def _features(console: Console, settings: StackSettings) -> bool:
    """Driver statistics into Feast (SQLite online store), then the driver_ranker trained on
    point-in-time features and exported next to MiniLM."""
    console.print("1b. features: generate -> apply -> materialize -> train driver_ranker")
    return features_cli.prepare(settings.model_repository)


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
        styled(
            "2. up",
            "green",
            f": tritonserver pid {state.pid}, gRPC {state.grpc_url}, HTTP {state.http_url}",
        )
    )
    gateway = stack.read_service(settings, "gateway")
    key = stack.dev_api_key(settings) or ""
    if gateway is not None:
        console.print(
            styled("   gateway", "green", f": {gateway.url} (dev API key in `tritonstack status`)")
        )
    ok = embed_and_compare(
        console,
        state.grpc_url,
        state.http_url,
        settings.model_repository,
        (gateway.url, key) if gateway else None,
    )
    console.print("4. perf_analyzer sweep")
    urls: dict[Protocol, str] = {"grpc": state.grpc_url, "http": state.http_url}
    try:
        perf_sweep(console, settings, urls, [1, 4])
    except SweepError as exc:
        console.print(styled("4. perf_analyzer failed", "red", f": {exc}"))
        ok = False
    drift = None
    if gateway is not None:
        ok = score(console, gateway.url, key) and ok
        ok = rollout_step(console, settings, gateway.url, key) and ok
        if stack.read_service(settings, "capture") is not None:
            drift = drift_report(console, settings, gateway.url, key)
            ok = drift is not None and ok
    summary = (
        f"Triton gRPC  {state.grpc_url}\nTriton HTTP  http://{state.http_url}\n"
        f"metrics      http://{state.host}:{state.metrics_port}/metrics\n"
        f"log          {state.log}\n"
        + (f"gateway      {gateway.url}  (key: {key})\n" if gateway else "")
        + (f"drift report {drift}\n\n" if drift else "\n")
        + "try:  .venv/bin/tritonstack infer 'hello world' --protocol http\n"
        "      .venv/bin/tritonstack status --json\n"
        "stop: .venv/bin/tritonstack down"
    )
    console.print(
        Panel(
            summary,
            title="demo " + ("OK" if ok else "FAILED"),
            border_style="green" if ok else "red",
            expand=console.is_terminal,  # in a log: as wide as its text, not the log's width
        )
    )
    if gateway is not None:  # unwrapped, so the commands copy and paste
        examples = curl_examples(gateway.url, key, gateway.metrics or None)
        console.print(examples, soft_wrap=True, highlight=False)
    return 0 if ok else 1
