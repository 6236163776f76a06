"""Rows of model inputs (one example each) and batches made of them the way Triton makes them.

The python backend (``export/python_backend/model.py``) right-pads every ragged input (a
dynamic non-batch axis, ``ModelSpec.ragged``) with 0 to the longest request and concatenates
along the batch; the attention mask hides the padding. :func:`stack` does exactly that, so what
the checks run in-process is what a batch inside Triton looks like.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import onnxruntime as ort

from export.spec import Row

MASK = "attention_mask"


def length(row: Row, ragged: Sequence[str]) -> int:
    """The ragged length of a row (0 when nothing is ragged)."""
    return int(row[ragged[0]].shape[1]) if ragged else 0


def split(inputs: dict[str, np.ndarray], ragged: Sequence[str]) -> list[Row]:
    """A batch as rows; ragged rows lose their padding (where ``attention_mask`` shows it)."""
    count = next(iter(inputs.values())).shape[0]
    rows = []
    for i in range(count):
        row = {name: array[i : i + 1] for name, array in inputs.items()}
        if ragged and MASK in row:
            real = max(int(row[MASK].sum()), 1)
            row = {n: (a[:, :real] if n in ragged else a) for n, a in row.items()}
        rows.append(row)
    return rows


def stack(rows: Sequence[Row], ragged: Sequence[str], pad_to: int = 0) -> dict[str, np.ndarray]:
    """One batch: ragged inputs right-padded with 0 to the longest row (or ``pad_to``)."""
    longest = max([pad_to, *(length(r, ragged) for r in rows)])
    batch = {}
    for name in rows[0]:
        parts = [r[name] for r in rows]
        if name in ragged:
            parts = [
                np.pad(p, [(0, 0), (0, longest - p.shape[1])] + [(0, 0)] * (p.ndim - 2))
                for p in parts
            ]
        batch[name] = np.ascontiguousarray(np.concatenate(parts, axis=0))
    return batch


def batches(
    rows: Sequence[Row], ragged: Sequence[str], size: int
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Batches of ``size`` rows (similar lengths together) and the row indices of each."""
    order = np.argsort([length(r, ragged) for r in rows], kind="stable")
    for start in range(0, len(order), size):
        index = order[start : start + size]
        yield index, stack([rows[i] for i in index], ragged)


def run(
    session: ort.InferenceSession,
    output_names: list[str],
    rows: Sequence[Row],
    ragged: Sequence[str],
    size: int = 32,
) -> list[np.ndarray]:
    """Every output for every row, in the rows' order."""
    found: list[np.ndarray | None] = [None] * len(output_names)
    for index, batch in batches(rows, ragged, size):
        for k, out in enumerate(session.run(output_names, batch)):
            if found[k] is None:
                found[k] = np.zeros((len(rows), *out.shape[1:]), dtype=out.dtype)
            found[k][index] = out  # type: ignore[index]
    return [f for f in found if f is not None]
