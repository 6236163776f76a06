"""``tritonstack export``: parse, call export/, print (``variants`` is in ``variants_cli``).

Its work imports torch (seconds): those imports are deferred into the command on purpose,
so that ``tritonstack up``, ``status`` and ``infer`` start without it, and so that ``export``
refuses a wrong ``--input`` or an existing ``--version`` before it imports anything heavy.
With a stack running, an export is loaded into its Triton at once (``deploy.local.models``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deploy.local.settings import StackSettings
from export.options import check_options, check_version
from export.signature import SpecError, describe
from tritonstack.console import console, fail, warn
from tritonstack.models_cli import serve_export


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
            "or ids:int64:seq:0..30522 (-1 or an axis name such as seq is a dynamic axis); "
            "repeat per input",
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
    repository: Annotated[
        Path | None,
        typer.Option(help="model repository (default: $TRITONSTACK_MODEL_REPOSITORY)"),
    ] = None,
    version: Annotated[
        int | None,
        typer.Option(min=1, help="version to write (default: latest + 1, none if unchanged)"),
    ] = None,
    force: Annotated[bool, typer.Option(help="let --version replace an existing version")] = False,
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
    load: Annotated[
        bool, typer.Option(help="load it into a running stack (--no-load: for a rollout)")
    ] = True,
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
    """Export a PyTorch model to ONNX, verify every variant against its budget, serve the
    fastest that passed (a new version when anything changed; a running stack loads it)."""
    settings = StackSettings()
    repository = repository or settings.model_repository
    try:
        checked = check_options(model, inputs or [], outputs, name)
        warnings = check_version(
            repository / checked.name, version, force=force, serve_versions=serve_versions
        )
    except SpecError as exc:
        raise fail(str(exc)) from None
    for item in checked.inputs:
        console.print(f"input {describe(item)}", highlight=False)
    for warning in warnings:
        warn(warning)
    # deferred on purpose: these import torch (seconds); the options are checked by now
    from export.byo import load_sample_data
    from export.model_config import Target
    from export.options import serving_options, spec_from_options
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
        raise fail(f"{exc} (see `tritonstack export --help`)") from None
    try:
        spec = spec_from_options(model, checked, outputs, chosen_task, max_length)
        data = load_sample_data(sample_data, spec) if sample_data is not None else None
    except SpecError as exc:
        raise fail(str(exc), cause=exc) from None
    options = serving_options(
        serving_target,
        repository / spec.name,
        max_batch_size=max_batch_size,
        serve_versions=serve_versions,
        instances=instances,
        max_queue_size=max_queue_size,
    )
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
        raise fail(
            f"export failed at {failure.step if failure else '?'}: "
            f"{failure.reason if failure else 'unknown'}; nothing was written to {repository} "
            f"(report: {result.report_path})"
        )
    if load:
        serve_export(settings, repository, spec.name, spec.tokenizer is not None)
