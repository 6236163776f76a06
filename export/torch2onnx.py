"""Step: PyTorch module -> ONNX file with a dynamic batch axis (and the spec's other axes)."""

from __future__ import annotations

import hashlib
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from export.spec import ModelSpec
from export.status import Status, StepResult

DEFAULT_OPSET = 17


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def onnx_signature(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs of an ONNX graph with their element types and (symbolic) shapes."""

    def describe(values: Any) -> list[dict[str, Any]]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
            out.append(
                {
                    "name": value.name,
                    "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                    "shape": dims,
                }
            )
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def torch_to_onnx(spec: ModelSpec, out_path: Path, *, opset: int = DEFAULT_OPSET) -> StepResult:
    """Export ``spec.module`` to ``out_path`` (single file, legacy TorchScript exporter).

    The legacy exporter is used because ONNX Runtime's transformer fusion only recognises its
    attention pattern, and it writes one file (no external data) at the requested opset.
    """
    start = time.perf_counter()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sample = spec.sample_inputs(np.random.default_rng(0), 2, 16)
    args = tuple(torch.from_numpy(sample[t.name]) for t in spec.inputs)
    dynamic_axes = {t.name: t.dynamic_axes() for t in [*spec.inputs, *spec.outputs]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                spec.module,
                args,
                str(out_path),
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        model = onnx.load(str(out_path))
        onnx.checker.check_model(model)
    except Exception as exc:  # the step reports, the pipeline decides
        return StepResult(
            "torch2onnx",
            Status.FAILED,
            reason=f"{type(exc).__name__}: {exc}",
            duration_s=time.perf_counter() - start,
        )
    opsets = {imp.domain or "ai.onnx": imp.version for imp in model.opset_import}
    return StepResult(
        "torch2onnx",
        Status.OK,
        artefact=out_path,
        metrics={
            "opset": opsets.get("ai.onnx", opset),
            "opset_imports": opsets,
            "exporter": "torch.onnx (TorchScript, dynamo=False)",
            "signature": onnx_signature(model),
            "dynamic_axes": dynamic_axes,
            "file": {
                "name": out_path.name,
                "bytes": out_path.stat().st_size,
                "sha256": sha256(out_path),
            },
        },
        duration_s=time.perf_counter() - start,
    )
