"""Bring your own model: a ``torch.nn.Module`` plus its input signature -> a :class:`ModelSpec`.

The command line says ``--model pkg.module:factory --input name:dtype:shape[:low..high]``:

- ``shape`` lists the dimensions after the batch axis, separated by ``x`` or ``,``; a number is
  fixed, a name (``seq``) or ``-1`` is a dynamic axis. Inputs that share an axis name share
  its length (``input_ids:int64:seq`` and ``attention_mask:int64:seq``). The batch axis is
  always dynamic.
- ``low..high`` bounds random integer inputs (token ids, class ids); floats are drawn from a
  standard normal, booleans at random.

The outputs are found by running the module: their dtypes, and which dimensions follow the
batch and the dynamic input axes, from two runs of different sizes. Names come from
``--output`` or default to ``output`` / ``output_0, output_1, ...``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.spec import TRITON_TYPES, ModelSpec, Task, TensorSpec

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


class SpecError(ValueError):
    """A model, input or output description that cannot be used (the message says why)."""


@dataclass(frozen=True)
class InputSpec:
    tensor: TensorSpec
    low: int = 0
    high: int = 100


def parse_input(text: str) -> InputSpec:
    """``name:dtype:shape[:low..high]`` -> :class:`InputSpec` (see the module docstring)."""
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise SpecError(
            f"--input {text!r}: expected name:dtype:shape[:low..high], "
            "e.g. image:float32:3x32x32 or input_ids:int64:seq:0..30522"
        )
    name, dtype, shape_text = parts[:3]
    if not _NAME.match(name):
        raise SpecError(f"--input {text!r}: {name!r} is not a valid tensor name")
    if dtype not in TRITON_TYPES:
        raise SpecError(f"--input {text!r}: dtype {dtype!r} is not one of {sorted(TRITON_TYPES)}")
    dims: list[int] = []
    axis_names: list[str] = []
    for dim in re.split(r"[x,]", shape_text) if shape_text else []:
        dim = dim.strip()
        if dim.lstrip("-").isdigit():
            value = int(dim)
            if value == -1:
                dims.append(-1)
                axis_names.append(f"{name}_dim{len(dims)}")
            elif value > 0:
                dims.append(value)
            else:
                raise SpecError(f"--input {text!r}: dimension {value} must be > 0 or -1")
        elif _NAME.match(dim):
            dims.append(-1)
            axis_names.append(dim)
        else:
            raise SpecError(f"--input {text!r}: dimension {dim!r} is neither a size nor a name")
    low, high = 0, 100
    if len(parts) == 4:
        match = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", parts[3])
        if not match or int(match[1]) >= int(match[2]):
            raise SpecError(f"--input {text!r}: range must read low..high with low < high")
        if not dtype.startswith("int"):
            raise SpecError(f"--input {text!r}: a range applies to integer inputs only")
        low, high = int(match[1]), int(match[2])
    return InputSpec(TensorSpec(name, dtype, tuple(dims), tuple(axis_names)), low, high)


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
        raise SpecError(
            f"the module failed on inputs made from the spec ({type(exc).__name__}: {exc}); "
            "check the --input shapes and dtypes"
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
    if not _NAME.match(name):
        raise SpecError(f"--name {name!r}: use letters, digits, '_', '-' or '.'")
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
