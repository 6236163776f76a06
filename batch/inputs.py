"""From Parquet columns to request tensors, by the names and datatypes in Triton's metadata.

A column feeds one model input (``--columns col`` for a one-input model, ``col=input``
otherwise, or by equal names). What each input takes:

* ``BYTES`` dims ``[1]`` (a text pipeline's ``text``): a string or binary column; one UTF-8
  string per row;
* numeric dims whose product is 1: a numeric column (or lists of one value);
* numeric fixed dims (``[3]``, ``[2, 4]``): lists with exactly that many values, row-major;
* numeric ``[-1]``: lists of any non-zero length; a request stacks rows of one length (rows
  are grouped by their shapes, the output is put back in row order).

A row that cannot become a tensor is refused here, with a code and a reason, and never sent:
``null``, ``empty``, ``not_utf8``, ``wrong_length``, ``not_finite``, ``out_of_range``.
What only the model can judge (too many tokens, ids outside the vocabulary) is refused by
Triton and found by the sender.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch.errors import InputError, ModelError

NUMPY_TYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # Triton's: FP32, INT64, BYTES ...
    dims: tuple[int, ...]  # without the batch axis
    optional: bool = False

    @property
    def variable(self) -> bool:
        return any(d < 0 for d in self.dims)

    @property
    def size(self) -> int:
        """Values per row (fixed dims only)."""
        return math.prod(self.dims)


@dataclass(frozen=True)
class Signature:
    """A served model as batch sees it: where requests go, their tensors, the versions."""

    model: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    versions: Mapping[str, str] = field(default_factory=dict)  # model (and ensemble steps)

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)


def signature_from(metadata: Mapping[str, Any], config: Mapping[str, Any]) -> Signature:
    """A ``Signature`` from Triton's model metadata and config (both as JSON dicts)."""
    name = str(metadata["name"])
    batch = int(config.get("max_batch_size", 0))
    if batch < 1:
        raise ModelError(
            f"model {name!r} has max_batch_size {batch}: batch scoring sends many rows per "
            "request, so the model must batch (max_batch_size > 0)"
        )
    optional = {t["name"] for t in config.get("input", []) if t.get("optional")}

    def tensors(items: Sequence[Mapping[str, Any]], is_input: bool) -> tuple[TensorSpec, ...]:
        found = []
        for t in items:
            shape = [int(d) for d in t["shape"]]
            dims = tuple(shape[1:])  # metadata carries the batch axis (-1) first
            found.append(
                TensorSpec(t["name"], t["datatype"], dims, is_input and t["name"] in optional)
            )
        return tuple(found)

    versions = [str(v) for v in metadata.get("versions", [])]
    newest = max(versions, key=lambda v: int(v) if v.isdigit() else -1, default="")
    return Signature(
        model=name,
        max_batch_size=batch,
        inputs=tensors(metadata.get("inputs", []), True),
        outputs=tensors(metadata.get("outputs", []), False),
        versions={name: newest},
    )


def ensemble_steps(config: Mapping[str, Any]) -> list[str]:
    """The models an ensemble's config calls (empty for a plain model)."""
    steps = config.get("ensemble_scheduling", {}).get("step", [])
    return [str(s["model_name"]) for s in steps]


# -- binding columns to inputs -----------------------------------------------------------------
def is_text(kind: pa.DataType) -> bool:
    """A string or binary column (one text per row)."""
    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    )


def _is_list(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    )


def _numeric(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
    )


def parse_columns(columns: Sequence[str] | None) -> list[tuple[str, str | None]]:
    """``["text", "a=input_a"]`` -> ``[("text", None), ("a", "input_a")]``."""
    pairs: list[tuple[str, str | None]] = []
    for item in columns or []:
        column, _, target = item.partition("=")
        if not column or (_ and not target):
            raise InputError(f"--columns takes COLUMN or COLUMN=INPUT, got {item!r}")
        pairs.append((column, target or None))
    return pairs


def bind_columns(
    signature: Signature, schema: pa.Schema, columns: Sequence[str] | None
) -> dict[str, str]:
    """Model input -> the column that feeds it. Raises ``InputError`` naming what to pass."""
    names = [t.name for t in signature.inputs]
    pairs = parse_columns(columns)
    binding: dict[str, str] = {}
    if not pairs:
        binding = {n: n for n in names if n in schema.names}
    elif len(pairs) == 1 and pairs[0][1] is None and len(names) == 1:
        binding = {names[0]: pairs[0][0]}
    else:
        for column, target in pairs:
            target = target or column
            if target not in names:
                raise InputError(
                    f"model {signature.model!r} has no input {target!r} (inputs: {names}); "
                    "map a column with --columns COLUMN=INPUT"
                )
            binding[target] = column
    missing = [t.name for t in signature.inputs if t.name not in binding and not t.optional]
    if missing:
        raise InputError(
            f"no column for input(s) {missing} of {signature.model!r} (file columns: "
            f"{schema.names}); pass --columns COLUMN (one input) or COLUMN=INPUT"
        )
    for target, column in binding.items():
        if column not in schema.names:
            raise InputError(f"column {column!r} is not in the input (columns: {schema.names})")
        spec = signature.input(target)
        assert spec is not None
        _check_type(spec, column, schema.field(column).type)
    return binding


