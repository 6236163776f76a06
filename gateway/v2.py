"""The Open Inference Protocol (KServe v2) over REST: request parsing, validation, responses.

Supports JSON tensors and the binary tensor data extension (``Inference-Header-Content-Length``
plus raw bytes after the JSON header), which is what ``tritonclient.http`` sends by default, so
a standard client pointed at the gateway works unchanged. Every check runs against the model's
metadata from Triton before Triton is called; each failure is a 400 naming the tensor and what to
fix.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor, triton_to_np_dtype

from gateway.errors import GatewayError, bad_request
from gateway.upstream import ModelInfo

HEADER_LENGTH = "Inference-Header-Content-Length"
_KINDS = {"BOOL": "b", "BYTES": "SU"}  # numpy kinds accepted from JSON per datatype family


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray  # shaped; object dtype of bytes for BYTES

    def raw(self) -> bytes:
        """Canonical bytes of the values (little-endian, C order; BYTES length-prefixed)."""
        if self.datatype == "BYTES":
            serialized = serialize_byte_tensor(self.array)
            return b"" if serialized is None else bytes(serialized.item())
        return np.ascontiguousarray(self.array, self.array.dtype.newbyteorder("<")).tobytes()

    def to_grpc(self) -> grpcclient.InferInput:
        tensor = grpcclient.InferInput(self.name, list(self.shape), self.datatype)
        tensor.set_data_from_numpy(self.array)
        return tensor


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
            parts += [t.name.encode(), t.datatype.encode(), repr(t.shape).encode(), t.raw()]
        parts += [f"{name}:{binary}".encode() for name, binary in self.outputs]
        return parts


def loads(data: bytes | str, what: str = "body") -> Any:
    try:
        return json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except UnicodeDecodeError as exc:
        raise bad_request(f"{what} is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise bad_request(f"{what} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    except RecursionError:
        raise bad_request(f"{what} is nested too deeply") from None
    except ValueError:  # Python refuses integers of more than 4,300 digits
        raise bad_request(f"{what} holds a number with too many digits") from None


def _expect(condition: bool, message: str, param: str | None = None) -> None:
    if not condition:
        raise bad_request(message, param=param)


def _leaves(name: str, data: Any, numel: int) -> list[Any]:
    """The values of a flat or regularly nested JSON list, in order, never more than ``numel``.

    Level by level with C-speed list operations (no per-value Python work), so a hostile body
    costs at most its own size: nothing is allocated from a declared shape or string length.
    """
    level = data if isinstance(data, list) else [data]
    while level:
        kinds = set(map(type, level))
        if list not in kinds:
            break
        _expect(
            kinds == {list},
            f"input {name!r}: data is ragged; give a flat list or a regular nesting",
            name,
        )
        sizes = set(map(len, level))
        _expect(
            len(sizes) == 1,
            f"input {name!r}: data is ragged; give a flat list or a regular nesting",
            name,
        )
        _expect(
            len(level) * sizes.pop() <= numel,
            f"input {name!r}: data has more than the {numel} elements its shape says",
            name,
        )
        level = list(itertools.chain.from_iterable(level))
    _expect(
        len(level) == numel,
        f"input {name!r}: shape says {numel} elements but data has {len(level)}",
        name,
    )
    return level


def _from_json(
    name: str, datatype: str, data: Any, numel: int, *, max_text_chars: int
) -> np.ndarray:
    """JSON values → a flat array of the datatype, refusing lossy or out-of-range values.

    Types are checked before numpy sees the values: numpy would turn a mix of strings and
    numbers into fixed-width unicode, 4 bytes x the longest string x every element.
    """
    values = _leaves(name, data, numel)
    if numel == 0:
        return np.empty(0, dtype=object if datatype == "BYTES" else triton_to_np_dtype(datatype))
    kinds = set(map(type, values))
    if datatype == "BYTES":
        _expect(kinds == {str}, f"input {name!r}: BYTES data must be strings", name)
        longest = max(map(len, values))
        _expect(
            longest <= max_text_chars,
            f"input {name!r}: an element has {longest} characters; the limit is {max_text_chars}",
            name,
        )
        array = np.empty(numel, dtype=object)
        for i, text in enumerate(values):
            try:
                array[i] = text.encode("utf-8")
            except UnicodeEncodeError as exc:  # JSON allows lone surrogates ("\ud800")
                raise bad_request(
                    f"input {name!r}: element {i} is not valid Unicode (an unpaired surrogate "
                    f"at character {exc.start}); send well-formed text",
                    param=name,
                ) from None
        return array
    dtype = np.dtype(triton_to_np_dtype(datatype))
    if datatype == "BOOL":
        _expect(kinds == {bool}, f"input {name!r}: BOOL data must be true/false", name)
        return np.array(values, dtype=bool)
    if dtype.kind in "iu":
        _expect(
            kinds == {int},
            f"input {name!r}: {datatype} data must be integers, got "
            f"{', '.join(sorted(k.__name__ for k in kinds - {int}))} values",
            name,
        )
        info = np.iinfo(dtype)
        low, high = min(values), max(values)
        _expect(
            info.min <= low and high <= info.max,
            f"input {name!r}: values must lie in [{info.min}, {info.max}] for {datatype}",
            name,
        )
        return np.array(values, dtype=dtype)
    _expect(
        kinds <= {int, float},
        f"input {name!r}: {datatype} data must be numbers, got "
        f"{', '.join(sorted(k.__name__ for k in kinds - {int, float}))} values",
        name,
    )
    try:
        return np.array(values, dtype=np.float64).astype(dtype)
    except OverflowError:  # an integer beyond float64
        raise bad_request(f"input {name!r}: a value is out of range for {datatype}") from None


def _from_binary(name: str, datatype: str, raw: bytes, numel: int) -> np.ndarray:
    if datatype == "BYTES":
        try:
            values = deserialize_bytes_tensor(raw)
        except Exception:
            raise bad_request(
                f"input {name!r}: malformed BYTES tensor (4-byte length prefixes)"
            ) from None
        _expect(values.size == numel, f"input {name!r}: {values.size} strings, shape says {numel}")
        return values
    dtype = np.dtype(triton_to_np_dtype(datatype)).newbyteorder("<")
    _expect(
        len(raw) == numel * dtype.itemsize,
        f"input {name!r}: binary_data_size {len(raw)} bytes, shape and {datatype} need "
        f"{numel * dtype.itemsize}",
        name,
    )
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))


def parse_infer_request(
    body: bytes,
    header_length: int | None,
    model: ModelInfo,
    *,
    max_text_chars: int,
    max_elements: int = 2**20,
) -> InferRequest:
    """Parse and validate one ``POST /v2/models/{name}/infer`` body against the model."""
    if header_length is not None:
        _expect(
            0 < header_length <= len(body),
            f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes",
        )
        head, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        head, binary = body, memoryview(b"")
    request = loads(head, "inference request header")
    _expect(isinstance(request, dict), "the request must be a JSON object with 'inputs'")
    inputs = request.get("inputs")
    _expect(isinstance(inputs, list) and len(inputs) > 0, "'inputs' must be a non-empty list")
    params = request.get("parameters") or {}
    _expect(isinstance(params, dict), "'parameters' must be an object")
    request_id = request.get("id", "")
    _expect(
        isinstance(request_id, str) and len(request_id) <= 256,
        "'id' must be a string of at most 256 characters",
    )
    try:
        request_id.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request("'id' is not valid Unicode (an unpaired surrogate)") from None

    parsed: list[Tensor] = []
    offset = 0
    elements = 0
    batch_sizes: set[int] = set()
    for item in inputs:
        _expect(isinstance(item, dict), "each input must be an object with name/shape/datatype")
        name = item.get("name")
        _expect(isinstance(name, str), "each input needs a 'name' string")
        info = model.input(name)
        if info is None:
            expected = ", ".join(t.name for t in model.inputs)
            raise bad_request(
                f"model {model.name!r} has no input {name!r}; its inputs are: {expected}",
                param=name,
            )
        _expect(all(t.name != name for t in parsed), f"input {name!r} is given twice", name)
        datatype = item.get("datatype")
        _expect(
            datatype == info.datatype,
            f"input {name!r} must have datatype {info.datatype}, got {datatype!r}",
            name,
        )
        shape = item.get("shape")
        _expect(
            isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape),
            f"input {name!r}: 'shape' must be a list of non-negative integers",
            name,
        )
        _expect(
            len(shape) == len(info.shape),
            f"input {name!r} must have {len(info.shape)} dimensions {list(info.shape)}, "
            f"got {shape}",
            name,
        )
        for i, (got, want) in enumerate(zip(shape, info.shape, strict=True)):
            _expect(
                want == -1 or got == want,
                f"input {name!r}: dimension {i} must be {want}, got {got}",
                name,
            )
        if model.max_batch_size > 0:
            batch = shape[0]
            _expect(
                1 <= batch <= model.max_batch_size,
                f"input {name!r}: batch size {batch} outside 1..{model.max_batch_size} "
                f"(the model's max_batch_size); split the request",
                name,
            )
            batch_sizes.add(batch)
        numel = math.prod(shape)
        elements += numel
        _expect(
            elements <= max_elements,
            f"input {name!r}: the request holds more than {max_elements} elements; split it",
            name,
        )
        tparams = item.get("parameters") or {}
        _expect(isinstance(tparams, dict), f"input {name!r}: 'parameters' must be an object")
        size = tparams.get("binary_data_size")
        if size is not None:
            _expect(
                type(size) is int and 0 <= size <= len(binary) - offset,
                f"input {name!r}: binary_data_size {size} exceeds the binary data left",
                name,
            )
            flat = _from_binary(name, datatype, bytes(binary[offset : offset + size]), numel)
            offset += size
        else:
            _expect("data" in item, f"input {name!r} has neither 'data' nor binary data", name)
            flat = _from_json(name, datatype, item["data"], numel, max_text_chars=max_text_chars)
        if flat.dtype.kind == "f" and flat.size and not np.isfinite(flat).all():
            raise bad_request(f"input {name!r} contains NaN or Inf", param=name)
        if datatype == "BYTES" and flat.size:
            longest = max(len(v) for v in flat.tolist())
            _expect(
                longest <= max_text_chars * 4,
                f"input {name!r}: an element has {longest} bytes; the limit is "
                f"{max_text_chars * 4}",
                name,
            )
        parsed.append(Tensor(name, datatype, tuple(shape), flat.reshape(shape)))

    _expect(
        offset == len(binary), f"{len(binary) - offset} bytes of binary data belong to no input"
    )
    missing = [
        t.name for t in model.inputs if not t.optional and not any(p.name == t.name for p in parsed)
    ]
    _expect(not missing, f"model {model.name!r} needs inputs {missing}")
    _expect(len(batch_sizes) <= 1, f"inputs disagree on the batch size: {sorted(batch_sizes)}")

    binary_default = bool(params.get("binary_data_output", False))
    outputs: list[tuple[str, bool]] = []
    requested = request.get("outputs") or []
    _expect(isinstance(requested, list), "'outputs' must be a list")
    for item in requested:
        _expect(isinstance(item, dict) and isinstance(item.get("name"), str), "bad output entry")
        name = item["name"]
        if model.output(name) is None:
            expected = ", ".join(t.name for t in model.outputs)
            raise bad_request(
                f"model {model.name!r} has no output {name!r}; its outputs are: {expected}",
                param=name,
            )
        oparams = item.get("parameters") or {}
        outputs.append((name, bool(oparams.get("binary_data", binary_default))))
    batch = next(iter(batch_sizes), 1)
    return InferRequest(request_id, parsed, outputs, binary_default, batch)


def requested_outputs(request: InferRequest) -> list[grpcclient.InferRequestedOutput] | None:
    if not request.outputs:
        return None
    return [grpcclient.InferRequestedOutput(name) for name, _ in request.outputs]


def encode_infer_response(
    result: grpcclient.InferResult, request: InferRequest
) -> tuple[bytes, int | None]:
    """The v2 response body and, when any output is binary, the JSON header's length."""
    response = result.get_response()
    wanted = dict(request.outputs)
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for i, output in enumerate(response.outputs):
        binary = wanted.get(output.name, request.binary_default)
        if request.outputs and output.name not in wanted:
            continue
        raw = response.raw_output_contents[i]
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": [int(d) for d in output.shape],
        }
        if binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif output.datatype == "BYTES":
            entry["data"] = [
                v.decode("utf-8", "replace") for v in deserialize_bytes_tensor(raw).tolist()
            ]
        else:
            dtype = np.dtype(triton_to_np_dtype(output.datatype)).newbyteorder("<")
            entry["data"] = np.frombuffer(raw, dtype=dtype).tolist()
        outputs.append(entry)
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if request.id:
        body["id"] = request.id
    head = json.dumps(body, separators=(",", ":")).encode()
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
