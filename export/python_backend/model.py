"""Triton python-backend model that runs an ONNX file with ONNX Runtime.

This file is copied into each version directory as ``model.py`` by the export step and runs
inside Triton's runtime environment (numpy<2, onnxruntime), never in the gateway's.

Batching: the dynamic batcher hands ``execute`` several requests. Inputs declared with
``allow_ragged_batch`` may differ in their non-batch length; they are right-padded with 0
(the attention mask then hides the padding) and run as one ONNX Runtime call. A request that
is malformed gets its own error response; it never fails the other requests of the batch.

Parameters (``config.pbtxt``): ``onnx_model_filename``, ``intra_op_num_threads`` (0: ORT
default), ``max_sequence_length``, ``vocab_size`` (token ids are range-checked when set).
Floating-point inputs (e.g. driver_ranker's ``features`` FP32 [-1, k]) must be finite.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

_NP_TYPES = {
    "TYPE_FP32": np.float32,
    "TYPE_FP16": np.float16,
    "TYPE_INT64": np.int64,
    "TYPE_INT32": np.int32,
    "TYPE_BOOL": np.bool_,
}


class RequestError(ValueError):
    """The request is malformed; its message goes back to the client."""


def _error(message):
    """An INVALID_ARG error (a 400 for HTTP clients, not a 502) where the backend has codes."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    if code is None:  # python backends before 23.10: INTERNAL is the only code
        return pb_utils.TritonError(message)
    return pb_utils.TritonError(message, code)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(version_dir, params.get("onnx_model_filename", "model.onnx"))

        options = ort.SessionOptions()
        threads = int(params.get("intra_op_num_threads", "0") or 0)
        if threads > 0:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spinning worker threads burn the cores that Triton's frontend, the stubs and
        # co-located clients need: measured with perf_analyzer on 2 cores it multiplied
        # latency (see docs/architecture.md). Opt back in with allow_spinning=1.
        spinning = params.get("allow_spinning", "0")
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in (
            ort.get_available_providers()
        ):
            device = int(args.get("model_instance_device_id", "0"))
            providers = [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
        self.session = ort.InferenceSession(path, options, providers=providers)

        self.inputs = [
            (t["name"], _NP_TYPES[t["data_type"]], bool(t.get("allow_ragged_batch", False)))
            for t in config["input"]
        ]
        self.outputs = [(t["name"], _NP_TYPES[t["data_type"]]) for t in config["output"]]
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.max_length = int(params.get("max_sequence_length", "0") or 0)
        self.vocab_size = int(params.get("vocab_size", "0") or 0)

    # -- per request -----------------------------------------------------------------------
    def _read(self, request):
        arrays = {}
        for name, dtype, _ in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise RequestError(f"input '{name}' is missing")
            arrays[name] = np.ascontiguousarray(tensor.as_numpy(), dtype=dtype)
        rows = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
        if len(rows) != 1:
            detail = ", ".join(f"{n}{list(a.shape)}" for n, a in arrays.items())
            raise RequestError(f"inputs must have the same batch size, got {detail}")
        if rows == {0}:
            raise RequestError("empty batch: send at least one row")
        # ragged inputs (token ids, attention mask ...) share one sequence axis
        ragged = {n: arrays[n] for n, _, is_ragged in self.inputs if is_ragged}
        if len({a.shape for a in ragged.values()}) > 1:
            detail = ", ".join(f"{n}{list(a.shape)}" for n, a in ragged.items())
            raise RequestError(f"inputs must have the same shape, got {detail}")
        first = next(iter(ragged.values()), None)
        if first is not None and first.ndim > 1 and first.shape[1] == 0:
            raise RequestError("empty sequence: each row needs at least one token")
        if (
            self.max_length
            and first is not None
            and first.ndim > 1
            and first.shape[1] > self.max_length
        ):
            raise RequestError(
                f"sequence length {first.shape[1]} exceeds the model's maximum "
                f"{self.max_length}; truncate the input"
            )
        for name, array in arrays.items():  # numeric features: a NaN is never a valid input
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise RequestError(f"input '{name}' holds NaN or infinite values")
        ids = arrays.get("input_ids")
        if self.vocab_size and ids is not None and ids.size:
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= self.vocab_size:
                raise RequestError(
                    f"input_ids must lie in [0, {self.vocab_size}), got values in [{low}, {high}]"
                )
        if "attention_mask" in arrays and arrays["attention_mask"].ndim > 1:
            mask = arrays["attention_mask"]
            if not np.isin(mask, (0, 1)).all():
                raise RequestError("attention_mask must contain only 0 and 1")
        return arrays

    def _pad(self, batches):
        """Right-pad ragged inputs to the longest request and concatenate along the batch."""
        feed = {}
        for name, _, ragged in self.inputs:
            parts = [b[name] for b in batches]
            if ragged and parts[0].ndim > 1:
                longest = max(p.shape[1] for p in parts)
                parts = [
                    np.pad(p, [(0, 0), (0, longest - p.shape[1])] + [(0, 0)] * (p.ndim - 2))
                    for p in parts
                ]
            feed[name] = np.concatenate(parts, axis=0)
        return feed

    def _run(self, batches):
        feed = self._pad(batches)
        names = [n for n, _ in self.outputs]
        results = self.session.run(names, feed)
        responses, offset = [], 0
        for batch in batches:
            rows = next(iter(batch.values())).shape[0]
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(out[offset : offset + rows], dtype=dt))
                for (name, dt), out in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            offset += rows
        return responses

    def execute(self, requests):
        responses = [None] * len(requests)
        good, good_index = [], []
        for i, request in enumerate(requests):
            try:
                good.append(self._read(request))
                good_index.append(i)
            except RequestError as exc:
                responses[i] = pb_utils.InferenceResponse(error=_error(str(exc)))
        if good:
            try:
                for i, response in zip(good_index, self._run(good), strict=True):
                    responses[i] = response
            except Exception:  # one bad request must not fail the batch: retry one by one
                for i, batch in zip(good_index, good, strict=True):
                    try:
                        responses[i] = self._run([batch])[0]
                    except Exception as exc:
                        responses[i] = pb_utils.InferenceResponse(
                            error=pb_utils.TritonError(f"model execution failed: {exc}")
                        )
        return responses

    def finalize(self):
        self.session = None
