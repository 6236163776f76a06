"""Bring your own model: a ``torch.nn.Module`` plus its input signature -> a :class:`ModelSpec`.

The command line says ``--model pkg.module:factory --input name:dtype:shape[:low..high]``:

- ``shape`` lists the dimensions after the batch axis, separated by ``x`` or ``,``; a number is
  fixed, an axis name (an identifier: ``seq``) or ``-1`` is a dynamic axis. Inputs that share
  an axis name share its length (``input_ids:int64:seq`` and ``attention_mask:int64:seq``).
  The batch axis is always dynamic. The rule and its parser (no torch) are
  :mod:`export.signature`'s.
- ``low..high`` bounds random integer inputs (token ids, class ids); floats are drawn from a
  standard normal, booleans at random.

The outputs are found by running the module: their dtypes, and which dimensions follow the
batch and the dynamic input axes, from two runs of different sizes. Names come from
``--output`` or default to ``output`` / ``output_0, output_1, ...``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.signature import InputSpec, SpecError, check_name, parse_input
from export.spec import TRITON_TYPES, ModelSpec, Task, TensorSpec

__all__ = [
    "InputSpec",
    "SpecError",
    "build_module",
    "export_pytorch",
    "infer_outputs",
    "load_factory",
    "load_sample_data",
    "model_spec",
    "parse_input",
    "random_sampler",
]


def load_factory(target: str) -> Callable[[], torch.nn.Module]:
    """``pkg.module:factory`` -> the callable (a function or a ``nn.Module`` class)."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise SpecError(f"--model {target!r}: expected pkg.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"--model {target!r}: cannot import {module_name!r}: {exc}") from exc
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise SpecError(f"--model {target!r}: {module_name!r} has no attribute {attr!r}")
    if not callable(factory):
        raise SpecError(f"--model {target!r}: {attr!r} is not callable")
    found: Callable[[], torch.nn.Module] = factory
    return found


def build_module(factory: Callable[[], Any]) -> torch.nn.Module:
    module = factory()
    if not isinstance(module, torch.nn.Module):
        raise SpecError(f"the factory returned {type(module).__name__}, not a torch.nn.Module")
    return module.eval()


def random_sampler(inputs: list[InputSpec]) -> Callable[..., dict[str, np.ndarray]]:
    """Inputs drawn from the spec: every dynamic axis gets ``length`` (shared names agree)."""

    def sample(rng: np.random.Generator, batch: int, length: int) -> dict[str, np.ndarray]:
        out = {}
        for item in inputs:
            t = item.tensor
            shape = (batch, *(length if d == -1 else d for d in t.shape))
            if t.dtype.startswith("float"):
                out[t.name] = rng.standard_normal(shape).astype(t.dtype)
            elif t.dtype == "bool":
                out[t.name] = rng.integers(0, 2, size=shape).astype(bool)
            else:
                out[t.name] = rng.integers(item.low, item.high, size=shape, dtype=t.dtype)
        return out

    return sample


def _torch_dtype_name(tensor: torch.Tensor) -> str:
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in TRITON_TYPES:
        raise SpecError(f"an output has dtype {name}, which Triton configs here do not map")
    return name


