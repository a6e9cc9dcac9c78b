"""Model weights as safetensors bytes: encode, decode, and validate untrusted uploads.

A safetensors file is an 8-byte little-endian header length ``n``, ``n`` bytes of JSON mapping
each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to
the data section after the header), then the data section. ``check`` parses that header itself
before the safetensors library sees the bytes, so a hostile upload is refused with a message
that names what is wrong (and a header length of 2**63 never becomes an allocation); then the
library reads the header as a second opinion, and every floating-point value is read, a chunk
at a time, to refuse NaN and infinity. Nothing here ever unpickles.

The header is untrusted JSON, parsed within :mod:`fedsim.core.limits` (nesting, duplicate keys,
integer range, control characters) and at most :data:`MAX_HEADER_BYTES` long; every fault in
a file, however deep in its header, is an :class:`InvalidModelFile`.

Only dtypes numpy can hold are accepted, since aggregation in ``fedsim.core`` is numpy.
"""

from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import safetensors.numpy
from safetensors import safe_open

from fedsim.core.limits import JsonLimitError, json_loads
from fedsim.core.repository import InvalidModelFile

MAX_HEADER_BYTES = 8 * 1024 * 1024
"""The longest header accepted. A tensor's entry takes about 100 bytes, so this holds some
80,000 tensors and room for ``__metadata__``, where a model of fedsim's zoo needs well under
1 MiB; the safetensors library's own bound is 100 MB, which would let one upload make the
server parse 100 MB of JSON before a byte of weights is seen."""
VALUE_CHUNK_BYTES = 1 << 20
"""Tensor data is checked for non-finite values in pieces this big, never held whole."""
MAX_DIMS = 32
"""The most dimensions a tensor may have: what numpy 1 holds (numpy 2 holds 64)."""

# Bits per element of every dtype the format defines, so that a file using one numpy lacks is
# told so rather than called malformed.
_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}
NUMPY_DTYPES: dict[str, np.dtype] = {
    code: np.dtype(t)
    for code, t in {
        "BOOL": np.bool_,
        "U8": np.uint8,
        "I8": np.int8,
        "I16": np.int16,
        "U16": np.uint16,
        "F16": np.float16,
        "I32": np.int32,
        "U32": np.uint32,
        "F32": np.float32,
        "C64": np.complex64,
        "F64": np.float64,
        "I64": np.int64,
        "U64": np.uint64,
    }.items()
}
_CODES = {dt: code for code, dt in NUMPY_DTYPES.items()}

TensorSpec = tuple[tuple[int, ...], str]
"""A tensor's shape and safetensors dtype code, such as ``((4, 3), "F32")``."""
Layout = dict[str, TensorSpec]
"""Every tensor of a file by name: what two versions of one model must share."""

Source = bytes | str | os.PathLike
"""A whole file in memory, or the path of one."""


