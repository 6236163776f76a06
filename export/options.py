"""What ``tritonstack export``'s options mean: the model's spec and how it is served.

The CLI only parses and prints; turning its options into a :class:`~export.spec.ModelSpec`
(the built-in MiniLM, or the user's ``--model pkg.module:factory`` described by ``--input``)
and into :class:`~export.model_config.ServingOptions` (defaults, then the values the config
search recorded, then explicit flags) happens here.

Checking the options (:func:`check_options`, :func:`check_version`) imports no torch and
builds nothing, so a wrong ``--input`` or an existing ``--version`` is refused at once;
:func:`spec_from_options` then imports the user's module and builds it (seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from export.model_config import ServingOptions, Target, with_tuned
from export.reader import version_dirs
from export.signature import InputSpec, SpecError, check_name, parse_inputs
from export.spec import ModelSpec, Task

BUILTIN_NAME = "minilm"  # export.models.minilm.NAME (that module imports torch)


@dataclass(frozen=True)
class Checked:
    """The export's options, parsed and checked before anything is built."""

    name: str
    inputs: list[InputSpec]  # empty for the built-in model


def check_options(
    model: str | None, inputs: list[str], outputs: list[str] | None, name: str | None
) -> Checked:
    """Parse ``--input`` and the model's name; a :class:`SpecError` says what to fix."""
    if model is None:
        if inputs or outputs or name:
            raise SpecError("--input/--output/--name describe a --model pkg.module:factory")
        return Checked(BUILTIN_NAME, [])
    module_name, _, attr = model.partition(":")
    if not module_name or not attr:
        raise SpecError(f"--model {model!r}: expected pkg.module:factory")
    if not inputs:
        raise SpecError("--model needs its inputs: --input name:dtype:shape (repeat per input)")
    parsed = parse_inputs(inputs)
    return Checked(check_name(name or attr.split(".")[-1].lower()), parsed)


def check_version(
    model_dir: Path, version: int | None, *, force: bool, serve_versions: int
) -> list[str]:
    """Refuse to replace an existing ``--version`` without ``force``; the warnings to print
    when the version policy (``latest serve_versions``) will never serve the new version."""
    if version is None:
        return []
    existing = [int(p.name) for p in version_dirs(model_dir)]
    if version in existing and not force:
        raise SpecError(
            f"--version {version}: {model_dir / str(version)} exists; pass --force to replace "
            "it, or leave --version out to write the next version"
        )
    served = sorted({*existing, version})[-serve_versions:]
    if version in served:
        return []
    return [
        f"version {version} will not be served: the version policy serves the latest "
        f"{serve_versions} ({', '.join(map(str, served))}); to serve it, remove the newer "
        "versions or export without --version"
    ]


def spec_from_options(
    model: str | None, checked: Checked, outputs: list[str] | None, task: Task, max_length: int
) -> ModelSpec:
    """The built-in MiniLM, or the user's module described by --input/--output/--name."""
    # deferred on purpose: both import torch and build a model (seconds)
    from export.byo import build_module, load_factory, model_spec
    from export.models import minilm

    if model is None:
        return minilm.load()
    module = build_module(load_factory(model))
    return model_spec(
        module,
        checked.name,
        list(checked.inputs),
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
