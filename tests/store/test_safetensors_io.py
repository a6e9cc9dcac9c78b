"""Safetensors encoding, decoding, and validation of malformed or mismatched files."""

from __future__ import annotations

import json
import pickle
import re
import struct
import tracemalloc

import numpy as np
import pytest

from fedsim.core.limits import MAX_JSON_DEPTH
from fedsim.core.repository import InvalidModelFile
from fedsim.store.safetensors_io import (
    MAX_HEADER_BYTES,
    VALUE_CHUNK_BYTES,
    check,
    decode,
    encode,
    read_layout,
)


def raw(header: dict | bytes, data: bytes = b"", *, length: int | None = None) -> bytes:
    """A file built by hand: 8-byte header length, header, data."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(head) if length is None else length) + head + data


def f32(name="w", shape=(2,), offsets=(0, 8)) -> dict:
    return {name: {"dtype": "F32", "shape": list(shape), "data_offsets": list(offsets)}}


def nested(depth: int) -> list:
    """Lists ``depth`` deep: ``nested(2) == [[]]``."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.fixture(params=["bytes", "path"])
def as_source(request, tmp_path):
    """Hand a file to check() in memory or on disk: both must be judged alike."""

    def make(data: bytes):
        if request.param == "bytes":
            return data
        path = tmp_path / "upload.safetensors"
        path.write_bytes(data)
        return path

    return make


# -- round trip --


def test_round_trip_keeps_names_shapes_dtypes_and_values():
    # Prepare
    rng = np.random.default_rng(0)
    arrays = {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "f64": rng.standard_normal(5),
        "f16": np.arange(6, dtype=np.float16).reshape(2, 3),
        "i64": np.array([-(2**40), 0, 2**40]),
        "u8": np.arange(256, dtype=np.uint8),
        "mask": np.array([True, False, True]),
        "c64": np.array([1 + 2j], dtype=np.complex64),
        "scalar": np.float32(3.5) * np.ones((), np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }
    # Execute
    back = decode(encode(arrays))
    # Assert
    assert back.keys() == arrays.keys()
    for name, a in arrays.items():
        assert back[name].dtype == a.dtype and back[name].shape == a.shape, name
        np.testing.assert_array_equal(back[name], a)


def test_encode_writes_views_and_big_endian_arrays_by_value():
    # Prepare: a transposed view (not contiguous) and a big-endian array.
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    arrays = {"t": base.T, "be": np.arange(5, dtype=">i4")}
    # Execute
    back = decode(encode(arrays))
    # Assert
    np.testing.assert_array_equal(back["t"], base.T)
    np.testing.assert_array_equal(back["be"], np.arange(5))
    assert back["be"].dtype == np.dtype("<i4")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({}, "at least one tensor"),
        ({"s": np.array(["text"])}, "no safetensors code"),
        ({"o": np.array([object()])}, "no safetensors code"),
        ({1: np.zeros(2)}, "names must be strings"),
    ],
)
def test_encode_refuses_what_it_cannot_hold(arrays, message):
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        encode(arrays)


