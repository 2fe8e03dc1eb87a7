"""Bounded .npy reading: the header length is capped before the header is read, the dtype is checked
against an allow-list, and the array's bytes are taken from the file's byte budget before any is read.

Internal API (also used by the session loader):
- `ByteAllowance(limit, where)`: what is left of one file's `Budget.max_bytes`; `take(count, what)`
  charges decoded bytes and raises `InputError` when they do not fit.
- `read_npy_header(stream, where, kinds=...)` -> `NpyHeader` (shape, dtype, fortran_order), having
  read only the magic string and at most `MAX_HEADER_BYTES` of header.
- `read_npy(stream, available_bytes, where, kinds=..., max_elements=..., budget_setting=...,
  allowance=...)` -> the array, never an object array: header, dtype, element count and bytes are
  all checked before its data is read into one preallocated buffer.
- `count_nonzero(array)` and `check_finite(array, where)` work in fixed-size chunks, so counting
  the entries of a dense query never allocates a second array of its size.
"""

from __future__ import annotations

import ast
import dataclasses
import math

import numpy as np

from sdattn.inputs.example import InputError, _check_finite, _cut, _echo

# numpy's own default `max_header_size`: far more than any real header (a few hundred bytes).
MAX_HEADER_BYTES = 10_000
# Strings are only allowed where labels or names are expected; this caps one element
# (1,024 characters of a unicode array, or 4,096 bytes).
MAX_STRING_ITEMSIZE = 4_096
MAX_DIMENSIONS = 32
# Chunk for counting and checking dense arrays: 4M elements, a few MB of temporaries at most.
CHUNK_ELEMENTS = 1 << 22

_MAGIC = b"\x93NUMPY"
_KIND_WORDS = {"b": "bool", "i": "integer", "u": "unsigned integer", "f": "float",
               "U": "unicode string", "S": "byte string"}


def kinds_for_message(kinds: str) -> str:
    return " or ".join(_KIND_WORDS[kind] for kind in kinds) + " values"


class ByteAllowance:
    """The rest of one file's byte budget; every decoded byte is taken from it before it is read.

    Args:
        limit: the budget in bytes (`Budget.max_bytes`).
        where: the file name, for messages.
    """

    def __init__(self, limit: int, where: str):
        self.limit = int(limit)
        self.left = int(limit)
        self.where = where

    def take(self, count: int, what: str) -> None:
        """Charge `count` bytes for `what` (e.g. "array 'value'"), or raise `InputError`."""
        if count > self.left:
            used = self.limit - self.left
            raise InputError(
                f"{self.where}: {what} needs {count:,} bytes, over the byte budget of "
                f"{self.limit:,} ({used:,} already used); expected a smaller file, or raise "
                "Budget.max_bytes"
            )
        self.left -= count


@dataclasses.dataclass(frozen=True)
class NpyHeader:
    shape: tuple
    dtype: np.dtype
    fortran_order: bool
    header_bytes: int  # magic + length field + header: where the data starts

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def data_bytes(self) -> int:
        return self.count * self.dtype.itemsize


def _read_exact(stream, count: int, where: str) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise InputError(
            f"{where}: the file is truncated: expected {count:,} more bytes, found {len(data):,}"
        )
    return data


def read_npy_header(stream, where: str, *, kinds: str) -> NpyHeader:
    """Parse a .npy header without numpy's reader, which reads the whole declared length first.

    Args:
        stream: binary stream positioned at the magic string.
        where: name for messages, e.g. "data.npz, array 'value'".
        kinds: accepted dtype kinds ("b", "i", "u", "f", "U", "S").

    Returns:
        The `NpyHeader`; the stream is positioned at the first data byte.
    """
    def read_header_bytes(count: int) -> bytes:
        data = stream.read(count)
        if len(data) != count:
            raise InputError(f"{where}: not a valid .npy array (its header is truncated); expected "
                             "a file written by numpy.save")
        return data

    prefix = read_header_bytes(8)
    if prefix[:6] != _MAGIC:
        raise InputError(f"{where}: not a valid .npy array (no \\x93NUMPY magic string); expected a "
                         "file written by numpy.save")
    version = (prefix[6], prefix[7])
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise InputError(f"{where}: unsupported .npy format version {version}; expected 1.0-3.0")
    length_size = 2 if version == (1, 0) else 4
    header_length = int.from_bytes(read_header_bytes(length_size), "little")
    if header_length > MAX_HEADER_BYTES:
        raise InputError(
            f"{where}: declares a {header_length:,}-byte .npy header, over the limit of "
            f"{MAX_HEADER_BYTES:,} (numpy's max_header_size); expected a file written by numpy.save"
        )
    raw = read_header_bytes(header_length)
    try:
        text = raw.decode("utf-8" if version == (3, 0) else "latin1")
        header = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError) as error:
        raise InputError(f"{where}: not a valid .npy header ({type(error).__name__}); expected a "
                         "file written by numpy.save") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        keys = sorted(map(str, header)) if isinstance(header, dict) else type(header).__name__
        raise InputError(f"{where}: the .npy header holds {_echo(keys)}; expected the keys descr, "
                         "fortran_order and shape")
    shape, fortran_order, descr = header["shape"], header["fortran_order"], header["descr"]
    if (not isinstance(shape, tuple) or len(shape) > MAX_DIMENSIONS
            or not all(isinstance(size, int) and not isinstance(size, bool) for size in shape)):
        raise InputError(f"{where}: the .npy shape {_echo(shape)} is invalid; expected a tuple of "
                         f"at most {MAX_DIMENSIONS} integers")
    if any(size < 0 for size in shape):
        raise InputError(f"{where}: declares a negative shape {_echo(shape)}")
    if not isinstance(fortran_order, bool):
        raise InputError(f"{where}: fortran_order is {_echo(fortran_order)}; expected True or False")
    dtype = _checked_dtype(descr, where, kinds)
    return NpyHeader(shape=shape, dtype=dtype, fortran_order=fortran_order,
                     header_bytes=8 + length_size + header_length)