def infer_outputs(
    module: torch.nn.Module,
    sample: Callable[..., dict[str, np.ndarray]],
    inputs: list[TensorSpec],
    names: list[str] | None = None,
) -> list[TensorSpec]:
    """Run the module at two sizes; a dimension that moves with the input axes is dynamic."""
    dynamic = any(-1 in t.shape for t in inputs)

    def run(batch: int, length: int) -> list[torch.Tensor]:
        arrays = sample(np.random.default_rng(0), batch, length)
        with torch.inference_mode():
            out = module(*(torch.from_numpy(arrays[t.name]) for t in inputs))
        if isinstance(out, torch.Tensor):
            return [out]
        if isinstance(out, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in out):
            return list(out)
        raise SpecError(
            f"the module returned {type(out).__name__}; export needs a tensor or a tuple of tensors"
        )

    try:
        first, second = run(2, 7), run(3, 11 if dynamic else 7)
    except SpecError:
        raise
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise SpecError(
            f"the module's forward raised {type(exc).__name__} on random inputs made from "
            f"--input ({first_line}): if --input does not describe what forward takes, "
            "check the --input shapes and dtypes; `tritonstack --debug export ...` shows the "
            "traceback"
        ) from exc
    if names and len(names) != len(first):
        raise SpecError(f"--output names {len(names)} outputs, the module returns {len(first)}")
    names = names or (["output"] if len(first) == 1 else [f"output_{i}" for i in range(len(first))])
    outputs = []
    for name, a, b in zip(names, first, second, strict=True):
        if a.ndim == 0 or a.shape[0] != 2 or b.shape[0] != 3:
            raise SpecError(f"output {name!r} has no batch axis first (shape {tuple(a.shape)})")
        dims = tuple(-1 if x != y else x for x, y in zip(a.shape[1:], b.shape[1:], strict=True))
        outputs.append(TensorSpec(name, _torch_dtype_name(a), dims))
    return outputs


def model_spec(
    module: torch.nn.Module,
    name: str,
    inputs: list[str | InputSpec],
    *,
    outputs: list[str] | None = None,
    task: Task | str = Task.REGRESSOR,
    max_length: int = 128,
    description: str = "",
) -> ModelSpec:
    """The Python API: a module and ``name:dtype:shape`` strings -> a :class:`ModelSpec`."""
    check_name(name)
    parsed = [parse_input(i) if isinstance(i, str) else i for i in inputs]
    if not parsed:
        raise SpecError("give at least one --input name:dtype:shape")
    if len({i.tensor.name for i in parsed}) != len(parsed):
        raise SpecError("input names must be unique")
    module = module.eval()
    tensors = [i.tensor for i in parsed]
    sample = random_sampler(parsed)
    return ModelSpec(
        name=name,
        module=module,
        inputs=tensors,
        outputs=infer_outputs(module, sample, tensors, outputs),
        sample_inputs=sample,
        max_length=max_length,
        task=Task(task),
        description=description or f"{type(module).__name__} (brought by the user)",
    )


def load_sample_data(path: Path, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The user's own inputs (``.npz`` with one array per input name, batch first)."""
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise SpecError(f"--sample-data {path}: not a readable .npz file: {exc}") from exc
    for t in spec.inputs:
        if t.name not in arrays:
            raise SpecError(
                f"--sample-data {path}: no array named {t.name!r} (has {sorted(arrays)})"
            )
        array = arrays[t.name]
        if array.ndim != len(t.shape) + 1 or any(
            d != -1 and d != s for d, s in zip(t.shape, array.shape[1:], strict=False)
        ):
            raise SpecError(
                f"--sample-data {path}: {t.name!r} has shape {array.shape}, "
                f"expected (batch, {', '.join(str(d) for d in t.shape)})"
            )
        arrays[t.name] = array.astype(t.dtype, copy=False)
    return {t.name: arrays[t.name] for t in spec.inputs}


def export_pytorch(
    module: torch.nn.Module,
    name: str,
    inputs: list[str | InputSpec],
    *,
    repository: Path = Path("model_repository"),
    build_dir: Path | None = None,
    outputs: list[str] | None = None,
    task: Task | str = Task.REGRESSOR,
    max_length: int = 128,
    sample_data: dict[str, np.ndarray] | None = None,
    **pipeline: Any,
) -> Any:
    """Bring a module, get a served model.

    ``export_pytorch(net, "cnn", ["image:float32:3x32x32"], task="classifier")`` returns an
    :class:`export.pipeline.ExportResult`; ``pipeline`` keywords go to
    :func:`export.pipeline.export_model` (variants, budgets, options, version, seed ...).
    """
    from export.pipeline import export_model

    spec = model_spec(module, name, inputs, outputs=outputs, task=task, max_length=max_length)
    build_dir = build_dir or Path(".tritonstack") / "build" / name
    return export_model(spec, repository, build_dir=build_dir, sample_data=sample_data, **pipeline)
