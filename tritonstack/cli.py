"""``tritonstack``: one CLI over export/, deploy/ and benchmarks/. Thin: no logic lives here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from deploy.local.errors import DeployError
from deploy.local.gateway import curl_examples
from deploy.local.settings import StackSettings
from features.cli import app as features_app

app = typer.Typer(
    help="Export a PyTorch model, serve it with Triton, query and benchmark it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(features_app, name="features")
console = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


@app.command()
def export(
    model: Annotated[
        str | None,
        typer.Option(
            help="your model: pkg.module:factory returning a torch.nn.Module "
            "(default: the built-in all-MiniLM-L6-v2)"
        ),
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            help="name:dtype:shape[:low..high] after the batch axis, e.g. image:float32:3x32x32 "
            "or ids:int64:seq:0..30522 (a name or -1 is a dynamic axis); repeat per input",
        ),
    ] = None,
    outputs: Annotated[
        list[str] | None, typer.Option("--output", help="output names (default: output[_i])")
    ] = None,
    name: Annotated[str | None, typer.Option(help="model name in the repository")] = None,
    task: Annotated[
        str, typer.Option(help="embedding | classifier | regressor: the reduced-precision metric")
    ] = "regressor",
    sample_data: Annotated[
        Path | None, typer.Option(help=".npz of your own inputs, checked with the random ones")
    ] = None,
    max_length: Annotated[int, typer.Option(min=1, help="longest dynamic axis checked")] = 128,
    repository: Annotated[Path, typer.Option(help="model repository to write into")] = Path(
        "model_repository"
    ),
    version: Annotated[
        int | None,
        typer.Option(min=1, help="version to write (default: latest + 1, none if unchanged)"),
    ] = None,
    serve_versions: Annotated[
        int, typer.Option(min=1, help="version policy: Triton serves the latest N")
    ] = 1,
    target: Annotated[
        str,
        typer.Option(
            help="cpu: python backend + ONNX Runtime (local); "
            "gpu: native onnxruntime_onnx, KIND_GPU (Triton image), TensorRT where present"
        ),
    ] = "cpu",
    variants: Annotated[
        str,
        typer.Option(
            help="auto (cpu: fp32,optimized,int8_blockwise,int8; gpu: fp32,optimized,fp16), "
            "all (adds fp16 and int8_dynamic), or a list such as fp32,int8"
        ),
    ] = "auto",
    serve: Annotated[
        str | None, typer.Option(help="serve this variant (it must pass every check)")
    ] = None,
    budget: Annotated[float, typer.Option(help="fp32 budget: max relative L2 error")] = 1e-4,
    fp16_budget: Annotated[
        float | None,
        typer.Option(
            help="fp16 threshold in the task metric (default cosine 0.999 / top-1 "
            "0.99 / rel L2 1e-2)"
        ),
    ] = None,
    int8_budget: Annotated[
        float | None,
        typer.Option(
            help="int8 threshold in the task metric (default cosine 0.97 / top-1 "
            "0.95 / rel L2 5e-2)"
        ),
    ] = None,
    min_recall_at_10: Annotated[
        float,
        typer.Option(min=0, max=1, help="embeddings: neighbour agreement with fp32 on real inputs"),
    ] = 0.95,
    max_auc_delta: Annotated[
        float,
        typer.Option(min=0, help="rankers with yes/no labels: |AUC - AUC(fp32)| on real inputs"),
    ] = 0.005,
    seed: Annotated[
        int | None,
        typer.Option(
            help="seed of the random parity inputs (fixed by default, so a re-export "
            "decides the same way); pass another for other draws"
        ),
    ] = 0,
    max_batch_size: Annotated[int, typer.Option(min=1)] = 32,
    instances: Annotated[
        int | None,
        typer.Option(min=1, help="instances (per GPU for gpu); default: tuned record, else 1"),
    ] = None,
    max_queue_size: Annotated[
        int | None,
        typer.Option(
            min=0, help="queue policy bound (REJECT beyond); 0: no queue policy; default 256"
        ),
    ] = None,
) -> None:
    """Export a PyTorch model to ONNX, verify every variant against its accuracy budget, serve
    the fastest that passed from the model repository (a new version when anything changed)."""
    from export.byo import SpecError
    from export.model_config import ServingOptions, Target, with_tuned
    from export.pipeline import export_model
    from export.spec import Task
    from export.task_metrics import TaskBudgets
    from export.variants import Budgets, Variant, parse_variants
    from tritonstack.export_report import render_export

    try:
        serving_target = Target(target)
        chosen_task = Task(task)
        wanted = parse_variants(variants, serving_target.value)
        forced = Variant(serve) if serve else None
    except ValueError as exc:
        raise _fail(f"{exc} (see `tritonstack export --help`)") from None
    settings = StackSettings()
    try:
        spec = _export_spec(model, inputs or [], outputs, name, chosen_task, max_length)
        data = None
        if sample_data is not None:
            from export.byo import load_sample_data

            data = load_sample_data(sample_data, spec)
    except SpecError as exc:
        raise _fail(str(exc)) from None
    # the defaults, then what `tritonstack bench search` recorded (cpu), then explicit flags
    options = with_tuned(
        ServingOptions(
            target=serving_target, max_batch_size=max_batch_size, num_versions=serve_versions
        ),
        repository / spec.name,
    )
    if instances is not None:
        options.instance_count = instances
    if max_queue_size is not None:
        options.max_queue_size = max_queue_size
    with console.status(f"exporting {spec.name}: torch -> ONNX -> variants -> verify -> choose"):
        result = export_model(
            spec,
            repository,
            build_dir=settings.home / "build" / spec.name,
            version=version,
            options=options,
            budgets=Budgets(
                rel_l2=budget,
                fp16=fp16_budget,
                int8=int8_budget,
                task=TaskBudgets(recall_at_10=min_recall_at_10, auc_delta=max_auc_delta),
            ),
            variants=wanted,
            serve=forced,
            seed=seed,
            sample_data=data,
        )
    render_export(console, result, serving_target.value)
    if not result.ok:
        failure = result.failure
        raise _fail(
            f"export failed at {failure.step if failure else '?'}: "
            f"{failure.reason if failure else 'unknown'}; nothing was written to {repository} "
            f"(report: {result.report_path})"
        )


def _export_spec(
    model: str | None,
    inputs: list[str],
    outputs: list[str] | None,
    name: str | None,
    task: object,
    max_length: int,
):
    """The built-in MiniLM, or the user's module described by --input/--output/--name."""
    from export.byo import SpecError, build_module, load_factory, model_spec

    if model is None:
        if inputs or outputs or name:
            raise SpecError("--input/--output/--name describe a --model pkg.module:factory")
        from export.models import minilm

        return minilm.load()
    if not inputs:
        raise SpecError("--model needs its inputs: --input name:dtype:shape (repeat per input)")
    module = build_module(load_factory(model))
    default_name = model.partition(":")[2].split(".")[-1].lower()
    return model_spec(
        module, name or default_name, list(inputs), outputs=outputs, task=task,  # type: ignore[arg-type]
        max_length=max_length, description=f"{model} (brought by the user)",
    )  # fmt: skip


