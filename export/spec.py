"""What the export pipeline needs to know about a model: its tensors and how to sample inputs."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: parsing a signature (export.signature) must not import torch
    import torch

# numpy dtype name -> Triton model-config type name (TYPE_*) and KServe v2 datatype.
TRITON_TYPES: dict[str, tuple[str, str]] = {
    "float32": ("TYPE_FP32", "FP32"),
    "float16": ("TYPE_FP16", "FP16"),
    "int64": ("TYPE_INT64", "INT64"),
    "int32": ("TYPE_INT32", "INT32"),
    "bool": ("TYPE_BOOL", "BOOL"),
}

SampleFn = Callable[[np.random.Generator, int, int], dict[str, np.ndarray]]
Row = dict[str, np.ndarray]  # one example: every input with a batch axis of 1, unpadded


@dataclass
class EvalSet:
    """Real inputs of a model, one :data:`Row` each, and their labels where the task has some.

    Used to calibrate static int8 (activation ranges) and to measure the task metrics of each
    variant against fp32 (neighbour agreement of embeddings, AUC of a ranker).
    """

    description: str  # what the rows are, in words, for the report
    rows: list[Row]
    labels: np.ndarray | None = None
    fingerprint: str = ""  # identifies the rows (same fingerprint, same rows)


class Task(enum.StrEnum):
    """What the output means; it picks the accuracy metric of reduced-precision variants."""

    EMBEDDING = "embedding"  # cosine similarity
    CLASSIFIER = "classifier"  # top-1 agreement
    REGRESSOR = "regressor"  # relative L2 error


@dataclass(frozen=True)
class TensorSpec:
    """One input or output, without the batch dimension. ``-1`` marks a dynamic axis."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    axis_names: tuple[str, ...] = ()  # names of dynamic axes (shared names = same length)

    def __post_init__(self) -> None:
        if self.dtype not in TRITON_TYPES:
            raise ValueError(
                f"{self.name}: unsupported dtype {self.dtype!r}; use {list(TRITON_TYPES)}"
            )

    @property
    def triton_type(self) -> str:
        return TRITON_TYPES[self.dtype][0]

    @property
    def datatype(self) -> str:
        return TRITON_TYPES[self.dtype][1]

    def dynamic_axes(self) -> dict[int, str]:
        """ONNX ``dynamic_axes`` entry: batch axis 0 plus each -1 axis (1-based after batch)."""
        axes = {0: "batch"}
        names = iter(self.axis_names)
        for i, dim in enumerate(self.shape, start=1):
            if dim == -1:
                axes[i] = next(names, f"{self.name}_dim{i}")
        return axes


@dataclass
class ModelSpec:
    """A PyTorch module plus the signature it is served with.

    ``sample_inputs(rng, batch, length)`` makes inputs for export and for parity checks; the
    ``length`` fills dynamic axes other than batch.
    """

    name: str
    module: torch.nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    sample_inputs: SampleFn
    max_length: int = 128
    # dynamic non-batch axes padded per request by the python backend (ragged batching)
    ragged: bool = False
    parameters: dict[str, str] = field(default_factory=dict)
    extra_files: dict[str, Path] = field(default_factory=dict)
    description: str = ""
    task: Task = Task.REGRESSOR
    # ONNX Runtime transformer optimizer hints, e.g. {"model_type": "bert", "num_heads": 12,
    # "hidden_size": 384}; empty: generic graph optimization only
    optimizer: dict[str, str | int] = field(default_factory=dict)
    tokenizer: Path | None = None  # a tokenizer.json: the export also writes the text ensemble
    # real inputs (made on demand: they may parse or tokenize a corpus). ``evaluation``: the
    # task metrics of every variant against fp32; ``calibration``: static int8's activation
    # ranges. None: the user's --sample-data, else inputs drawn from ``sample_inputs``.
    evaluation: Callable[[], EvalSet] | None = None
    calibration: Callable[[], EvalSet] | None = None

    @property
    def ragged_inputs(self) -> tuple[str, ...]:
        """Inputs the python backend right-pads with 0 when it batches requests together."""
        return tuple(t.name for t in self.inputs if self.ragged and -1 in t.shape)

    def torch_outputs(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the PyTorch reference on numpy inputs."""
        import torch  # deferred on purpose: a spec's tensors are read without torch (seconds)

        tensors = [torch.from_numpy(inputs[t.name]) for t in self.inputs]
        with torch.inference_mode():
            out = self.module(*tensors)
        if isinstance(out, torch.Tensor):
            out = (out,)
        return [o.detach().cpu().numpy() for o in out]