def test_check_and_read_layout_report_the_layout(as_source):
    # Prepare
    data = encode({"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.int64)})
    # Execute
    layout = check(as_source(data))
    # Assert
    assert layout == {"w": ((3, 4), "F32"), "b": ((4,), "I64")}
    assert read_layout(as_source(data)) == layout


# -- malformed files --


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short (0 bytes"),
        (b"\x01\x00\x00", "too short (3 bytes"),
        (raw(b"{}", length=2**63), f"exceeds the limit of {MAX_HEADER_BYTES} bytes"),
        (raw(b"{}", length=MAX_HEADER_BYTES + 1), "exceeds the limit"),
        (raw(b'{"a":', length=1000), "header length 1000 runs past the end of the file"),
        (raw(b'{"w": {"dtype": "F32",'), "header is not valid JSON"),
        (raw(b'{"w": "\xff\xfe"}'), "header is not UTF-8"),
        (raw(b"[1, 2]"), "header is a JSON list, not an object"),
        (raw(b'{"w": 1, "w": 2}'), "key 'w' appears twice"),
        # A header as deep as the one that once answered 500, and one just past the limit.
        (raw(b'{"w": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"), "nested deeper than 32"),
        (
            raw({"__metadata__": {"a": "b"}, "w": {"x": nested(MAX_JSON_DEPTH - 1)}}),
            "w.x[0][0][0]",
        ),
        (raw(b'{"w": {"dtype": "F32", "shape": [NaN]}}'), "NaN is not JSON"),
        (raw(f32(offsets=(0, 2**64)), b"\0" * 8), "integer out of range"),
        (raw(f32(name="w\x00"), b"\0" * 8), "control characters are not allowed"),
        (raw({"w": [1, 2]}), "tensor 'w': expected an object, got list"),
        (raw({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "tensor 'w': missing data_offsets"),
        (raw(f32(offsets=(0, 8)), b"\0" * 4), "data_offsets [0, 8] go past the end of the data"),
        (raw(f32(offsets=(0, 4)), b"\0" * 4), "hold 4 bytes, shape (2,) of F32 needs 8"),
        (raw(f32(offsets=(8, 4)), b"\0" * 8), "is not [begin, end], begin <= end"),
        (raw(f32(offsets=(0,)), b"\0" * 8), "is not [begin, end]"),
        (raw(f32(shape=(-2,)), b"\0" * 8), "shape [-2] is not a list of integers >= 0"),
        (raw(f32(shape=(True,), offsets=(0, 4)), b"\0" * 4), "is not a list of integers"),
        (raw(f32(shape=(1,) * 33, offsets=(0, 4)), b"\0" * 4), "33 dimensions, more than 32"),
        # Once an OverflowError (a 500): the size such a shape needs is no float.
        (raw(f32(shape=(2**62,) * 20), b"\0" * 8), "hold 8 bytes, shape (4611686018427387904,"),
        (raw({"w": {"dtype": "Q8", "shape": [1], "data_offsets": [0, 1]}}, b"\0"), "unknown dtype"),
        (raw({**f32("a"), **f32("b", offsets=(4, 12))}, b"\0" * 12), "overlap or leave a gap"),
        (raw({**f32("a"), **f32("b", offsets=(12, 20))}, b"\0" * 20), "overlap or leave a gap"),
        (raw(f32(), b"\0" * 12), "4 bytes at the end of the data belong to no tensor"),
        (raw({"__metadata__": {"a": 1}, **f32()}, b"\0" * 8), "__metadata__ must map strings"),
        (raw({"__metadata__": {"a": []}, **f32()}, b"\0" * 8), "__metadata__ must map strings"),
        (raw({"__metadata__": ["a"], **f32()}, b"\0" * 8), "__metadata__ must map strings"),
        (raw({}), "no tensors in the file"),
        (raw({"__metadata__": {"a": "b"}}), "no tensors in the file"),
        (pickle.dumps({"w": [1.0, 2.0]}), "not a safetensors file"),
    ],
    ids=lambda x: x if isinstance(x, str) else "file",  # a file can be 100 kB: not an id
)
def test_check_refuses_malformed_files_naming_the_fault(as_source, data, message):
    # Execute / Assert
    with pytest.raises(InvalidModelFile, match=re.escape(message)):
        check(as_source(data))


def test_messages_quote_untrusted_names_and_values_briefly():
    # Prepare: a megabyte-long name and dtype.
    long_name = raw(f32(name="n" * 2**20), b"\0" * 4)
    long_dtype = raw({"w": {"dtype": "F" * 2**20, "shape": [1], "data_offsets": [0, 4]}})
    # Execute
    messages = []
    for data in (long_name, long_dtype):
        with pytest.raises(InvalidModelFile) as info:
            check(data)
        messages.append(str(info.value))
    # Assert
    assert all(len(m) < 250 and "..." in m for m in messages), messages


def test_structural_faults_are_called_not_a_safetensors_file():
    # Execute
    with pytest.raises(InvalidModelFile) as info:
        check(raw(f32(offsets=(0, 8)), b"\0" * 4))
    # Assert
    assert str(info.value) == (
        "not a safetensors file: tensor 'w': data_offsets [0, 8] go past the end of the data "
        "(4 bytes)"
    )


def test_a_dtype_numpy_cannot_hold_is_named():
    # Prepare: a valid bfloat16 file.
    data = raw({"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4)
    # Execute / Assert
    with pytest.raises(InvalidModelFile, match="tensor 'w': dtype BF16 has no numpy equivalent"):
        check(data)


def test_a_header_longer_than_the_limit_is_refused_before_it_is_read(tmp_path):
    # Prepare: a header of spaces (valid JSON padding) one byte past the limit, on disk.
    path = tmp_path / "long-header.safetensors"
    head = b"{}" + b" " * (MAX_HEADER_BYTES - 1)
    path.write_bytes(struct.pack("<Q", len(head)) + head)
    # Execute / Assert
    with pytest.raises(InvalidModelFile, match=f"exceeds the limit of {MAX_HEADER_BYTES} bytes"):
        check(path)


# -- values --


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.complex64])
def test_check_refuses_non_finite_values_naming_the_tensor_and_index(as_source, dtype, bad):
    # Prepare: a finite tensor first, then one with a single non-finite value.
    values = np.zeros((3, 4), dtype)
    values[2, 1] = bad
    data = encode({"a.fine": np.ones(5, dtype), "b.poisoned": values})
    # Execute
    with pytest.raises(InvalidModelFile) as info:
        check(as_source(data))
    # Assert
    assert re.fullmatch(
        r"tensor 'b.poisoned': non-finite value \S+ at index \[2, 1\]; "
        r"weights must be finite numbers",
        str(info.value),
    ), str(info.value)


def test_a_non_finite_value_past_the_first_chunk_is_found(as_source):
    # Prepare: one tensor three chunks long, its only NaN near the end.
    n = 3 * VALUE_CHUNK_BYTES // 4
    values = np.zeros(n, np.float32)
    values[n - 3] = np.nan
    # Execute / Assert
    with pytest.raises(
        InvalidModelFile, match=rf"tensor 'w': non-finite value nan at index \[{n - 3}\]"
    ):
        check(as_source(encode({"w": values})))


def test_integer_and_finite_extreme_values_pass(as_source):
    # Prepare: integers have no NaN, whatever their bits; the largest finite floats are fine.
    data = encode(
        {
            "i": np.array([-1, 2**31 - 1], np.int32),
            "u": np.full(4, 255, np.uint8),
            "big": np.array([np.finfo(np.float32).max, np.finfo(np.float32).min], np.float32),
            "tiny": np.array([np.finfo(np.float64).smallest_subnormal]),
        }
    )
    # Execute / Assert
    assert set(check(as_source(data))) == {"i", "u", "big", "tiny"}


def test_checking_a_large_file_holds_a_bounded_amount_in_memory(tmp_path):
    # Prepare: one 64 MiB tensor (a large layer), written to disk as an upload is.
    path = tmp_path / "large.safetensors"
    path.write_bytes(encode({"w": np.ones(16 * 1024 * 1024, np.float32)}))
    # Execute
    tracemalloc.start()
    try:
        check(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Assert: a few chunks at most, never the tensor.
    assert peak < 4 * VALUE_CHUNK_BYTES


def test_decode_validates_before_loading():
    # Execute / Assert
    with pytest.raises(InvalidModelFile, match="not a safetensors file: too short"):
        decode(b"1234")


# -- against a reference layout --


@pytest.fixture
def model() -> bytes:
    return encode({"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)})


def test_matching_reference_passes_with_codes_or_numpy_dtypes(model):
    # Execute / Assert
    check(model, reference={"w": ((4, 3), "F32"), "b": ([3], np.float32)})
    check(model, reference={"w": ((4, 3), np.dtype("<f4")), "b": ((3,), "float32")})


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ({"w": ((4, 3), "F32"), "b": ((4,), "F32")}, "tensor 'b': shape (3,) != (4,)"),
        ({"w": ((4, 3), "F16"), "b": ((3,), "F32")}, "tensor 'w': dtype F32 != F16"),
        ({"w": ((4, 3), "F32"), "b": ((3,), "F32"), "c": ((1,), "F32")}, "missing tensors: 'c'"),
        ({"w": ((4, 3), "F32")}, "unexpected tensors: 'b'"),
    ],
)
def test_mismatched_reference_names_the_difference(model, reference, message):
    # Execute / Assert
    with pytest.raises(InvalidModelFile) as info:
        check(model, reference=reference)
    assert str(info.value) == message


def test_reference_with_a_dtype_safetensors_lacks_is_a_caller_error(model):
    # Execute / Assert
    with pytest.raises(ValueError, match="reference dtype"):
        check(model, reference={"w": ((4, 3), "nonsense"), "b": ((3,), "F32")})
