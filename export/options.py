"""What ``tritonstack export``'s options mean: the model's spec and how it is served.

The CLI only parses and prints; turning its options into a :class:`~export.spec.ModelSpec`
(the built-in MiniLM, or the user's ``--model pkg.module:factory`` described by ``--input``)
and into :class:`~export.model_config.ServingOptions` (defaults, then the values the config
search recorded, then explicit flags) happens here.
"""

from __future__ import annotations

from pathlib import Path

from export.byo import SpecError, build_module, load_factory, model_spec
from export.model_config import ServingOptions, Target, with_tuned
from export.models import minilm
from export.spec import ModelSpec, Task


def spec_from_options(
    model: str | None,
    inputs: list[str],
    outputs: list[str] | None,
    name: str | None,
    task: Task,
    max_length: int,
) -> ModelSpec:
    """The built-in MiniLM, or the user's module described by --input/--output/--name."""
    if model is None:
        if inputs or outputs or name:
            raise SpecError("--input/--output/--name describe a --model pkg.module:factory")
        return minilm.load()
    if not inputs:
        raise SpecError("--model needs its inputs: --input name:dtype:shape (repeat per input)")
    module = build_module(load_factory(model))
    default_name = model.partition(":")[2].split(".")[-1].lower()
    return model_spec(
        module,
        name or default_name,
        list(inputs),
        outputs=outputs,
        task=task,
        max_length=max_length,
        description=f"{model} (brought by the user)",
    )


def serving_options(
    target: Target,
    model_dir: Path,
    *,
    max_batch_size: int,
    serve_versions: int,
    instances: int | None = None,
    max_queue_size: int | None = None,
) -> ServingOptions:
    """The defaults, then what `tritonstack bench search` recorded (cpu), then explicit flags."""
    options = with_tuned(
        ServingOptions(target=target, max_batch_size=max_batch_size, num_versions=serve_versions),
        model_dir,
    )
    if instances is not None:
        options.instance_count = instances
    if max_queue_size is not None:
        options.max_queue_size = max_queue_size
    return options
