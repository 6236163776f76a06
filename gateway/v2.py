"""The Open Inference Protocol (KServe v2) over REST: request parsing, validation, responses.

Supports JSON tensors and the binary tensor data extension (``Inference-Header-Content-Length``
plus raw bytes after the JSON header), which is what ``tritonclient.http`` sends by default, so
a standard client pointed at the gateway works unchanged. Every check runs against the model's
metadata from Triton before Triton is called; each failure is a 400 naming the tensor and what to
fix. Tensors are held as the bytes Triton receives (``gateway.tensors``); JSON is read and
written with orjson (the standard library's parser is the fallback that keeps its messages).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from tritonclient.grpc import InferRequestedOutput
from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

from gateway.errors import GatewayError, bad_request
from gateway.models import ModelInfo, TensorInfo
from gateway.tensors import Tensor, from_binary, from_json

__all__ = ["HEADER_LENGTH", "InferRequest", "Tensor", "parse_infer_request"]
HEADER_LENGTH = "Inference-Header-Content-Length"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


@dataclass
class InferRequest:
    id: str
    inputs: list[Tensor]
    outputs: list[tuple[str, bool]]  # (name, binary) in request order; empty = all
    binary_default: bool
    batch: int = 1  # rows of a batching model's request (the request's rate-limit weight)

    def batch_size(self) -> int:
        return self.batch

    def cache_parts(self) -> list[bytes]:
        parts = [self.id.encode(), b"binary" if self.binary_default else b"json"]
        for t in sorted(self.inputs, key=lambda t: t.name):
            parts += [t.name.encode(), t.datatype.encode(), repr(t.shape).encode(), t.raw]
        parts += [f"{name}:{binary}".encode() for name, binary in self.outputs]
        return parts

    def requested_outputs(self) -> list[InferRequestedOutput] | None:
        if not self.outputs:
            return None
        return [InferRequestedOutput(name) for name, _ in self.outputs]


def loads(data: bytes, what: str = "body") -> Any:
    """JSON, with orjson; what it refuses goes through the standard library, which either reads
    it (NaN, lone surrogates: refused later with a precise message) or says what is wrong."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise bad_request(f"{what} is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise bad_request(f"{what} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    except RecursionError:
        raise bad_request(f"{what} is nested too deeply") from None
    except ValueError:  # Python refuses integers of more than 4,300 digits
        raise bad_request(f"{what} holds a number with too many digits") from None


def _envelope(head: bytes) -> tuple[dict[str, Any], list[Any], dict[str, Any], str]:
    request = loads(head, "inference request header")
    if not isinstance(request, dict):
        raise bad_request("the request must be a JSON object with 'inputs'")
    inputs = request.get("inputs")
    if not (isinstance(inputs, list) and len(inputs) > 0):
        raise bad_request("'inputs' must be a non-empty list")
    params = request.get("parameters") or {}
    if not isinstance(params, dict):
        raise bad_request("'parameters' must be an object")
    request_id = request.get("id", "")
    if not (isinstance(request_id, str) and len(request_id) <= 256):
        raise bad_request("'id' must be a string of at most 256 characters")
    try:
        request_id.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request("'id' is not valid Unicode (an unpaired surrogate)") from None
    return request, inputs, params, request_id


def _signature(item: Any, model: ModelInfo, seen: list[Tensor]) -> tuple[TensorInfo, list[int]]:
    """The model's tensor for one input entry, and the entry's shape (checked against it)."""
    if not isinstance(item, dict):
        raise bad_request("each input must be an object with name/shape/datatype")
    name = item.get("name")
    if not isinstance(name, str):
        raise bad_request("each input needs a 'name' string")
    info = model.input(name)
    if info is None:
        expected = ", ".join(t.name for t in model.inputs)
        raise bad_request(
            f"model {model.name!r} has no input {name!r}; its inputs are: {expected}", param=name
        )
    if not all(t.name != name for t in seen):
        raise bad_request(f"input {name!r} is given twice", param=name)
    datatype = item.get("datatype")
    if datatype != info.datatype:
        raise bad_request(
            f"input {name!r} must have datatype {info.datatype}, got {datatype!r}", param=name
        )
    shape = item.get("shape")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise bad_request(
            f"input {name!r}: 'shape' must be a list of non-negative integers", param=name
        )
    if len(shape) != len(info.shape):
        raise bad_request(
            f"input {name!r} must have {len(info.shape)} dimensions {list(info.shape)}, "
            f"got {shape}",
            param=name,
        )
    for i, (got, want) in enumerate(zip(shape, info.shape, strict=True)):
        if want not in (-1, got):
            raise bad_request(
                f"input {name!r}: dimension {i} must be {want}, got {got}", param=name
            )
    if model.max_batch_size > 0 and not 1 <= shape[0] <= model.max_batch_size:
        raise bad_request(
            f"input {name!r}: batch size {shape[0]} outside 1..{model.max_batch_size} "
            f"(the model's max_batch_size); split the request",
            param=name,
        )
    return info, shape


def _outputs(
    request: dict[str, Any], model: ModelInfo, binary_default: bool
) -> list[tuple[str, bool]]:
    outputs: list[tuple[str, bool]] = []
    requested = request.get("outputs") or []
    if not isinstance(requested, list):
        raise bad_request("'outputs' must be a list")
    for item in requested:
        if not (isinstance(item, dict) and isinstance(item.get("name"), str)):
            raise bad_request("bad output entry")
        name = item["name"]
        if model.output(name) is None:
            expected = ", ".join(t.name for t in model.outputs)
            raise bad_request(
                f"model {model.name!r} has no output {name!r}; its outputs are: {expected}",
                param=name,
            )
        oparams = item.get("parameters") or {}
        outputs.append((name, bool(oparams.get("binary_data", binary_default))))
    return outputs


def _tensor_bytes(
    item: dict[str, Any],
    info: TensorInfo,
    numel: int,
    binary: memoryview,
    offset: int,
    max_text_chars: int,
) -> tuple[bytes, int]:
    """One input's canonical bytes, and how many bytes of the binary part it took."""
    name, datatype = info.name, info.datatype
    tparams = item.get("parameters") or {}
    if not isinstance(tparams, dict):
        raise bad_request(f"input {name!r}: 'parameters' must be an object")
    size = tparams.get("binary_data_size")
    if size is None:
        if "data" not in item:
            raise bad_request(f"input {name!r} has neither 'data' nor binary data", param=name)
        return from_json(name, datatype, item["data"], numel, max_text_chars=max_text_chars), 0
    if not (type(size) is int and 0 <= size <= len(binary) - offset):
        raise bad_request(
            f"input {name!r}: binary_data_size {size} exceeds the binary data left", param=name
        )
    raw = bytes(binary[offset : offset + size])
    return from_binary(name, datatype, raw, numel, max_text_chars=max_text_chars), size


def parse_infer_request(
    body: bytes,
    header_length: int | None,
    model: ModelInfo,
    *,
    max_text_chars: int,
    max_elements: int = 2**20,
) -> InferRequest:
    """Parse and validate one ``POST /v2/models/{name}/infer`` body against the model."""
    head, binary = body, memoryview(b"")
    if header_length is not None:
        if not (0 < header_length <= len(body)):
            raise bad_request(
                f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes"
            )
        head, binary = body[:header_length], memoryview(body)[header_length:]
    request, inputs, params, request_id = _envelope(head)
    parsed: list[Tensor] = []
    offset = elements = 0
    batch_sizes: set[int] = set()
    for item in inputs:
        info, shape = _signature(item, model, parsed)
        if model.max_batch_size > 0:
            batch_sizes.add(shape[0])
        numel = math.prod(shape)
        elements += numel
        if elements > max_elements:
            raise bad_request(
                f"input {info.name!r}: the request holds more than {max_elements} elements; "
                "split it",
                param=info.name,
            )
        raw, size = _tensor_bytes(item, info, numel, binary, offset, max_text_chars)
        offset += size
        parsed.append(Tensor(info.name, info.datatype, tuple(shape), raw))
    if offset != len(binary):
        raise bad_request(f"{len(binary) - offset} bytes of binary data belong to no input")
    given = {t.name for t in parsed}
    missing = [t.name for t in model.inputs if not t.optional and t.name not in given]
    if missing:
        raise bad_request(f"model {model.name!r} needs inputs {missing}")
    if len(batch_sizes) > 1:
        raise bad_request(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
    binary_default = bool(params.get("binary_data_output", False))
    outputs = _outputs(request, model, binary_default)
    return InferRequest(request_id, parsed, outputs, binary_default, next(iter(batch_sizes), 1))


def _json_data(datatype: str, raw: bytes) -> Any:
    """An output's values for a JSON answer: a flat list (floats as the doubles they are)."""
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") for v in deserialize_bytes_tensor(raw).tolist()]
    array = np.frombuffer(raw, dtype=np.dtype(triton_to_np_dtype(datatype)).newbyteorder("<"))
    if array.dtype.kind == "f":
        return array.astype(np.float64)  # the same numbers as Triton's own JSON answers
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def encode_infer_response(response: Any, request: InferRequest) -> tuple[bytes, int | None]:
    """The v2 response body (from Triton's ``ModelInferResponse``) and, when any output is
    binary, the JSON header's length."""
    wanted = dict(request.outputs)
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=False):
        if request.outputs and output.name not in wanted:
            continue
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        if wanted.get(output.name, request.binary_default):
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _json_data(output.datatype, raw)
        outputs.append(entry)
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if request.id:
        body["id"] = request.id
    head = orjson.dumps(body, option=_NUMPY)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def header_length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise GatewayError(400, "invalid_header", f"{HEADER_LENGTH} must be an integer") from None