def _check_type(spec: TensorSpec, column: str, kind: pa.DataType) -> None:
    if spec.datatype == "BYTES":
        if spec.dims not in ((1,), (-1,)) or not is_text(kind):
            raise InputError(
                f"input {spec.name!r} (BYTES {list(spec.dims)}) takes a string column with one "
                f"string per row; column {column!r} is {kind}"
            )
        return
    if spec.datatype not in NUMPY_TYPES:
        raise ModelError(f"input {spec.name!r} has datatype {spec.datatype}: not supported")
    if len([d for d in spec.dims if d < 0]) > 1 or (spec.variable and len(spec.dims) != 1):
        raise ModelError(
            f"input {spec.name!r} has dims {list(spec.dims)}: batch reads fixed shapes or 1-D "
            "variable lists ([-1])"
        )
    scalar_ok = not spec.variable and spec.size == 1
    value = kind.value_type if _is_list(kind) else kind
    if not _numeric(value) or (not _is_list(kind) and not scalar_ok):
        want = "a numeric column" if scalar_ok else "a list column of numbers"
        raise InputError(
            f"input {spec.name!r} ({spec.datatype} {list(spec.dims)}) takes {want}; "
            f"column {column!r} is {kind}"
        )


# -- rows to tensors ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Rejected:
    """A row that never reached the model, or that the model refused."""

    position: int  # in the shard
    code: str
    reason: str


@dataclass
class Prepared:
    """A shard's rows as tensors: ``fixed[name][i]`` / ``ragged[name][i]`` for row ``i``."""

    rows: int
    fixed: dict[str, np.ndarray] = field(default_factory=dict)
    ragged: dict[str, list[np.ndarray | None]] = field(default_factory=dict)
    rejected: dict[int, Rejected] = field(default_factory=dict)
    extra: dict[str, pa.Array] = field(default_factory=dict)  # more output columns per row
    lengths: np.ndarray | None = None  # text bytes per row: requests of similar lengths

    def reject(self, position: int, code: str, reason: str) -> None:
        self.rejected.setdefault(position, Rejected(position, code, reason))

    @property
    def valid(self) -> np.ndarray:
        mask = np.ones(self.rows, dtype=bool)
        if self.rejected:
            mask[list(self.rejected)] = False
        return np.flatnonzero(mask)


@dataclass(frozen=True)
class Batch:
    """One request: the shard positions of its rows and their tensors."""

    positions: np.ndarray
    tensors: dict[str, np.ndarray]

    def take(self, keep: np.ndarray) -> Batch:
        """The rows at indices ``keep`` of this batch."""
        return Batch(self.positions[keep], {n: t[keep] for n, t in self.tensors.items()})


def prepare(table: pa.Table, binding: Mapping[str, str], signature: Signature) -> Prepared:
    """Every row of ``table`` as tensors, or refused with its reason."""
    prepared = Prepared(table.num_rows)
    for target, column in binding.items():
        spec = signature.input(target)
        assert spec is not None
        array = table.column(column).combine_chunks()
        if spec.datatype == "BYTES":
            _text(array, spec, column, prepared)
        elif _is_list(array.type):
            _lists(array, spec, column, prepared)
        else:
            _scalars(array, spec, column, prepared)
    return prepared


def _text(array: pa.Array, spec: TensorSpec, column: str, out: Prepared) -> None:
    values = np.empty((len(array), 1), dtype=np.object_)
    binary = pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)
    lengths = np.asarray(
        pc.fill_null(pc.binary_length(array), 0).to_numpy(zero_copy_only=False), dtype=np.int64
    )
    out.lengths = lengths if out.lengths is None else out.lengths + lengths
    for i, value in enumerate(array.to_pylist()):
        values[i, 0] = b""
        if value is None:
            out.reject(i, "null", f"column {column!r} is null")
        elif not value:
            out.reject(i, "empty", f"column {column!r} is empty; the model needs text")
        elif binary:
            try:
                value.decode("utf-8")
                values[i, 0] = value
            except UnicodeDecodeError as exc:
                where = f"{exc.reason} at byte {exc.start}"
                out.reject(i, "not_utf8", f"column {column!r} is not UTF-8 ({where})")
        else:
            values[i, 0] = value.encode("utf-8")
    out.fixed[spec.name] = values


