"""What captured traffic is compared with: a model's reference set, and how to read captures
the same way.

A :class:`Spec` names the columns the comparison uses and where each comes from in a capture:
tabular features (``name -> (column, index)``), the prediction, an embedding. A reference is a
Parquet file in the store (``reference/model=M/version=V/reference.parquet``) holding those
columns, with its spec in the file's metadata. Two sources:

* ``training`` (driver_ranker): the Feast training window, the rows ``features.train`` fits on
  (point-in-time features of the labelled offers), scored by the served ONNX file of that
  version with ONNX Runtime, labels kept;
* ``captures`` (any model): captured traffic of a window judged good; the spec is inferred from
  the capture's columns (:func:`infer_spec`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from monitoring.errors import NotEnoughData, ReferenceMissing
from monitoring.store import Store

META_KEY = "tritonstack.reference"
SMALL = 16  # per-item values up to this many are features; more (an output) is an embedding


@dataclass
class Spec:
    model: str
    version: str
    source: str
    tabular: dict[str, tuple[str, int]] = field(default_factory=dict)
    prediction: tuple[str, int] | None = None
    embedding: str | None = None
    built: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    details: dict[str, Any] = field(default_factory=dict)

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, text: str) -> Spec:
        raw = json.loads(text)
        raw["tabular"] = {k: (v[0], int(v[1])) for k, v in raw["tabular"].items()}
        raw["prediction"] = tuple(raw["prediction"]) if raw["prediction"] else None
        return cls(**raw)

    @property
    def columns(self) -> list[str]:
        """The tabular columns compared, the prediction last."""
        return [*self.tabular, *(["prediction"] if self.prediction else [])]


def _element(table: pa.Table, column: str, index: int) -> np.ndarray:
    values = table.column(column)
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        values = pc.list_element(values, index)
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)


def frame(table: pa.Table, spec: Spec) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Captured (or reference) rows as the spec's tabular frame and embedding matrix."""
    named = "prediction" in table.column_names or all(c in table.column_names for c in spec.tabular)
    data: dict[str, np.ndarray] = {}
    for name, (column, index) in spec.tabular.items():
        data[name] = _element(table, name, 0) if named else _element(table, column, index)
    if spec.prediction:
        column, index = spec.prediction
        data["prediction"] = (
            _element(table, "prediction", 0) if named else _element(table, column, index)
        )
    # a value a row lacks (an answer from the cache carries no outputs) is NaN: each statistic
    # uses the rows that have its column
    tab = pd.DataFrame(data).replace([np.inf, -np.inf], np.nan).dropna(how="all")
    embedding = None
    if spec.embedding:
        source = "embedding" if "embedding" in table.column_names else spec.embedding
        column = table.column(source)
        values = column.filter(pc.is_valid(column)).combine_chunks()
        width = len(values[0]) if len(values) else 0
        flat = values.flatten().to_numpy(zero_copy_only=False)
        embedding = np.asarray(flat, dtype=np.float32).reshape(-1, width) if width else None
    return tab, embedding


def infer_spec(table: pa.Table, model: str, version: str, source: str) -> Spec:
    """Features, prediction and embedding of a model, read off its captured columns."""
    spec = Spec(model, version, source)
    for name in table.column_names:
        role, _, tensor = name.partition(".")
        if role not in ("in", "out"):
            continue
        kind = table.column(name).type
        if pa.types.is_list(kind):
            if not (pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)):
                continue
            lengths = pc.list_value_length(table.column(name)).drop_null()
            if len(lengths) == 0 or pc.min(lengths).as_py() != pc.max(lengths).as_py():
                continue  # ragged (token ids): not a fixed set of features
            width = int(pc.min(lengths).as_py())
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
            width = 0
        else:
            continue  # strings: text hashes
        if role == "out" and width > SMALL:
            spec.embedding = spec.embedding or name
        elif role == "out" and width <= 1 and spec.prediction is None:
            spec.prediction = (name, 0)
        elif width <= SMALL:
            for i in range(max(width, 1)):
                spec.tabular[tensor if width <= 1 else f"{tensor}[{i}]"] = (name, i)
    if not (spec.tabular or spec.prediction or spec.embedding):
        raise NotEnoughData(f"{model}: the captures hold no numeric tensor to compare")
    return spec