def encode(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The safetensors bytes of named arrays; raises ``ValueError`` for what it cannot hold."""
    if not arrays:
        raise ValueError("nothing to encode: a model file needs at least one tensor")
    flat = {}
    for name, array in arrays.items():
        if not isinstance(name, str):
            raise ValueError(f"tensor names must be strings, got {name!r}")
        array = np.asarray(array)
        dtype = array.dtype.newbyteorder("<")
        if dtype.newbyteorder("=") not in _CODES:
            raise ValueError(f"tensor {name!r}: dtype {array.dtype} has no safetensors code")
        # The library copies raw memory by pointer and length, so it needs a dense
        # little-endian buffer; a transposed or big-endian view would be written scrambled.
        # (ascontiguousarray would also turn a 0-d array into a 1-d one.)
        flat[name] = array.astype(dtype, order="C", copy=False)
    return safetensors.numpy.save(flat)


def decode(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of a safetensors file, after validating its header (values are not judged).

    The arrays are read-only views of ``data``; copy one to change it.
    """
    _header(data)
    return _load(data)


def read_layout(source: Source) -> Layout:
    """The names, shapes and dtypes a file declares, from its header alone (validated)."""
    return _header(source).layout


def check(
    source: Source,
    *,
    reference: Mapping[str, tuple[Sequence[int], Any]] | None = None,
) -> Layout:
    """Validate a safetensors file and return its layout; raise ``InvalidModelFile`` if unusable.

    Usable means: a well-formed header (see the module docstring), tensors packed back to back
    over the whole data section, dtypes numpy holds, and no NaN or infinity in any tensor,
    since one such value would poison every aggregate the version takes part in.
    ``reference`` maps each expected tensor name to ``(shape, dtype)``, the dtype as a
    safetensors code ("F32") or anything ``numpy.dtype`` accepts; the file must match it
    exactly. A path is read :data:`VALUE_CHUNK_BYTES` at a time, so memory stays bounded
    whatever the size of the file or of its largest tensor.
    """
    header = _header(source)
    if reference is not None:
        compare_layouts(header.layout, reference)
    if isinstance(source, bytes):
        _load(source)
        _check_finite(io.BytesIO(source), header)
    else:
        try:
            with safe_open(source, framework="np") as f:  # parses and checks the header
                f.keys()
        except Exception as e:  # the library's errors have no common public base
            raise InvalidModelFile(f"not a safetensors file: {e}") from e
        with Path(source).open("rb") as f:
            _check_finite(f, header)
    return header.layout


def compare_layouts(
    layout: Mapping[str, TensorSpec], reference: Mapping[str, tuple[Sequence[int], Any]]
) -> None:
    """Raise ``InvalidModelFile`` naming the first difference between two layouts."""
    missing = sorted(reference.keys() - layout.keys())
    if missing:
        raise InvalidModelFile(f"missing tensors: {_quote_all(missing)}")
    unexpected = sorted(layout.keys() - reference.keys())
    if unexpected:
        raise InvalidModelFile(f"unexpected tensors: {_quote_all(unexpected)}")
    for name in sorted(layout):
        shape, dtype = layout[name]
        want_shape = tuple(int(d) for d in reference[name][0])
        want_dtype = _code(reference[name][1])
        if shape != want_shape:
            raise InvalidModelFile(f"tensor {_quote(name)}: shape {shape} != {want_shape}")
        if dtype != want_dtype:
            raise InvalidModelFile(f"tensor {_quote(name)}: dtype {dtype} != {want_dtype}")


def _code(dtype: Any) -> str:
    if isinstance(dtype, str) and dtype in _BITS:
        return dtype
    try:
        return _CODES[np.dtype(dtype).newbyteorder("=")]
    except (TypeError, KeyError):
        raise ValueError(f"reference dtype {dtype!r} has no safetensors code") from None


def _load(data: bytes) -> dict[str, np.ndarray]:
    try:
        return safetensors.numpy.load(data)
    except Exception as e:  # the library's errors have no common public base
        raise InvalidModelFile(f"not a safetensors file: {e}") from e


class _Header(NamedTuple):
    layout: Layout
    data_start: int  # where the data section begins in the file
    spans: list[tuple[int, int, str]]  # each tensor's [begin, end) in the data section, sorted


def _check_finite(f: BinaryIO, header: _Header) -> None:
    """Raise ``InvalidModelFile`` naming the first tensor of ``f`` holding a NaN or infinity."""
    buffer = bytearray(VALUE_CHUNK_BYTES)  # reused: every chunk is read into it
    for begin, end, name in header.spans:
        shape, code = header.layout[name]
        dtype = NUMPY_DTYPES[code].newbyteorder("<")
        if dtype.kind not in "fc":
            continue  # integers and booleans have no NaN
        f.seek(header.data_start + begin)
        step = VALUE_CHUNK_BYTES - VALUE_CHUNK_BYTES % dtype.itemsize
        done = 0
        while done < end - begin:
            want = min(step, end - begin - done)
            got = f.readinto(memoryview(buffer)[:want])
            if got != want:
                raise _bad(f"tensor {_quote(name)}: the file ends inside its data")
            values = np.frombuffer(buffer, dtype=dtype, count=want // dtype.itemsize)
            finite = np.isfinite(values)
            if not finite.all():
                first = int(np.argmin(finite))
                index = done // dtype.itemsize + first
                where = np.unravel_index(index, shape) if shape else ()
                raise InvalidModelFile(
                    f"tensor {_quote(name)}: non-finite value {values[first]} at index "
                    f"{list(map(int, where))}; weights must be finite numbers"
                )
            done += want


def _header(source: Source) -> _Header:
    """Read and validate the header of bytes or a file."""
    if isinstance(source, bytes):
        size = len(source)
        header_len = _header_len(source[:8], size)
        header = source[8 : 8 + header_len]
    else:
        path = Path(source)
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            header_len = _header_len(f.read(8), size)
            header = f.read(header_len)
    layout, spans = _parse_header(header, data_len=size - 8 - header_len)
    return _Header(layout=layout, data_start=8 + header_len, spans=spans)


def _header_len(prefix: bytes, size: int) -> int:
    if size < 8:
        raise _bad(f"too short ({size} bytes; the header length alone takes 8)")
    (n,) = struct.unpack("<Q", prefix)
    if n > MAX_HEADER_BYTES:
        raise _bad(f"header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    if 8 + n > size:
        raise _bad(f"header length {n} runs past the end of the file ({size} bytes)")
    return n


def _parse_header(header: bytes, *, data_len: int) -> tuple[Layout, list[tuple[int, int, str]]]:
    try:
        # Duplicate keys are refused too: json keeps the last, and two parsers could then
        # disagree about a tensor.
        obj = json_loads(header.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise _bad(f"header is not UTF-8 ({e})") from None
    except JsonLimitError as e:
        raise _bad(f"header breaks a JSON limit ({e})") from None
    except ValueError as e:  # JSONDecodeError, NaN
        raise _bad(f"header is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise _bad(f"header is a JSON {type(obj).__name__}, not an object")
    meta = obj.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _bad("__metadata__ must map strings to strings")
    if not obj:
        raise InvalidModelFile("no tensors in the file")

    layout: Layout = {}
    spans = []
    for name, info in obj.items():
        shape, dtype, (begin, end) = _tensor_info(name, info)
        if end > data_len:
            raise _bad(
                f"tensor {_quote(name)}: data_offsets [{begin}, {end}] go past the end of the data "
                f"({data_len} bytes)"
            )
        bits = math.prod(shape) * _BITS[dtype]
        if bits % 8 or end - begin != bits // 8:
            raise _bad(
                f"tensor {_quote(name)}: data_offsets [{begin}, {end}] hold {end - begin} bytes, "
                f"shape {shape} of {dtype} needs "
                + (f"{bits // 8}" if bits % 8 == 0 else f"{bits} bits")
            )
        if dtype not in NUMPY_DTYPES:
            raise InvalidModelFile(f"tensor {_quote(name)}: dtype {dtype} has no numpy equivalent")
        layout[name] = (shape, dtype)
        spans.append((begin, end, name))

    # The format packs tensors back to back: a gap could smuggle data, an overlap aliases.
    spans.sort()
    expected = 0
    for begin, end, name in spans:
        if begin != expected:
            raise _bad(
                f"tensor {_quote(name)}: data_offsets [{begin}, {end}] overlap or leave a gap "
                f"(the previous tensor ends at {expected})"
            )
        expected = end
    if expected != data_len:
        raise _bad(f"{data_len - expected} bytes at the end of the data belong to no tensor")
    return layout, spans


def _tensor_info(name: str, info: Any) -> tuple[tuple[int, ...], str, tuple[int, int]]:
    if not isinstance(info, dict):
        raise _bad(f"tensor {_quote(name)}: expected an object, got {type(info).__name__}")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
    if missing:
        raise _bad(f"tensor {_quote(name)}: missing {', '.join(missing)}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _BITS:
        raise _bad(f"tensor {_quote(name)}: unknown dtype {_quote(dtype)}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise _bad(f"tensor {_quote(name)}: shape {_quote(shape)} is not a list of integers >= 0")
    if len(shape) > MAX_DIMS:
        raise _bad(f"tensor {_quote(name)}: {len(shape)} dimensions, more than {MAX_DIMS}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _bad(
            f"tensor {_quote(name)}: data_offsets {_quote(offsets)} is not [begin, end], "
            "begin <= end"
        )
    return tuple(shape), dtype, (offsets[0], offsets[1])


def _quote(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut for a message: a name or value in a header can be megabytes."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _quote_all(names: Sequence[str], shown: int = 8) -> str:
    quoted = ", ".join(_quote(n) for n in names[:shown])
    return quoted if len(names) <= shown else f"{quoted} and {len(names) - shown} more"


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _bad(reason: str) -> InvalidModelFile:
    return InvalidModelFile(f"not a safetensors file: {reason}")