@app.command()
def variants(
    fp16_min_cosine: Annotated[float, typer.Option(help="fp16 budget")] = 0.999,
    int8_min_cosine: Annotated[float, typer.Option(help="every int8's cosine budget")] = 0.97,
    seconds: Annotated[float, typer.Option(help="timing per batch size")] = 2.0,
    save: Annotated[
        Path | None, typer.Option(help="directory for <date>-vm-variants.{json,md}")
    ] = None,
    threads: Annotated[
        int,
        typer.Option(min=0, help="ONNX Runtime threads (1: as the tuned config serves; 0: all)"),
    ] = 1,
) -> None:
    """Every variant of MiniLM (fp32, optimized, fp16, int8 blockwise / static / dynamic): parity
    with PyTorch, batch invariance, recall@10 against fp32, in-process speed."""
    from tritonstack.variants_report import run_variants

    build = StackSettings().home / "build" / "variants"
    if not run_variants(
        console, build, fp16_min_cosine, int8_min_cosine, seconds, save, threads=threads
    ):
        raise _fail(f"the fp32 export failed (see {build})")


@app.command()
def up(
    http_port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="0 or unset: a free port")
    ] = None,
    grpc_port: Annotated[int | None, typer.Option(min=0, max=65535)] = None,
    metrics_port: Annotated[int | None, typer.Option(min=0, max=65535)] = None,
) -> None:
    """Start the local stack (Triton, redis-server, gateway) in the background, until `down`."""
    from deploy.local import stack

    ports = {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port}
    settings = StackSettings().model_copy(update={k: v for k, v in ports.items() if v is not None})
    try:
        with console.status("starting tritonserver, redis-server and the gateway"):
            state = stack.up(settings)
    except DeployError as exc:
        raise _fail(str(exc)) from None
    console.print(
        f"triton up (pid {state.pid}): gRPC {state.grpc_url}, "
        f"HTTP http://{state.http_url}, metrics :{state.metrics_port}"
    )
    gateway = stack.read_service(settings, "gateway")
    if gateway is not None:
        console.print(f"gateway up (pid {gateway.pid}): {gateway.url}")
        typer.echo(curl_examples(gateway.url, stack.dev_api_key(settings) or "<key>"))


