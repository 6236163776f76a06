"""A model's input signature as the command line writes it, parsed without importing torch.

``--input name:dtype:shape[:low..high]`` (the rule is the same for the Python API):

- ``name``: a tensor name, letters, digits, ``_``, ``.`` or ``-``, not starting with a digit.
- ``dtype``: one of :data:`export.spec.TRITON_TYPES` (``float32``, ``float16``, ``int64``,
  ``int32``, ``bool``).
- ``shape``: the dimensions after the batch axis, separated by ``x`` or ``,`` (empty: a
  scalar per item). Each dimension is a size (an integer > 0), ``-1`` (a dynamic axis), or an
  **axis name**: a dynamic axis whose name follows Python's identifier rule (a letter or ``_``,
  then letters, digits or ``_``: ``seq``, ``num_boxes``). Inputs that share an axis name share
  its length. Anything else (``3a``, ``12.5``, ``seq-len``) is refused, naming the dimension.
  Because any identifier is a valid axis name, ``x:float32:abc`` is accepted as one dynamic
  axis called ``abc``; :func:`describe` spells out what was understood, and ``tritonstack
  export`` prints it before it builds the model.
- ``low..high`` (integer inputs only, ``low < high``): the range random inputs are drawn from.

Everything here runs before the user's module is imported or built, so a wrong ``--input`` is
refused at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from export.spec import TRITON_TYPES, TensorSpec

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")  # tensor and model names
AXIS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # a named dynamic axis (an identifier)
EXAMPLES = "e.g. image:float32:3x32x32 or input_ids:int64:seq:0..30522"


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
        raise SpecError(f"--input {text!r}: expected name:dtype:shape[:low..high], {EXAMPLES}")
    name, dtype, shape_text = parts[:3]
    if not NAME.match(name):
        raise SpecError(f"--input {text!r}: {name!r} is not a valid tensor name")
    if dtype not in TRITON_TYPES:
        raise SpecError(f"--input {text!r}: dtype {dtype!r} is not one of {sorted(TRITON_TYPES)}")
    dims: list[int] = []
    axis_names: list[str] = []
    for dim in re.split(r"[x,]", shape_text) if shape_text else []:
        dim = dim.strip()
        if re.fullmatch(r"-?\d+", dim):
            value = int(dim)
            if value == -1:
                dims.append(-1)
                axis_names.append(f"{name}_dim{len(dims)}")
            elif value > 0:
                dims.append(value)
            else:
                raise SpecError(f"--input {text!r}: dimension {value} must be > 0 or -1")
        elif AXIS.match(dim):
            dims.append(-1)
            axis_names.append(dim)
        else:
            raise SpecError(
                f"--input {text!r}: dimension {dim!r} is neither a size (an integer > 0, or -1 "
                "for a dynamic axis) nor an axis name (letters, digits and _, not starting "
                "with a digit)"
            )
    low, high = 0, 100
    if len(parts) == 4:
        match = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", parts[3])
        if not match or int(match[1]) >= int(match[2]):
            raise SpecError(f"--input {text!r}: range must read low..high with low < high")
        if not dtype.startswith("int"):
            raise SpecError(f"--input {text!r}: a range applies to integer inputs only")
        low, high = int(match[1]), int(match[2])
    return InputSpec(TensorSpec(name, dtype, tuple(dims), tuple(axis_names)), low, high)


def parse_inputs(texts: list[str]) -> list[InputSpec]:
    """Every ``--input``, checked together (at least one, unique names)."""
    parsed = [parse_input(t) for t in texts]
    if not parsed:
        raise SpecError(f"give at least one --input name:dtype:shape, {EXAMPLES}")
    names = [i.tensor.name for i in parsed]
    if len(set(names)) != len(names):
        raise SpecError(f"input names must be unique, got {names}")
    return parsed


def describe(item: InputSpec) -> str:
    """What was understood: ``ids int64 (batch, seq) in 0..30522; dynamic: batch, seq``."""
    t = item.tensor
    names = iter(t.axis_names)
    dims = ["batch", *(next(names) if d == -1 else str(d) for d in t.shape)]
    dynamic = ["batch", *t.axis_names]
    text = f"{t.name} {t.dtype} ({', '.join(dims)})"
    if t.dtype.startswith("int"):
        text += f" in {item.low}..{item.high}"
    return text + f"; dynamic: {', '.join(dynamic)}"


def check_name(name: str, option: str = "--name") -> str:
    if not NAME.match(name):
        raise SpecError(f"{option} {name!r}: use letters, digits, '_', '-' or '.'")
    return name
