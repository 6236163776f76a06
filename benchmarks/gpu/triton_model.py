"""Triton python-backend model of the GPU check: the carried MiniLM in PyTorch on the
instance's device (``KIND_GPU``: ``cuda:<model_instance_device_id>``; ``KIND_CPU``: the CPU).

Linked as ``model.py`` into each version directory by :mod:`benchmarks.gpu.serve`; the stub
runs Python isolated (``PYTHONPATH`` ignored, seen here), so the model finds the repository
through that link and imports the carried-model loader from it. The stub runs the lent
machine's Python (torch, numpy 2), so tensors cross the stub boundary through **DLPack**, never
numpy: this python backend (2.51) mis-sizes outputs built from numpy-2
arrays ("output tensor shape does not match size of output", seen here with numpy 2.4).

Parameters (``config.pbtxt``): ``dtype`` (fp32 | fp16), ``weights`` (the carried model folder,
relative to the version directory). Requests of one execute that share a sequence length run
as one forward pass; a malformed request gets its own error.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils
from torch.utils import dlpack

# model.py -> <repository>/benchmarks/gpu/triton_model.py: the repository root goes first
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.gpu.minilm import INPUTS, load_carried


class RequestError(ValueError):
    """The request is malformed; its message goes back to the client."""


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        if args["model_instance_kind"] == "GPU":
            if not torch.cuda.is_available():
                raise pb_utils.TritonModelException(
                    "KIND_GPU instance, but torch.cuda.is_available() is False in the stub"
                )
            self.device = torch.device("cuda", int(args["model_instance_device_id"]))
            where = f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        else:
            self.device = torch.device("cpu")
            where = "cpu"
        self.dtype = params.get("dtype", "fp32")
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.model, _ = load_carried(
            version_dir / params.get("weights", "minilm"), dtype=self.dtype, device=self.device
        )
        self.output = config["output"][0]["name"]
        self.max_batch_size = int(config.get("max_batch_size", 0))
        pb_utils.Logger.log_info(
            f"{args['model_name']}: {self.dtype} MiniLM on {where}, torch {torch.__version__}, "
            f"pid {os.getpid()}"
        )

    def _read(self, request) -> list[torch.Tensor]:
        tensors = []
        for name in INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise RequestError(f"input '{name}' is missing")
            tensors.append(torch.from_dlpack(tensor.to_dlpack()))
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2 or 0 in next(iter(shapes)):
            raise RequestError(f"inputs must share one non-empty [batch, sequence] shape: {shapes}")
        return tensors

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = defaultdict(list)  # sequence length -> [(index, tensors)]
        for i, request in enumerate(requests):
            try:
                tensors = self._read(request)
            except RequestError as exc:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                continue
            groups[tensors[0].shape[1]].append((i, tensors))
        for members in groups.values():
            batch = [
                torch.cat([t[k] for _, t in members]).to(self.device, non_blocking=True)
                for k in range(len(INPUTS))
            ]
            with torch.inference_mode():
                out = self.model(*batch).to(torch.float32).cpu()
            start = 0
            for i, tensors in members:
                rows = tensors[0].shape[0]
                part = out[start : start + rows].contiguous()
                start += rows
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor.from_dlpack(self.output, dlpack.to_dlpack(part))
                    ]
                )
        return responses