@app.command()
def down() -> None:
    """Stop exactly what `tritonstack up` started."""
    from deploy.local import stack

    try:
        state = stack.down(StackSettings())
    except DeployError as exc:
        raise _fail(str(exc)) from None
    console.print(f"stopped the gateway, redis-server and triton (pid {state.pid})")


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
) -> None:
    """What runs and where: Triton addresses, Redis, the gateway URL and the dev API key."""
    from deploy.local import stack

    info = stack.status(StackSettings())
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        console.print_json(data=info)
    if not info["running"]:
        raise typer.Exit(3)


@app.command()
def infer(
    texts: Annotated[list[str], typer.Argument(help="texts to embed")],
    protocol: Annotated[str, typer.Option(help="grpc or http (KServe v2 JSON)")] = "grpc",
    model: Annotated[str, typer.Option()] = "minilm",
    url: Annotated[str | None, typer.Option(help="host:port (default: the running stack)")] = None,
    full: Annotated[bool, typer.Option(help="print whole vectors as JSON")] = False,
) -> None:
    """Embed texts with the served model and print the vectors."""
    from deploy.local import stack
    from tritonstack.infer import Endpoint, InferenceError, TextEmbedder

    if protocol not in ("grpc", "http"):
        raise _fail(f"--protocol must be 'grpc' or 'http', got {protocol!r}")
    settings = StackSettings()
    state = stack.read_state(settings)
    if url is None:
        if state is None or not state.alive():
            raise _fail("no running stack: start it with `tritonstack up` or pass --url")
        url = state.grpc_url if protocol == "grpc" else state.http_url
    tokenizer = _tokenizer_path(settings.model_repository, model)
    try:
        embedder = TextEmbedder(Endpoint(url, protocol), tokenizer, model=model)  # type: ignore[arg-type]
        try:
            vectors = embedder.embed(texts)
        finally:
            embedder.close()
    except InferenceError as exc:
        raise _fail(str(exc)) from None
    if full:
        typer.echo(json.dumps({"model": model, "embeddings": vectors.tolist()}))
        return
    table = Table(title=f"{model} over {protocol} ({url})")
    for column in ("text", "dim", "norm", "first values"):
        table.add_column(column)
    for text, vec in zip(texts, vectors, strict=True):
        table.add_row(
            text[:40],
            str(vec.shape[0]),
            f"{float((vec**2).sum() ** 0.5):.4f}",
            " ".join(f"{v:+.4f}" for v in vec[:4]),
        )
    console.print(table)


def _tokenizer_path(repository: Path, model: str) -> Path:
    """The tokenizer the export step put beside the newest version of ``model``."""
    versions = sorted(
        (p for p in (repository / model).glob("[0-9]*") if p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    return (versions[-1] if versions else repository / model / "1") / "tokenizer.json"


@app.command()
def demo() -> None:
    """The main job: export, start the stack, embed over gRPC and REST, perf_analyzer, summary."""
    from tritonstack.demo import run_demo

    raise typer.Exit(run_demo(console))


from tritonstack.bench_cli import bench_app  # noqa: E402  (after `app` is complete)

app.add_typer(bench_app, name="bench")

if __name__ == "__main__":
    app()