def reference_table(spec: Spec, tab: pd.DataFrame, embedding: np.ndarray | None) -> pa.Table:
    columns: dict[str, pa.Array] = {name: pa.array(tab[name].to_numpy()) for name in tab.columns}
    if embedding is not None:
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(
            pa.array(embedding.astype(np.float32).ravel()), embedding.shape[1]
        ).cast(pa.list_(pa.float32()))
    return pa.table(columns)


def save(store: Store, spec: Spec, table: pa.Table) -> str:
    path = store.reference_path(spec.model, spec.version)
    store.write_table(path, table, {META_KEY: spec.dumps()})
    return path


def load(store: Store, model: str, version: str) -> tuple[Spec, pa.Table]:
    """The reference of ``model`` at ``version``, else its newest one (by version number)."""
    base = store.reference_path(model, version).rsplit("/version=", 1)[0]
    candidates = [version]
    try:
        found = [p.rstrip("/").rsplit("version=", 1)[-1] for p in store.fs.ls(base, detail=False)]
    except FileNotFoundError:
        found = []
    candidates += sorted((v for v in found if v != version), key=_version_order, reverse=True)
    for candidate in candidates:
        try:
            table = store.read_table(store.reference_path(model, candidate))
        except FileNotFoundError:
            continue
        meta = (table.schema.metadata or {}).get(META_KEY.encode())
        if meta:
            return Spec.loads(meta.decode()), table
    raise ReferenceMissing(
        f"no reference for {model!r}: build one with "
        f"`tritonstack monitor reference --model {model}`"
    )


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


def from_captures(
    store: Store, model: str, version: str | None, start: datetime, end: datetime
) -> tuple[Spec, pa.Table]:
    """A reference from captured traffic of [start, end]."""
    table = store.read("inferences", model, start, end, version)
    if table is None or table.num_rows == 0:
        raise NotEnoughData(f"no captures of {model!r} between {start} and {end}")
    versions = sorted(set(table.column("version").to_pylist()), key=_version_order)
    spec = infer_spec(table, model, version or versions[-1], "captures")
    spec.details = {"window": [start.isoformat(), end.isoformat()], "versions": versions}
    tab, embedding = frame(table, spec)
    return spec, reference_table(spec, tab, embedding)


def from_training(
    features: Any, onnx_file: Path, version: str, *, model: str = "driver_ranker"
) -> tuple[Spec, pa.Table]:
    """A reference from the Feast training window (``features.train``: the fitted rows),
    scored by ``onnx_file`` (the served artefact of ``version``)."""
    import onnxruntime as ort  # deferred on purpose: only this builder runs a model

    from features.schema import LABEL, MODEL_FEATURES
    from features.train import TrainConfig, time_split, training_set

    data = training_set(features)
    x_train, y_train, _, _ = time_split(data.frame, TrainConfig())
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    scores = np.asarray(session.run(None, {name: x_train})[0], dtype=np.float64).reshape(-1)
    spec = Spec(
        model, version, "training",
        tabular={f: ("in.features", i) for i, f in enumerate(MODEL_FEATURES)},
        prediction=("out.score", 0),
        details={"rows": len(x_train), "dropped": data.dropped, "label": LABEL},
    )  # fmt: skip
    tab = pd.DataFrame(x_train.astype(np.float64), columns=list(MODEL_FEATURES))
    tab["prediction"] = scores
    table = reference_table(spec, tab, None).append_column("label", pa.array(y_train))
    return spec, table
