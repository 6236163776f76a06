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

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

from gateway.errors import bad_request
from gateway.triton import RawInput


def expect(condition: bool, message: str, param: str | None = None) -> None:
    if not condition:
        raise bad_request(message, param=param)


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
        expect(kinds == {list}, ragged, name)
        sizes = set(map(len, level))
        expect(len(sizes) == 1, ragged, name)
        expect(
            len(level) * sizes.pop() <= numel,
            f"input {name!r}: data has more than the {numel} elements its shape says",
            name,
        )
        level = list(itertools.chain.from_iterable(level))
    expect(
        len(level) == numel,
        f"input {name!r}: shape says {numel} elements but data has {len(level)}",
        name,
    )
    return level


def _strings(name: str, values: list[Any], max_text_chars: int) -> bytes:
    kinds = set(map(type, values))
    expect(kinds == {str}, f"input {name!r}: BYTES data must be strings", name)
    longest = max(map(len, values))
    expect(
        longest <= max_text_chars,
        f"input {name!r}: an element has {longest} characters; the limit is {max_text_chars}",
        name,
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


def _integers(name: str, datatype: str, dtype: np.dtype[Any], values: list[Any]) -> bytes:
    kinds = set(map(type, values))
    info = np.iinfo(dtype)
    out_of_range = f"input {name!r}: values must lie in [{info.min}, {info.max}] for {datatype}"
    floats = [v for v in values if type(v) is float] if float in kinds else []
    if floats and kinds <= {int, float} and all(v.is_integer() and abs(v) >= 2**63 for v in floats):
        # integer literals beyond 64 bits, which the fast JSON parser reads as floats
        raise bad_request(out_of_range, param=name)
    expect(
        kinds == {int},
        f"input {name!r}: {datatype} data must be integers, got "
        f"{', '.join(sorted(k.__name__ for k in kinds - {int}))} values",
        name,
    )
    expect(info.min <= min(values) and max(values) <= info.max, out_of_range, name)
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
        expect(
            set(map(type, values)) == {bool}, f"input {name!r}: BOOL data must be true/false", name
        )
        return np.array(values, dtype=bool).tobytes()
    if dtype.kind in "iu":
        return _integers(name, datatype, dtype, values)
    kinds = set(map(type, values))
    expect(
        kinds <= {int, float},
        f"input {name!r}: {datatype} data must be numbers, got "
        f"{', '.join(sorted(k.__name__ for k in kinds - {int, float}))} values",
        name,
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
        expect(offset + 4 <= len(raw) and count < numel + 1, malformed)
        size = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4 + size
        expect(offset <= len(raw), malformed)
        longest = max(longest, size)
        count += 1
    expect(count == numel, f"input {name!r}: {count} strings, shape says {numel}")
    expect(
        longest <= max_bytes,
        f"input {name!r}: an element has {longest} bytes; the limit is {max_bytes}",
        name,
    )


def from_binary(name: str, datatype: str, raw: bytes, numel: int, *, max_text_chars: int) -> bytes:
    """Binary tensor data, checked (size, floats finite) and passed through as it came."""
    if datatype == "BYTES":
        _length_prefixed(name, raw, numel, max_text_chars * 4)
        return raw
    dtype = np.dtype(triton_to_np_dtype(datatype)).newbyteorder("<")
    expect(
        len(raw) == numel * dtype.itemsize,
        f"input {name!r}: binary_data_size {len(raw)} bytes, shape and {datatype} need "
        f"{numel * dtype.itemsize}",
        name,
    )
    if dtype.kind == "f":
        _finite(name, np.frombuffer(raw, dtype=dtype))
    return raw
