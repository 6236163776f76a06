"""One input tensor of a KServe v2 request, checked and held as the bytes Triton receives.

JSON values are type-checked before anything is allocated from them (numpy would turn a mix of
strings and numbers into fixed-width unicode: 4 bytes x the longest string x every element),
then converted once into canonical bytes: little-endian, C order, BYTES elements 4-byte
length-prefixed. Binary tensor data is checked for its size (and, for floats, NaN/Inf) and
passed through as the body's own bytes, without a numpy array in between. Those bytes are both
what goes to Triton and what the cache key hashes, so a JSON and a binary request with the same
values share their cache entry.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

from gateway.errors import GatewayError, bad_request
from gateway.triton import RawInput


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes  # canonical bytes: little-endian, C order; BYTES length-prefixed

    @property
    def array(self) -> np.ndarray:
        """The values as a shaped numpy array (object dtype of bytes for BYTES)."""
        if self.datatype == "BYTES":
            values = deserialize_bytes_tensor(self.raw) if self.raw else np.empty(0, object)
            return np.asarray(values).reshape(self.shape)
        dtype = np.dtype(triton_to_np_dtype(self.datatype)).newbyteorder("<")
        return np.frombuffer(self.raw, dtype=dtype).reshape(self.shape)

    def to_grpc(self) -> RawInput:
        return RawInput(self.name, self.datatype, self.shape, self.raw)


def leaves(name: str, data: Any, numel: int) -> list[Any]:
    """The values of a flat or regularly nested JSON list, in order, never more than ``numel``.

    Level by level with C-speed list operations (no per-value Python work), so a hostile body
    costs at most its own size: nothing is allocated from a declared shape or string length.
    """
    ragged = f"input {name!r}: data is ragged; give a flat list or a regular nesting"
    level = data if isinstance(data, list) else [data]
    while level:
        kinds = set(map(type, level))
        if list not in kinds:
            break
        if kinds != {list}:
            raise bad_request(ragged, param=name)
        sizes = set(map(len, level))
        if len(sizes) != 1:
            raise bad_request(ragged, param=name)
        if len(level) * sizes.pop() > numel:
            raise bad_request(
                f"input {name!r}: data has more than the {numel} elements its shape says",
                param=name,
            )
        level = list(itertools.chain.from_iterable(level))
    if len(level) != numel:
        raise bad_request(
            f"input {name!r}: shape says {numel} elements but data has {len(level)}", param=name
        )
    return level


def _strings(name: str, values: list[Any], max_text_chars: int) -> bytes:
    kinds = set(map(type, values))
    if kinds != {str}:
        raise bad_request(f"input {name!r}: BYTES data must be strings", param=name)
    longest = max(map(len, values))
    if longest > max_text_chars:
        raise bad_request(
            f"input {name!r}: an element has {longest} characters; the limit is {max_text_chars}",
            param=name,
        )
    parts: list[bytes] = []
    for i, text in enumerate(values):
        try:
            encoded = text.encode("utf-8")
        except UnicodeEncodeError as exc:  # JSON allows lone surrogates ("\ud800")
            raise bad_request(
                f"input {name!r}: element {i} is not valid Unicode (an unpaired surrogate "
                f"at character {exc.start}); send well-formed text",
                param=name,
            ) from None
        parts += (len(encoded).to_bytes(4, "little"), encoded)
    return b"".join(parts)


@functools.cache
def _limits(dtype: np.dtype[Any]) -> np.iinfo[Any]:
    return np.iinfo(dtype)


def _out_of_range(name: str, datatype: str, info: np.iinfo[Any]) -> GatewayError:
    message = f"input {name!r}: values must lie in [{info.min}, {info.max}] for {datatype}"
    return bad_request(message, param=name)


def _integers(name: str, datatype: str, dtype: np.dtype[Any], values: list[Any]) -> bytes:
    kinds = set(map(type, values))
    info = _limits(dtype)
    floats = [v for v in values if type(v) is float] if float in kinds else []
    if floats and kinds <= {int, float} and all(v.is_integer() and abs(v) >= 2**63 for v in floats):
        # integer literals beyond 64 bits, which the fast JSON parser reads as floats
        raise _out_of_range(name, datatype, info)
    if kinds != {int}:
        raise bad_request(
            f"input {name!r}: {datatype} data must be integers, got "
            f"{', '.join(sorted(k.__name__ for k in kinds - {int}))} values",
            param=name,
        )
    if not (info.min <= min(values) and max(values) <= info.max):
        raise _out_of_range(name, datatype, info)
    return np.array(values, dtype=dtype.newbyteorder("<")).tobytes()


def from_json(name: str, datatype: str, data: Any, numel: int, *, max_text_chars: int) -> bytes:
    """JSON values → canonical bytes of the datatype, refusing lossy or out-of-range values."""
    values = leaves(name, data, numel)
    if numel == 0:
        return b""
    if datatype == "BYTES":
        return _strings(name, values, max_text_chars)
    dtype = np.dtype(triton_to_np_dtype(datatype))
    if datatype == "BOOL":
        if set(map(type, values)) != {bool}:
            raise bad_request(f"input {name!r}: BOOL data must be true/false", param=name)
        return np.array(values, dtype=bool).tobytes()
    if dtype.kind in "iu":
        return _integers(name, datatype, dtype, values)
    kinds = set(map(type, values))
    if not kinds <= {int, float}:
        raise bad_request(
            f"input {name!r}: {datatype} data must be numbers, got "
            f"{', '.join(sorted(k.__name__ for k in kinds - {int, float}))} values",
            param=name,
        )
    try:
        array = np.array(values, dtype=np.float64).astype(dtype.newbyteorder("<"))
    except OverflowError:  # an integer beyond float64
        raise bad_request(f"input {name!r}: a value is out of range for {datatype}") from None
    _finite(name, array)
    return array.tobytes()


def _finite(name: str, array: np.ndarray) -> None:
    if array.size and not np.isfinite(array).all():
        raise bad_request(f"input {name!r} contains NaN or Inf", param=name)


def _length_prefixed(name: str, raw: bytes, numel: int, max_bytes: int) -> None:
    """Check a binary BYTES tensor: ``numel`` length-prefixed elements, none over the limit."""
    malformed = f"input {name!r}: malformed BYTES tensor (4-byte length prefixes)"
    offset = count = longest = 0
    view = memoryview(raw)
    while offset < len(raw):
        if not (offset + 4 <= len(raw) and count < numel + 1):
            raise bad_request(malformed)
        size = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4 + size
        if offset > len(raw):
            raise bad_request(malformed)
        longest = max(longest, size)
        count += 1
    if count != numel:
        raise bad_request(f"input {name!r}: {count} strings, shape says {numel}")
    if longest > max_bytes:
        raise bad_request(
            f"input {name!r}: an element has {longest} bytes; the limit is {max_bytes}", param=name
        )


def from_binary(name: str, datatype: str, raw: bytes, numel: int, *, max_text_chars: int) -> bytes:
    """Binary tensor data, checked (size, floats finite) and passed through as it came."""
    if datatype == "BYTES":
        _length_prefixed(name, raw, numel, max_text_chars * 4)
        return raw
    dtype = np.dtype(triton_to_np_dtype(datatype)).newbyteorder("<")
    if len(raw) != numel * dtype.itemsize:
        raise bad_request(
            f"input {name!r}: binary_data_size {len(raw)} bytes, shape and {datatype} need "
            f"{numel * dtype.itemsize}",
            param=name,
        )
    if dtype.kind == "f":
        _finite(name, np.frombuffer(raw, dtype=dtype))
    return raw
