"""Loading and saving inputs: .npz (scipy or sdattn bundle), .mtx, .csv and .npy, checked against a budget.
Every failure raises InputError; headers are checked before allocating, and nothing is ever unpickled."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import pathlib
import re
import warnings
import zipfile
from dataclasses import field
from typing import Any

import numpy as np
import scipy.sparse

from sdattn.inputs.example import (
    Budget,
    DEFAULT_BUDGET,
    Example,
    InputError,
    InputWarning,
    _canonical_coo,
    _check_finite,
    _check_index_range,
    _check_limit,
    _default_labels,
    _make_example,
    _sparse_rows_from_dense,
    _to_float32,
    validate_example,
)

from sdattn.inputs.generators import (
    _int_param,
    _json_ready,
    generate_inputs,
)

BUNDLE_FORMAT = "sdattn.bundle"
BUNDLE_VERSION = 1

# Keys generated for query-only files: Gaussian, with a fixed seed so the same file gives the same run.
GENERATED_KEYS_SEED = 0
GENERATED_KEYS_COUNT = 64

# Loaded files get default "q0".."k0" labels only up to this many rows: beyond it the label list
# would cost more memory than the arrays it describes, and no view can show that many anyway.
DEFAULT_LABEL_LIMIT = 100_000

# A .npz with more members than this is not a bundle or a scipy matrix; refusing it bounds the work.
_MAX_NPZ_MEMBERS = 1_000
_EXTRA_NAME = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_NUMERIC_KINDS = "biuf"

# ----------------------------------------------------------------------------------------------
# Reading files safely
# ----------------------------------------------------------------------------------------------


class _Source:
    """A seekable binary stream over a path or an uploaded file, with its display name and size."""

    def __init__(self, path_or_file, max_bytes: int):
        self._owned = None
        if isinstance(path_or_file, (str, os.PathLike)):
            path = pathlib.Path(path_or_file)
            self.name = path.name
            try:
                self.stream = self._owned = open(path, "rb")
            except OSError as error:
                raise InputError(
                    f"{path}: cannot open the file ({error.strerror or error}); expected a "
                    "readable file"
                ) from error
        elif hasattr(path_or_file, "read"):
            raw_name = getattr(path_or_file, "name", None)
            if not isinstance(raw_name, str) or not raw_name:
                raise InputError(
                    "the uploaded file has no name, so its format is unknown; expected a file "
                    "object with a .name ending in .npz, .npy, .csv or .mtx"
                )
            self.name = pathlib.PurePath(raw_name).name
            stream = path_or_file
            if not (hasattr(stream, "seekable") and stream.seekable()):
                # Read at most one byte past the limit: enough to tell the file is too big.
                data = stream.read(max_bytes + 1)
                if not isinstance(data, bytes):
                    raise InputError(f"{self.name}: the file object returned text; expected bytes")
                stream = io.BytesIO(data)
            self.stream = stream
        else:
            raise InputError(
                f"expected a path or a file object; received {type(path_or_file).__name__}"
            )
        suffixes = pathlib.PurePath(self.name).suffixes
        self.extension = suffixes[-1].lower() if suffixes else ""
        try:
            self.stream.seek(0, os.SEEK_END)
            self.size = self.stream.tell()
            self.stream.seek(0)
        except (OSError, ValueError) as error:
            self.close()
            raise InputError(f"{self.name}: cannot read the file ({error})") from error

    def close(self):
        if self._owned is not None:
            self._owned.close()


def _read_exact(stream, count: int, where: str) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise InputError(
            f"{where}: the file is truncated: expected {count:,} more bytes, found {len(data):,}"
        )
    return data


def _read_npy(stream, available_bytes: int, where: str, *, kinds: str, max_elements: int,
              budget_setting: str) -> np.ndarray:
    """Read one .npy array after checking its header: dtype kind, shape, budget and length.

    Args:
        stream: binary stream positioned at the magic string.
        available_bytes: bytes from the stream position to the end of this array's file.
        where: name for messages, e.g. "data.npz, member 'value'".
        kinds: accepted dtype kinds ("b", "i", "u", "f", "U", "S").
        max_elements: budget for the element count.
        budget_setting: the Budget field named in the message.

    Returns:
        The array (never an object array: those are refused before reading their bytes).
    """
    start = stream.tell()
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            # Version 3 only allows UTF-8 field names; numeric dtypes read the same as version 2.
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise InputError(f"{where}: unsupported .npy format version {version}; expected 1.0-3.0")
    except InputError:
        raise
    except Exception as error:  # numpy reports bad headers with several exception types
        raise InputError(
            f"{where}: not a valid .npy array ({error}); expected a file written by numpy.save"
        ) from error
    if dtype.hasobject:
        raise InputError(
            f"{where}: holds Python objects (a pickled object array, dtype {dtype}); pickles are "
            "never loaded because they can run code; expected a numeric array"
        )
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in kinds:
        raise InputError(f"{where}: has dtype {dtype}; expected {_kinds_for_message(kinds)}")
    if any(size < 0 for size in shape):
        raise InputError(f"{where}: declares a negative shape {shape}")
    count = math.prod(shape)
    if count > max_elements:
        raise InputError(
            f"{where}: declares shape {shape} = {count:,} elements, over the budget of "
            f"{max_elements:,}; expected a smaller array, or raise Budget.{budget_setting}"
        )
    byte_count = count * dtype.itemsize
    remaining = available_bytes - (stream.tell() - start)
    if byte_count > remaining:
        raise InputError(
            f"{where}: is truncated: its header declares shape {shape} of {dtype} "
            f"({byte_count:,} bytes) but only {max(remaining, 0):,} bytes follow"
        )
    data = _read_exact(stream, byte_count, where)
    array = np.frombuffer(data, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran_order else "C")


def _kinds_for_message(kinds: str) -> str:
    words = {"b": "bool", "i": "integer", "u": "unsigned integer", "f": "float",
             "U": "unicode string", "S": "byte string"}
    return " or ".join(words[kind] for kind in kinds) + " values"


# ----------------------------------------------------------------------------------------------
# Query loaders: each returns (indices [nnz, 3], values [nnz], shape (B, M, Dq), format, notes)
# ----------------------------------------------------------------------------------------------


def _check_query_shape(shape, where: str, budget: Budget):
    if any(size < 1 for size in shape):
        raise InputError(
            f"{where}: the query shape {tuple(shape)} is empty; expected at least one row and "
            "feature"
        )
    batch_size, num_queries, query_dim = shape
    _check_limit(batch_size * num_queries, budget.max_dense_floats, where, "query rows (B*M)",
                 "max_dense_floats")
    _check_limit(query_dim, budget.max_dense_floats, where, "query features (Dq)",
                 "max_dense_floats")


def _require_entries(nnz: int, where: str):
    if nnz == 0:
        raise InputError(f"{where}: the query has no stored entries; expected at least one non-zero")


def _load_npy_queries(source: _Source, budget: Budget):
    array = _read_npy(source.stream, source.size, source.name, kinds="biuf",
                      max_elements=budget.max_dense_floats, budget_setting="max_dense_floats")
    if array.ndim not in (2, 3):
        raise InputError(
            f"{source.name}: a query array of shape {array.shape}; expected 2-D [M, Dq] or "
            "3-D [B, M, Dq]"
        )
    dense = array[None] if array.ndim == 2 else array
    _check_query_shape(dense.shape, source.name, budget)
    if dense.dtype.kind == "f":
        _check_finite(array, source.name)
    dense = _to_float32(dense, source.name)
    indices, values = _sparse_rows_from_dense(dense)
    _require_entries(indices.shape[0], source.name)
    _check_limit(indices.shape[0], budget.max_nonzeros, source.name, "non-zeros", "max_nonzeros")
    note = (
        f"{source.name}: the dense query array {list(array.shape)} was converted to a sparse "
        f"query with {indices.shape[0]:,} non-zeros (density {indices.shape[0] / dense.size:.1%})"
    )
    warnings.warn(note, InputWarning, stacklevel=4)
    return indices, values, dense.shape, "npy-dense", [note]


def _load_mtx_queries(source: _Source, budget: Budget):
    """Matrix Market queries, parsed here rather than by `scipy.io.mmread`.

    scipy 1.17's C++ reader segfaults on some malformed files (e.g. a last value "5E-" at the
    end of the file), which would take the whole app down; this reader accepts the same
    coordinate/array, real/integer/pattern, general/symmetric/skew-symmetric files.
    """
    name = source.name
    lines = _decode_text(source, _csv_byte_limit(max(3 * budget.max_nonzeros, budget.max_dense_floats)),
                         comment=None)
    expected_banner = "'%%MatrixMarket matrix coordinate real general'"
    if not lines or lines[0][0] != 1 or not lines[0][1].lower().startswith("%%matrixmarket"):
        raise InputError(
            f"{name}: not a Matrix Market file (line 1 is not a %%MatrixMarket banner); expected "
            f"a banner such as {expected_banner}"
        )
    banner = lines[0][1].lower().split()
    if (len(banner) != 5 or banner[1] != "matrix" or banner[2] not in ("coordinate", "array")
            or banner[4] not in ("general", "symmetric", "skew-symmetric", "hermitian")):
        raise InputError(
            f"{name}, line 1: banner {lines[0][1][:80]!r} is not a Matrix Market matrix banner; "
            f"expected e.g. {expected_banner}"
        )
    layout, field_kind, symmetry = banner[2:]
    if field_kind not in ("real", "integer", "pattern") or (layout, field_kind) == ("array", "pattern"):
        raise InputError(
            f"{name}, line 1: has {layout} field '{field_kind}'; expected real, integer or pattern "
            "values"
        )
    if symmetry == "hermitian" or (layout == "array" and symmetry != "general"):
        raise InputError(
            f"{name}, line 1: '{layout} {symmetry}' matrices are not supported; expected "
            "'coordinate' with general/symmetric/skew-symmetric, or 'array general'"
        )
    body = [(number, line) for number, line in lines[1:] if not line.lstrip().startswith("%")]
    sizes = "rows columns entries" if layout == "coordinate" else "rows columns"
    if not body:
        raise InputError(f"{name}: has no size line after the banner; expected '{sizes}'")
    size_tokens = body[0][1].split()
    if len(size_tokens) != len(sizes.split()) or not all(
        re.fullmatch(r"[0-9]+", token) for token in size_tokens
    ):
        raise InputError(
            f"{name}, line {body[0][0]}: the size line {body[0][1][:80]!r} is invalid; expected "
            f"'{sizes}' as non-negative integers"
        )
    rows, columns = int(size_tokens[0]), int(size_tokens[1])
    shape = (1, rows, columns)
    _check_query_shape(shape, name, budget)
    entry_lines = body[1:]
    if layout == "array":
        _check_limit(rows * columns, budget.max_dense_floats, name, "dense entries",
                     "max_dense_floats")
        declared = rows * columns
    else:
        declared = int(size_tokens[2])
        # Symmetric files store one triangle; mirroring can double the entries.
        stored = declared * (1 if symmetry == "general" else 2)
        _check_limit(stored, budget.max_nonzeros, name, "declared entries", "max_nonzeros")
    if declared == 0:
        raise InputError(f"{name}: the query has no stored entries; expected at least one non-zero")
    if len(entry_lines) != declared:
        raise InputError(
            f"{name}: the size line declares {declared:,} entries but {len(entry_lines):,} entry "
            "lines follow; the file is truncated or has extra lines"
        )
    width = 1 if layout == "array" else (2 if field_kind == "pattern" else 3)
    table = _parse_numeric_lines(
        entry_lines, name, columns=(width,), delimiter=None, allow_header=False,
        columns_hint="(row col value, 1-based)" if width == 3 else "",
        max_values=width * max(budget.max_nonzeros, budget.max_dense_floats),
        budget_setting="max_nonzeros",
    )
    if layout == "array":
        values = table[:, 0]
        _check_float32_range(values, entry_lines, name)
        dense = values.reshape(columns, rows).T  # array layout is column-major
        indices, stored_values = _sparse_rows_from_dense(dense[None].astype(np.float32))
        _require_entries(indices.shape[0], name)
        note = (
            f"{name}: the dense Matrix Market array [{rows}, {columns}] was converted to a "
            f"sparse query with {indices.shape[0]:,} non-zeros"
        )
        warnings.warn(note, InputWarning, stacklevel=4)
        return indices, stored_values, shape, "mtx", [note]
    row_index = _checked_index_column(table[:, 0], entry_lines, name, "row", low=1, high=rows)
    column_index = _checked_index_column(table[:, 1], entry_lines, name, "column", low=1,
                                         high=columns)
    values = np.ones(table.shape[0]) if field_kind == "pattern" else table[:, 2]
    _check_float32_range(values, entry_lines, name)
    row_index, column_index = row_index - 1, column_index - 1
    if symmetry != "general":
        mirrored = row_index != column_index
        sign = -1.0 if symmetry == "skew-symmetric" else 1.0
        row_index, column_index, values = (
            np.concatenate([row_index, column_index[mirrored]]),
            np.concatenate([column_index, row_index[mirrored]]),
            np.concatenate([values, sign * values[mirrored]]),
        )
    indices = np.stack([np.zeros_like(row_index), row_index, column_index], axis=1)
    indices, stored_values, merged = _canonical_coo(indices, values, name)
    notes = [f"{name}: {merged} duplicate entries were summed"] if merged else []
    return indices, stored_values, shape, "mtx", notes


def _decode_text(source: _Source, max_bytes: int, *, comment: str | None = "#"):
    """The non-blank lines of a text file (less `comment` lines) with 1-based line numbers."""
    if source.size > max_bytes:
        raise InputError(
            f"{source.name}: is {source.size:,} bytes, over the {max_bytes:,} bytes the budget "
            "allows for a text file; expected a smaller file, or raise the Budget"
        )
    raw = _read_exact(source.stream, source.size, source.name)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise InputError(
            f"{source.name}, line {line}: the file is not UTF-8 text (byte {error.start}); "
            "expected a text file"
        ) from error
    return [
        (number, line)
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and (comment is None or not line.lstrip().startswith(comment))
    ]


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _parse_numeric_lines(
    lines, name: str, *, columns: tuple[int, ...] | None, max_values: int, budget_setting: str,
    max_rows: int | None = None, delimiter: str | None = ",", allow_header: bool = True,
    columns_hint: str = "",
) -> np.ndarray:
    """Parse numeric text lines into a float64 table; `lines` is trimmed of a header in place.

    Args:
        lines: list of (line number, text), modified in place: a skipped header is removed, so
            `lines[row]` is the source line of table row `row`.
        name: file name for messages.
        columns: accepted column counts, or None for any (consistent) count.
        max_values: budget on rows * columns.
        budget_setting: the Budget field named in messages.
        max_rows: optional budget on the number of rows.
        delimiter: "," for csv, None for whitespace (Matrix Market).
        allow_header: skip a first line with no numeric token (e.g. "row,col,value").
        columns_hint: what the columns mean, for the message.

    Returns:
        float64 `[rows, columns]`, all finite.
    """
    if allow_header and lines and not any(_is_number(t) for t in lines[0][1].split(delimiter)):
        del lines[0]
    if not lines:
        raise InputError(f"{name}: has no data rows; expected lines of numbers")
    width = len(lines[0][1].split(delimiter))
    if columns is not None and width not in columns:
        raise InputError(
            f"{name}, line {lines[0][0]}: found {width} columns; expected "
            + " or ".join(str(count) for count in columns) + f" columns {columns_hint}".rstrip()
        )
    if max_rows is not None:
        _check_limit(len(lines), max_rows, name, "entries (rows)", budget_setting)
    _check_limit(len(lines) * width, max_values, name, "values", budget_setting)
    try:
        table = np.loadtxt([line for _, line in lines], delimiter=delimiter, dtype=np.float64,
                           ndmin=2, comments=None)
    except ValueError as error:
        raise InputError(_locate_text_problem(lines, width, name, error, delimiter)) from error
    if table.shape != (len(lines), width):
        raise InputError(f"{name}: rows have {table.shape[1]} columns; expected {width}")
    bad = np.argwhere(~np.isfinite(table))
    if bad.size:
        row, column = (int(x) for x in bad[0])
        raise InputError(
            f"{name}, line {lines[row][0]}, column {column + 1}: {table[row, column]} is not a "
            "finite number; expected no NaN or Inf"
        )
    return table


def _locate_text_problem(lines, width: int, name: str, error: Exception, delimiter) -> str:
    # numpy's row numbers skip blank lines and the header; find the real line for the message.
    for number, line in lines:
        tokens = line.split(delimiter)
        if len(tokens) != width:
            return f"{name}, line {number}: found {len(tokens)} columns; expected {width}"
        for column, token in enumerate(tokens, 1):
            if not _is_number(token):
                return (f"{name}, line {number}, column {column}: {token.strip()[:40]!r} is not a "
                        "number; expected numeric values")
    return f"{name}: cannot parse the numbers ({error}); expected numeric values"


def _checked_index_column(values: np.ndarray, lines, name: str, label: str, *, low: int,
                          high: int, high_reason: str = "") -> np.ndarray:
    """Integer indices from a float column: whole numbers in [low, high], else the line is named."""
    bad = np.flatnonzero((values < low) | (values > high) | (values != np.floor(values)))
    if bad.size:
        row = int(bad[0])
        raise InputError(
            f"{name}, line {lines[row][0]}: {label} index {values[row]:g} is invalid; expected an "
            f"integer from {low} to {high:,}{high_reason}"
        )
    return values.astype(np.int64)


def _check_float32_range(values: np.ndarray, lines, name: str):
    too_large = np.flatnonzero(np.abs(values) > np.finfo(np.float32).max)
    if too_large.size:
        row = int(too_large[0])
        raise InputError(
            f"{name}, line {lines[row][0]}: value {values[row]:g} overflows float32; expected "
            "magnitudes below 3.4e38"
        )


def _csv_byte_limit(values: int) -> int:
    # 64 bytes per allowed value is far beyond any sane number formatting; bigger is not a csv we want.
    return 64 * values + 4096


def _load_csv_queries(source: _Source, budget: Budget):
    name = source.name
    lines = _decode_text(source, _csv_byte_limit(4 * budget.max_nonzeros))
    table = _parse_numeric_lines(
        lines, name, columns=(3, 4), columns_hint="(row,col,value or batch,row,col,value)",
        max_values=4 * budget.max_nonzeros, budget_setting="max_nonzeros",
        max_rows=budget.max_nonzeros,
    )
    if table.shape[1] == 3:
        table = np.concatenate([np.zeros((table.shape[0], 1)), table], axis=1)
    # Indices past the budget would make the inferred query shape itself too big.
    largest = budget.max_dense_floats - 1
    coordinates = np.stack(
        [_checked_index_column(table[:, column], lines, name, label, low=0, high=largest,
                               high_reason=" (raise Budget.max_dense_floats for larger shapes)")
         for column, label in enumerate(("batch", "row", "col"))],
        axis=1,
    )
    _check_float32_range(table[:, 3], lines, name)
    shape = tuple(int(size) + 1 for size in coordinates.max(axis=0))
    _check_query_shape(shape, name, budget)
    indices, values, merged = _canonical_coo(coordinates, table[:, 3], name)
    notes = [f"{name}: the query shape {list(shape)} was inferred from the largest indices"]
    if merged:
        notes.append(f"{name}: {merged} duplicate entries were summed")
    return indices, values, shape, "csv-coo", notes


def _load_npz(source: _Source, budget: Budget):
    """Open a .npz and read the headers of all members; returns (zipfile, {member: name})."""
    try:
        archive = zipfile.ZipFile(source.stream)
        names = archive.namelist()
    except Exception as error:  # BadZipFile, OSError, ValueError, ... for damaged archives
        raise InputError(
            f"{source.name}: not a readable .npz archive ({error}); expected a file written by "
            "numpy.savez, scipy.sparse.save_npz or sdattn.save_inputs"
        ) from error
    if len(names) > _MAX_NPZ_MEMBERS:
        raise InputError(
            f"{source.name}: has {len(names):,} members; expected a bundle or sparse matrix"
        )
    members = {member[:-4]: member for member in names if member.endswith(".npy")}
    if not members:
        raise InputError(
            f"{source.name}: holds no .npy arrays; expected an sdattn bundle or a scipy.sparse "
            "matrix"
        )
    return archive, members


def _npz_member(archive, members, key, source_name, *, kinds, max_elements, budget_setting):
    where = f"{source_name}, array '{key}'"
    info = archive.getinfo(members[key])
    with archive.open(info) as stream:
        return _read_npy(stream, info.file_size, where, kinds=kinds, max_elements=max_elements,
                         budget_setting=budget_setting)


def _load_scipy_npz_queries(archive, members, source: _Source, budget: Budget):
    name = source.name
    nnz_limit = budget.max_nonzeros

    def member(key, kinds, limit, setting="max_nonzeros"):
        if key not in members:
            raise InputError(f"{name}: the scipy sparse layout is missing array '{key}'")
        return _npz_member(archive, members, key, name, kinds=kinds, max_elements=limit,
                           budget_setting=setting)

    sparse_format = member("format", "SU", 16)
    try:
        sparse_format = str(sparse_format.item().decode("ascii") if sparse_format.dtype.kind == "S"
                            else sparse_format.item())
    except (UnicodeDecodeError, ValueError) as error:
        raise InputError(f"{name}: array 'format' is not a format name") from error
    if sparse_format not in ("csr", "csc", "coo"):
        raise InputError(
            f"{name}: sparse format '{sparse_format[:16]}' is not supported; expected csr, csc or "
            "coo (convert with .tocsr() before save_npz)"
        )
    shape_array = member("shape", "iu", 3)
    if shape_array.ndim != 1 or shape_array.size not in (2, 3):
        raise InputError(
            f"{name}: array 'shape' is {shape_array.tolist()}; expected (M, Dq) or (B, M, Dq)"
        )
    matrix_shape = tuple(int(size) for size in shape_array)
    shape = (1, *matrix_shape) if len(matrix_shape) == 2 else matrix_shape
    _check_query_shape(shape, name, budget)
    if len(matrix_shape) == 3 and sparse_format != "coo":
        raise InputError(f"{name}: a 3-D shape needs the coo format; found {sparse_format}")
    data = member("data", "biuf", nnz_limit)
    if data.ndim != 1:
        raise InputError(f"{name}: array 'data' has shape {data.shape}; expected 1-D")
    if data.dtype.kind == "f":
        _check_finite(data, f"{name}, array 'data'")
    nnz = data.shape[0]

    def index_array(key, length, upper, limit=nnz_limit):
        array = member(key, "iu", limit)
        if array.ndim != 1 or array.shape[0] != length:
            raise InputError(f"{name}: array '{key}' has shape {array.shape}; expected [{length}]")
        bad = np.flatnonzero((array < 0) | (array >= upper))
        if bad.size:
            position = int(bad[0])
            raise InputError(
                f"{name}, array '{key}' entry {position}: {int(array[position])} is out of range; "
                f"expected 0 <= value < {upper}"
            )
        return array.astype(np.int64)

    num_rows, num_columns = matrix_shape[-2], matrix_shape[-1]
    batch = np.zeros(nnz, dtype=np.int64)
    if sparse_format in ("csr", "csc"):
        outer, inner = (num_rows, num_columns) if sparse_format == "csr" else (num_columns, num_rows)
        pointer = index_array("indptr", outer + 1, nnz + 1, limit=budget.max_dense_floats + 1)
        if pointer[0] != 0 or pointer[-1] != nnz or (np.diff(pointer) < 0).any():
            raise InputError(
                f"{name}: array 'indptr' is not a valid pointer array; expected it to start at 0, "
                f"never decrease, and end at nnz={nnz}"
            )
        minor = index_array("indices", nnz, inner)
        major = np.repeat(np.arange(outer, dtype=np.int64), np.diff(pointer))
        rows, columns = (major, minor) if sparse_format == "csr" else (minor, major)
    elif "coords" in members:
        coords = member("coords", "iu", len(matrix_shape) * nnz_limit)
        if coords.shape != (len(matrix_shape), nnz):
            raise InputError(
                f"{name}: array 'coords' has shape {coords.shape}; expected "
                f"{[len(matrix_shape), nnz]}"
            )
        coords = coords.astype(np.int64)
        for axis, size in enumerate(matrix_shape):
            bad = np.flatnonzero((coords[axis] < 0) | (coords[axis] >= size))
            if bad.size:
                raise InputError(
                    f"{name}, array 'coords' axis {axis} entry {int(bad[0])}: "
                    f"{int(coords[axis, bad[0]])} is out of range; expected 0 <= value < {size}"
                )
        if len(matrix_shape) == 3:
            batch, rows, columns = coords
        else:
            rows, columns = coords
    else:
        rows = index_array("row", nnz, num_rows)
        columns = index_array("col", nnz, num_columns)
    indices = np.stack([batch, rows, columns], axis=1)
    indices, values, merged = _canonical_coo(indices, data, name)
    _require_entries(indices.shape[0], name)
    notes = [f"{name}: {merged} duplicate entries were summed"] if merged else []
    return indices, values, shape, f"scipy-{sparse_format}", notes


# ----------------------------------------------------------------------------------------------
# Keys
# ----------------------------------------------------------------------------------------------


def _load_keys(keys, batch_size: int, query_dim: int, budget: Budget, num_generated_keys: int):
    """Dense keys [B, N, D] from an array, a .npy / dense .csv file, or the fixed-seed generator."""
    if keys is None:
        num_generated_keys = _int_param("num_generated_keys", num_generated_keys)
        _check_limit(batch_size * num_generated_keys * query_dim, budget.max_dense_floats,
                     "the generated keys", "dense floats", "max_dense_floats")
        rng = np.random.default_rng(GENERATED_KEYS_SEED)
        value = rng.standard_normal((batch_size, num_generated_keys, query_dim), dtype=np.float32)
        description = {"generator": "random", "seed": GENERATED_KEYS_SEED,
                       "params": {"num_keys": num_generated_keys, "value_dim": query_dim,
                                  "distribution": "standard normal"}}
        return value, description, None
    if isinstance(keys, np.ndarray):
        name = "keys array"
        if keys.dtype.kind not in _NUMERIC_KINDS:
            raise InputError(f"{name}: has dtype {keys.dtype}; expected a numeric array")
        _check_limit(keys.size, budget.max_dense_floats, name, "dense floats", "max_dense_floats")
        array = keys
        description = {"array": list(keys.shape)}
    else:
        source = _Source(keys, _csv_byte_limit(budget.max_dense_floats))
        name = source.name
        try:
            if source.extension == ".npy":
                array = _read_npy(source.stream, source.size, name, kinds="biuf",
                                  max_elements=budget.max_dense_floats,
                                  budget_setting="max_dense_floats")
            elif source.extension == ".csv":
                lines = _decode_text(source, _csv_byte_limit(budget.max_dense_floats))
                array = _parse_numeric_lines(lines, name, columns=None,
                                             max_values=budget.max_dense_floats,
                                             budget_setting="max_dense_floats")
            else:
                raise InputError(
                    f"{name}: unknown key file type '{source.extension or '(none)'}'; expected "
                    ".npy or a dense .csv"
                )
        finally:
            source.close()
        description = {"file": name}
    if array.ndim not in (2, 3) or 0 in array.shape:
        raise InputError(
            f"{name}: keys of shape {array.shape}; expected a non-empty [N, D] or [B, N, D] array"
        )
    value = array[None] if array.ndim == 2 else array
    if value.dtype.kind == "f":
        _check_finite(value, name)
    value = _to_float32(value, name)
    note = None
    if value.shape[0] != batch_size:
        if value.shape[0] != 1:
            raise InputError(
                f"{name}: keys have batch size {value.shape[0]} but the queries have {batch_size}; "
                "expected the same B, or one set of keys for all"
            )
        _check_limit(batch_size * value[0].size, budget.max_dense_floats, name,
                     "dense floats after repeating per batch item", "max_dense_floats")
        value = np.repeat(value, batch_size, axis=0)
        note = f"{name}: the same keys are used for all {batch_size} batch items"
    return value, description, note


# ----------------------------------------------------------------------------------------------
# Bundles
# ----------------------------------------------------------------------------------------------


def _json_array(payload) -> np.ndarray:
    return np.frombuffer(json.dumps(payload, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)


def _array_json(array: np.ndarray, where: str):
    if array.ndim != 1:
        raise InputError(f"{where}: has shape {array.shape}; expected 1-D UTF-8 JSON bytes")
    try:
        return json.loads(array.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise InputError(f"{where}: is not valid UTF-8 JSON ({error})") from error


def save_inputs(example: Example, path_or_file, extras: dict[str, Any] | None = None) -> None:
    """Write an example (and optional extra arrays) as an sdattn bundle (.npz, no pickles).

    The bundle layout is documented in the README ("Input formats"). `load_inputs` reads it back
    exactly: same arrays, dtypes, labels and metadata.

    Args:
        example: a valid example (checked with `validate_example`).
        path_or_file: a path ending in .npz, or a writable binary file object.
        extras: optional named payloads stored beside the example, e.g. a run's config and
            results. A numpy array (numeric, bool or string dtype) is stored as member
            `extra.<name>`; any other JSON-serialisable value as JSON in `extra_json.<name>`.
            Read them back with `load_inputs(..., return_extras=True)`.

    Raises:
        InputError: invalid or empty example, non-JSON metadata, bad extra name, or an
            object-dtype extra.
    """
    validate_example(example)
    _require_entries(example.nnz, "the example")
    try:
        metadata_json = _json_array(_json_ready(example.metadata))
    except (TypeError, ValueError) as error:
        raise InputError(
            f"metadata is not JSON-serialisable ({error}); expected plain JSON values"
        ) from error
    arrays = {
        "bundle_info": _json_array({"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION}),
        "query_indices": np.asarray(example.query_indices, dtype=np.int64),
        "query_values": np.asarray(example.query_values, dtype=np.float32),
        "query_shape": np.asarray(example.query_shape, dtype=np.int64),
        "value": np.asarray(example.value, dtype=np.float32),
        "query_mask": np.asarray(example.query_mask, dtype=bool),
        "value_mask": np.asarray(example.value_mask, dtype=bool),
        "metadata": metadata_json,
    }
    if example.query_labels is not None:
        arrays["query_labels"] = _json_array(list(example.query_labels))
    if example.key_labels is not None:
        arrays["key_labels"] = _json_array(list(example.key_labels))
    if example.ground_truth is not None:
        arrays["ground_truth"] = np.asarray(example.ground_truth, dtype=np.int32)
    for extra_name, payload in (extras or {}).items():
        if not isinstance(extra_name, str) or not _EXTRA_NAME.match(extra_name):
            raise InputError(
                f"extra name {extra_name!r} is invalid; expected letters, digits, '_', '-' or '.'"
            )
        if isinstance(payload, np.ndarray):
            if payload.dtype.kind not in "biufcUS" or payload.dtype.fields is not None:
                raise InputError(
                    f"extra '{extra_name}' has dtype {payload.dtype}; expected a numeric, bool or "
                    "string array (object arrays would need pickles)"
                )
            arrays[f"extra.{extra_name}"] = payload
        else:
            try:
                arrays[f"extra_json.{extra_name}"] = _json_array(_json_ready(payload))
            except (TypeError, ValueError) as error:
                raise InputError(
                    f"extra '{extra_name}' is neither a numpy array nor JSON-serialisable ({error})"
                ) from error
    if isinstance(path_or_file, (str, os.PathLike)):
        path = pathlib.Path(path_or_file)
        if path.suffix.lower() != ".npz":
            raise InputError(f"{path}: a bundle path must end in .npz")
        with open(path, "wb") as stream:
            np.savez_compressed(stream, **arrays)
    else:
        np.savez_compressed(path_or_file, **arrays)


def _load_bundle(archive, members, source: _Source, budget: Budget):
    name = source.name

    def member(key, kinds, limit, setting="max_dense_floats", required=True):
        if key not in members:
            if required:
                raise InputError(f"{name}: the sdattn bundle is missing array '{key}'")
            return None
        return _npz_member(archive, members, key, name, kinds=kinds, max_elements=limit,
                           budget_setting=setting)

    json_limit = 8 * budget.max_dense_floats  # bytes of label / metadata JSON
    info = _array_json(member("bundle_info", "u", 4096), f"{name}, array 'bundle_info'")
    if not isinstance(info, dict) or info.get("format") != BUNDLE_FORMAT:
        raise InputError(f"{name}: array 'bundle_info' does not describe an sdattn bundle")
    if not isinstance(info.get("version"), int) or info["version"] > BUNDLE_VERSION:
        raise InputError(
            f"{name}: bundle version {info.get('version')!r} is newer than this sdattn reads "
            f"(up to {BUNDLE_VERSION}); expected a bundle from this version"
        )
    shape_array = member("query_shape", "iu", 3)
    if shape_array.shape != (3,):
        raise InputError(f"{name}: array 'query_shape' is {shape_array.tolist()}; expected [B, M, Dq]")
    shape = tuple(int(size) for size in shape_array)
    _check_query_shape(shape, name, budget)
    indices = member("query_indices", "iu", 3 * budget.max_nonzeros, "max_nonzeros")
    values = member("query_values", "biuf", budget.max_nonzeros, "max_nonzeros")
    value = member("value", "biuf", budget.max_dense_floats)
    query_mask = member("query_mask", "b", budget.max_dense_floats)
    value_mask = member("value_mask", "b", budget.max_dense_floats)
    truth = member("ground_truth", "iu", budget.max_dense_floats, required=False)
    metadata = _array_json(member("metadata", "u", json_limit), f"{name}, array 'metadata'")
    labels = {}
    for key in ("query_labels", "key_labels"):
        raw = member(key, "u", json_limit, required=False)
        labels[key] = None if raw is None else _array_json(raw, f"{name}, array '{key}'")
    if indices.ndim != 2 or indices.shape[1:] != (3,):
        raise InputError(f"{name}: array 'query_indices' has shape {indices.shape}; expected [nnz, 3]")
    if values.shape != (indices.shape[0],):
        raise InputError(
            f"{name}: array 'query_values' has shape {values.shape}; expected [{indices.shape[0]}]"
        )
    if value.ndim != 3:
        raise InputError(f"{name}: array 'value' has shape {value.shape}; expected [B, N, D]")
    if values.dtype.kind == "f":
        _check_finite(values, f"{name}, array 'query_values'")
    if value.dtype.kind == "f":
        _check_finite(value, f"{name}, array 'value'")
    _check_index_range(indices, shape, f"{name}, array 'query_indices'", ("b", "m", "d"))
    notes = []
    canonical_indices, canonical_values, merged = _canonical_coo(indices, values, name)
    if merged or not np.array_equal(canonical_indices, indices):
        summed = f" and {merged} duplicates summed" if merged else ""
        notes.append(f"{name}: query entries were sorted{summed}")
    if truth is not None and truth.ndim == 3:
        bad = np.argwhere((truth < -1) | (truth >= max(value.shape[1], 0)))
        if bad.size:
            position = [int(x) for x in bad[0]]
            raise InputError(
                f"{name}, array 'ground_truth' entry {position}: {int(truth[tuple(position)])} is "
                f"out of range; expected -1 or a key position in [0, {value.shape[1]})"
            )
    if not isinstance(metadata, dict):
        raise InputError(f"{name}: array 'metadata' is not a JSON object")
    if notes:
        metadata.setdefault("notes", []).extend(notes)
    example = Example(
        query_indices=canonical_indices,
        query_values=canonical_values,
        query_shape=shape,
        value=_to_float32(value, f"{name}, array 'value'"),
        query_mask=query_mask.astype(bool),
        value_mask=value_mask.astype(bool),
        query_labels=labels["query_labels"],
        key_labels=labels["key_labels"],
        ground_truth=None if truth is None else truth.astype(np.int32),
        metadata=metadata,
    )
    try:
        validate_example(example, budget=budget)
    except InputError as error:
        raise InputError(f"{name}: {error}") from error
    _require_entries(example.nnz, name)
    extras = {}
    for key in members:
        if key.startswith("extra."):
            extras[key[len("extra."):]] = np.array(member(key, "biufcUS", budget.max_dense_floats))
        elif key.startswith("extra_json."):
            extras[key[len("extra_json."):]] = _array_json(
                member(key, "u", json_limit), f"{name}, array '{key}'"
            )
    return example, extras


# ----------------------------------------------------------------------------------------------
# The public loader
# ----------------------------------------------------------------------------------------------


def load_inputs(
    path_or_file,
    *,
    keys=None,
    budget: Budget | None = None,
    num_generated_keys: int = GENERATED_KEYS_COUNT,
    return_extras: bool = False,
):
    """Load an example from a file; every problem raises `InputError`, and nothing is unpickled.

    Formats, by extension (see the README section "Input formats"):
    - `.npz`: an sdattn bundle (from `save_inputs`), or a `scipy.sparse.save_npz` matrix
      (csr, csc or coo; 2-D means B=1, a 3-D coo array is [B, M, Dq]) holding the queries.
    - `.mtx`: Matrix Market queries (as `scipy.io.mmwrite` writes them), B=1.
    - `.csv`: COO triples `row,col,value` (or `batch,row,col,value`), header optional; the query
      shape is inferred from the largest indices.
    - `.npy`: a dense query array [M, Dq] or [B, M, Dq], converted to sparse with an
      `InputWarning` and a note in `metadata["notes"]`.

    Sizes are checked against the budget from headers before anything large is allocated.

    Args:
        path_or_file: a path, or a binary file object with a `.name` (e.g. Streamlit's
            UploadedFile).
        keys: dense keys for query-only formats: an array [N, D] or [B, N, D], or a path / file
            object of a `.npy` or dense `.csv` (one key per line). None generates
            `num_generated_keys` standard-normal keys of size Dq with a fixed seed, recorded in
            `metadata["keys"]`. Ignored (with a warning) for bundles, which carry their keys.
        budget: size limits; default `Budget()` (5M non-zeros, 50M dense floats).
        num_generated_keys: N for generated keys.
        return_extras: also return the bundle's extra payloads (see `save_inputs`).

    Returns:
        The `Example`, or `(example, extras)` when `return_extras` is True (`extras` is empty for
        non-bundle files).

    Raises:
        InputError: an unknown extension, an unreadable, truncated or malicious file, bad values
            or indices, empty inputs, or sizes over the budget.
    """
    if budget is None:
        budget = DEFAULT_BUDGET
    elif not isinstance(budget, Budget):
        raise InputError(f"budget must be an sdattn Budget; received {type(budget).__name__}")
    source = None
    try:
        source = _Source(path_or_file, max(_csv_byte_limit(4 * budget.max_nonzeros),
                                           16 * budget.max_dense_floats))
        example, extras = _load_from_source(source, keys, budget, num_generated_keys)
    except InputError:
        raise
    except Exception as error:  # a bad file must never crash the app: anything else is an input error
        name = getattr(source, "name", "the input")
        raise InputError(
            f"{name}: cannot read the file ({type(error).__name__}: {error}); expected a "
            f"valid {getattr(source, 'extension', '') or 'input'} file"
        ) from error
    finally:
        if source is not None:
            source.close()
    return (example, extras) if return_extras else example


_QUERY_LOADERS = {".npy": _load_npy_queries, ".mtx": _load_mtx_queries, ".csv": _load_csv_queries}


def _load_from_source(source: _Source, keys, budget: Budget, num_generated_keys: int):
    name = source.name
    if source.extension not in (".npz", *_QUERY_LOADERS):
        raise InputError(
            f"{name}: unknown file type '{source.extension or '(none)'}'; expected .npz (bundle or "
            "scipy.sparse), .mtx (Matrix Market), .csv (row,col,value triples) or .npy (dense array)"
        )
    if source.size == 0:
        raise InputError(f"{name}: the file is empty")
    if source.extension == ".npz":
        archive, members = _load_npz(source, budget)
        if "bundle_info" in members:
            if keys is not None:
                warnings.warn(f"{name}: a bundle carries its own keys; `keys` was ignored",
                              InputWarning, stacklevel=3)
            return _load_bundle(archive, members, source, budget)
        if "format" not in members:
            raise InputError(
                f"{name}: holds arrays {sorted(members)[:10]}; expected an sdattn bundle (with "
                "'bundle_info') or a scipy.sparse.save_npz matrix (with 'format', 'shape', 'data')"
            )
        indices, values, shape, query_format, notes = _load_scipy_npz_queries(
            archive, members, source, budget
        )
    else:
        indices, values, shape, query_format, notes = _QUERY_LOADERS[source.extension](source, budget)
    _check_limit(indices.shape[0], budget.max_nonzeros, name, "non-zeros", "max_nonzeros")
    value, keys_description, keys_note = _load_keys(keys, shape[0], shape[2], budget,
                                                    num_generated_keys)
    if keys_note:
        notes.append(keys_note)
    num_queries, num_keys = shape[1], value.shape[1]
    metadata = {
        "generator": None,  # marks data the user brought, as opposed to generate_inputs output
        "source": f"file:{name}",
        "query_format": query_format,
        "keys": keys_description,
        "notes": notes,
    }
    example = _make_example(
        indices, values, shape, value,
        query_labels=_default_labels("q", num_queries) if num_queries <= DEFAULT_LABEL_LIMIT else None,
        key_labels=_default_labels("k", num_keys) if num_keys <= DEFAULT_LABEL_LIMIT else None,
        metadata=metadata,
    )
    validate_example(example, budget=budget)
    return example, {}