def _checked_dtype(descr, where: str, kinds: str) -> np.dtype:
    expected = kinds_for_message(kinds)
    if not isinstance(descr, str):
        # A list descr is a structured (record) dtype: fields may hide objects, never needed here.
        raise InputError(f"{where}: has a structured dtype {_echo(descr)}; expected {expected}")
    if descr.lstrip("<>|=").startswith("O"):
        raise InputError(
            f"{where}: holds Python objects (a pickled object array, dtype {_echo(descr)}); "
            "pickles are never loaded because they can run code; expected a numeric array"
        )
    try:
        dtype = np.dtype(descr)
    except Exception:  # TypeError, ValueError, SyntaxError for bad descr strings
        raise InputError(f"{where}: dtype {_echo(descr)} is not a numpy dtype; expected "
                         f"{expected}") from None
    if dtype.hasobject:
        raise InputError(
            f"{where}: holds Python objects (a pickled object array, dtype {_echo(descr)}); "
            "pickles are never loaded because they can run code; expected a numeric array"
        )
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in kinds:
        raise InputError(f"{where}: has dtype {_cut(dtype)}; expected {expected}")
    if dtype.kind in "US" and dtype.itemsize > MAX_STRING_ITEMSIZE:
        raise InputError(
            f"{where}: has dtype {_cut(descr)}, strings of {dtype.itemsize:,} bytes each; "
            f"expected at most {MAX_STRING_ITEMSIZE:,} bytes per string"
        )
    return dtype


def read_npy(stream, available_bytes: int, where: str, *, kinds: str, max_elements: int,
             budget_setting: str, allowance: ByteAllowance | None = None) -> np.ndarray:
    """Read one .npy array after checking its header: dtype, shape, element and byte budgets.

    Args:
        stream: binary stream positioned at the magic string (`read`, and `readinto` if it can).
        available_bytes: bytes from the stream position to the end of this array's file.
        where: name for messages, e.g. "data.npz, array 'value'".
        kinds: accepted dtype kinds ("b", "i", "u", "f", "U", "S").
        max_elements: budget for the element count.
        budget_setting: the Budget field named when `max_elements` is exceeded.
        allowance: the file's byte budget; the array's bytes are taken from it before reading.

    Returns:
        The array, backed by one writable buffer of exactly its size.
    """
    header = read_npy_header(stream, where, kinds=kinds)
    shape, dtype = header.shape, header.dtype
    count = header.count
    if count > max_elements:
        raise InputError(
            f"{where}: declares shape {_echo(shape)} = {count:,} elements, over the budget of "
            f"{max_elements:,}; expected a smaller array, or raise Budget.{budget_setting}"
        )
    byte_count = header.data_bytes
    remaining = available_bytes - header.header_bytes
    if byte_count > remaining:
        raise InputError(
            f"{where}: is truncated: its header declares shape {_echo(shape)} of {dtype} "
            f"({byte_count:,} bytes) but only {max(remaining, 0):,} bytes follow"
        )
    if allowance is not None:
        what = where.split(", ", 1)[1] if ", " in where else "the array"
        allowance.take(byte_count, f"{what} {_echo(shape)} of {_cut(dtype)}")
    buffer = bytearray(byte_count)
    _read_into(stream, buffer, where)
    array = np.frombuffer(buffer, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if header.fortran_order else "C")


def _read_into(stream, buffer: bytearray, where: str) -> None:
    view = memoryview(buffer)
    filled = 0
    reader = getattr(stream, "readinto", None)
    while filled < len(buffer):
        if reader is not None:
            got = reader(view[filled:filled + (1 << 24)])
        else:
            chunk = stream.read(min(len(buffer) - filled, 1 << 24))
            got = len(chunk)
            view[filled:filled + got] = chunk
        if not got:
            raise InputError(f"{where}: the file is truncated: expected {len(buffer) - filled:,} "
                             "more bytes")
        filled += got


def count_nonzero(array: np.ndarray) -> int:
    """Non-zero entries of `array`, counted chunk by chunk (no temporary of the array's size)."""
    flat = array.ravel(order="K")  # a view for the contiguous arrays the readers return
    return sum(int(np.count_nonzero(flat[start:start + CHUNK_ELEMENTS]))
               for start in range(0, flat.size, CHUNK_ELEMENTS))


def check_finite(array: np.ndarray, where: str) -> None:
    """Raise `InputError` naming the first NaN or Inf entry; checks `CHUNK_ELEMENTS` at a time."""
    if array.dtype.kind != "f":
        return
    flat = array.ravel(order="K")  # a view for the contiguous arrays the readers return
    for start in range(0, flat.size, CHUNK_ELEMENTS):
        finite = np.isfinite(flat[start:start + CHUNK_ELEMENTS])
        if not finite.all():
            break
    else:
        return
    _check_finite(array, where)  # the error path: its message names the entry's position