def _check_values(
    flat: np.ndarray, parents: np.ndarray, spec: TensorSpec, column: str, out: Prepared
) -> np.ndarray:
    """``flat`` (float64 or int64 values, ``parents[i]`` = row of value i) cast to the input's
    dtype; rows with non-finite or out-of-range values are refused."""
    dtype = np.dtype(NUMPY_TYPES[spec.datatype])
    if dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            cast = flat.astype(dtype)
        bad = ~np.isfinite(cast)
        for row in np.unique(parents[bad]):
            out.reject(int(row), "not_finite", f"column {column!r} holds NaN, infinite or "
                       f"out-of-{spec.datatype}-range values")  # fmt: skip
        return np.where(bad, 0, cast).astype(dtype)
    if dtype.kind == "b":
        return flat.astype(dtype)
    info = np.iinfo(dtype)
    numbers = flat if flat.dtype.kind in "iu" else np.where(np.isfinite(flat), flat, np.nan)
    whole = numbers == np.floor(numbers) if numbers.dtype.kind == "f" else np.ones(len(flat), bool)
    with np.errstate(invalid="ignore"):
        inside = whole & (numbers >= info.min) & (numbers <= info.max)
    for row in np.unique(parents[~inside]):
        out.reject(int(row), "out_of_range", f"column {column!r} holds values that are not "
                   f"{spec.datatype} integers in [{info.min}, {info.max}]")  # fmt: skip
    return np.where(inside, numbers, 0).astype(dtype)


def _numbers(array: pa.Array) -> np.ndarray:
    kind = array.type
    target = pa.float64() if pa.types.is_floating(kind) else pa.int64()
    if pa.types.is_unsigned_integer(kind) and kind.bit_width == 64:
        target = pa.float64()  # beyond int64: checked against the range as floats
    if pa.types.is_boolean(kind):
        target = pa.int64()
    return np.asarray(pc.fill_null(array.cast(target), 0).to_numpy(zero_copy_only=False))


def _scalars(array: pa.Array, spec: TensorSpec, column: str, out: Prepared) -> None:
    nulls = np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    for row in np.flatnonzero(nulls):
        out.reject(int(row), "null", f"column {column!r} is null")
    values = _check_values(_numbers(array), np.arange(len(array)), spec, column, out)
    out.fixed[spec.name] = values.reshape((len(array), *spec.dims))


def _lists(array: pa.Array, spec: TensorSpec, column: str, out: Prepared) -> None:
    rows = len(array)
    lengths = np.asarray(
        pc.fill_null(pc.list_value_length(array), -1).to_numpy(zero_copy_only=False),
        dtype=np.int64,
    )
    flat_arrow = pc.list_flatten(array)
    parents = np.asarray(pc.list_parent_indices(array).to_numpy(zero_copy_only=False))
    value_nulls = np.asarray(flat_arrow.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    for row in np.flatnonzero(lengths < 0):
        out.reject(int(row), "null", f"column {column!r} is null")
    for row in np.unique(parents[value_nulls]):
        out.reject(int(row), "null", f"column {column!r} holds null values")
    flat = _check_values(_numbers(flat_arrow), parents, spec, column, out)
    starts = np.concatenate([[0], np.cumsum(np.maximum(lengths, 0))])
    if spec.variable:
        ragged: list[np.ndarray | None] = []
        for i in range(rows):
            if lengths[i] == 0:
                out.reject(i, "empty", f"column {column!r} is an empty list")
            ragged.append(flat[starts[i] : starts[i + 1]] if lengths[i] > 0 else None)
        out.ragged[spec.name] = ragged
        return
    wrong = (lengths != spec.size) & (lengths >= 0)
    for row in np.flatnonzero(wrong):
        out.reject(int(row), "wrong_length", f"column {column!r} has {lengths[row]} values; "
                   f"input {spec.name!r} takes {spec.size} ({list(spec.dims)})")  # fmt: skip
    fixed = np.zeros((rows, spec.size), dtype=flat.dtype)
    good = np.flatnonzero(lengths == spec.size)
    if len(good):
        index = starts[good][:, None] + np.arange(spec.size)[None, :]
        fixed[good] = flat[index]
    out.fixed[spec.name] = fixed.reshape((rows, *spec.dims))


def _length(row: np.ndarray | None) -> int:
    return 0 if row is None else len(row)


def batches(prepared: Prepared, batch_size: int, by_length: bool = True) -> list[Batch]:
    """The valid rows as requests of at most ``batch_size`` rows: consecutive rows (by text
    length first when ``by_length``: the model pads each request to its longest row, so
    similar lengths waste less), or rows of one shape each when an input is a variable list."""
    valid = prepared.valid
    if not len(valid):
        return []
    if by_length and prepared.lengths is not None:
        valid = valid[np.argsort(prepared.lengths[valid], kind="stable")]
    groups: list[np.ndarray]
    if prepared.ragged:
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for position in valid:
            key = tuple(_length(prepared.ragged[n][position]) for n in prepared.ragged)
            by_shape.setdefault(key, []).append(int(position))
        groups = [np.asarray(p, dtype=np.int64) for p in by_shape.values()]
    else:
        groups = [valid]
    found = []
    for group in groups:
        for start in range(0, len(group), batch_size):
            positions = group[start : start + batch_size]
            tensors = {n: t[positions] for n, t in prepared.fixed.items()}
            for name, rows in prepared.ragged.items():
                tensors[name] = np.stack([rows[p] for p in positions])
            found.append(Batch(positions, tensors))
    return found
