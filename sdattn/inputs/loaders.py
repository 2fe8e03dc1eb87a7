"""Loading and saving inputs: .npz (scipy or sdattn bundle), .mtx, .csv and .npy, checked against a budget.
Every failure raises InputError; work is bounded by bytes before anything is decoded, and nothing is unpickled.

The bounded readers it is built on are internal modules a session loader reuses: `npy`
(`read_npy`, `ByteAllowance`), `safe_zip` (`SafeArchive`, `read_npz_members`), `text`
(`scan_text`, `line_chunks`, `NumericTable`) and `schema` (the bundle's JSON fields). Here,
`_load_npz(source, budget)` -> `(archive, {key: member name})` and `_npz_member(archive, members,
key, name, kinds=..., max_elements=..., budget_setting=...)` read a .npz within one byte budget.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import warnings
from typing import Any

import numpy as np

from sdattn.inputs import schema
from sdattn.inputs.example import (
    Budget,
    DEFAULT_BUDGET,
    Example,
    InputError,
    InputWarning,
    _canonical_coo,
    _check_index_range,
    _check_limit,
    _cut,
    _default_labels,
    _echo,
    _make_example,
    _to_float32,
    validate_example,
)
from sdattn.inputs.generators import (
    _int_param,
    _json_ready,
)
from sdattn.inputs.npy import (
    MAX_STRING_ITEMSIZE,
    ByteAllowance,
    check_finite,
    count_nonzero,
    read_npy,
)
from sdattn.inputs.safe_zip import SafeArchive, npy_members
from sdattn.inputs.text import EXTRA_LINES, NumericTable, line_chunks, scan_text

BUNDLE_FORMAT = schema.BUNDLE_FORMAT
BUNDLE_VERSION = 1

# Keys generated for query-only files: Gaussian, with a fixed seed so the same file gives the same run.
GENERATED_KEYS_SEED = 0
GENERATED_KEYS_COUNT = 64

# Loaded files get default "q0".."k0" labels only up to this many rows: beyond it the label list
# would cost more memory than the arrays it describes, and no view can show that many anyway.
DEFAULT_LABEL_LIMIT = 100_000

# JSON members become Python objects worth up to ~20x their bytes, so they get their own caps:
# 16 MB of labels holds 100,000 labels of 100+ characters; all JSON of one file stays under 24 MB.
_MAX_LABELS_JSON = 16 * 2**20
_MAX_MEMBER_JSON = 4 * 2**20
_MAX_FILE_JSON = 24 * 2**20
_MAX_NAME_CHARS = 80  # a file name echoed in messages
_EXTRA_NAME = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_NUMERIC_KINDS = "biuf"
_EXTRA_KINDS = "biufUS"  # strings only where a caller's labels or names are expected

__all__ = ["load_inputs", "save_inputs"]

# ----------------------------------------------------------------------------------------------
# Reading files safely
# ----------------------------------------------------------------------------------------------


def _display_name(name: str) -> str:
    return name if len(name) <= _MAX_NAME_CHARS else f"{name[:40]}...{name[-30:]}"


class _Source:
    """A seekable binary stream over a path or an uploaded file, with its display name and size."""

    def __init__(self, path_or_file, max_bytes: int):
        self._owned = None
        if isinstance(path_or_file, (str, os.PathLike)):
            path = pathlib.Path(path_or_file)
            self.name = _display_name(path.name)
            try:
                self.stream = self._owned = open(path, "rb")
            except OSError as error:
                raise InputError(
                    f"{_display_name(str(path))}: cannot open the file ({error.strerror or error}); "
                    "expected a readable file"
                ) from error
        elif hasattr(path_or_file, "read"):
            raw_name = getattr(path_or_file, "name", None)
            if not isinstance(raw_name, str) or not raw_name:
                raise InputError(
                    "the uploaded file has no name, so its format is unknown; expected a file "
                    "object with a .name ending in .npz, .npy, .csv or .mtx"
                )
            self.name = _display_name(pathlib.PurePath(raw_name).name)
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
            raise InputError(f"{self.name}: cannot read the file ({_echo(str(error), 80)})") from error

    def close(self):
        if self._owned is not None:
            self._owned.close()


def _read_npy(stream, available_bytes: int, where: str, *, kinds: str, max_elements: int,
              budget_setting: str, allowance: ByteAllowance | None = None) -> np.ndarray:
    """`npy.read_npy` (kept under its old name for callers of this module)."""
    return read_npy(stream, available_bytes, where, kinds=kinds, max_elements=max_elements,
                    budget_setting=budget_setting, allowance=allowance)


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


def _dense_to_sparse(dense: np.ndarray, where: str, budget: Budget):
    """COO parts of a dense [B, M, Dq] array; its non-zeros are counted (in chunks) first.

    Counting first bounds the work by the budget: an all-True [B, M, Dq] array would otherwise
    build 3 x 8 bytes of indices per element before the non-zero limit is checked.
    """
    nnz = count_nonzero(dense)
    _require_entries(nnz, where)
    _check_limit(nnz, budget.max_nonzeros, where, "non-zeros", "max_nonzeros")
    indices = np.stack(np.nonzero(dense), axis=1).astype(np.int64)  # C order: already canonical
    stored = dense[tuple(indices.T)]
    with np.errstate(over="ignore", invalid="ignore"):
        values = stored.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        position = [int(x) for x in indices[bad[0]]]
        raise InputError(f"{where} entry {position} overflows float32; expected finite float32 "
                         "numbers (no NaN or Inf)")
    return indices, values, nnz


def _load_npy_queries(source: _Source, budget: Budget):
    array = read_npy(source.stream, source.size, source.name, kinds="biuf",
                     max_elements=budget.max_dense_floats, budget_setting="max_dense_floats",
                     allowance=source.allowance)
    if array.ndim not in (2, 3):
        raise InputError(
            f"{source.name}: a query array of shape {_echo(array.shape)}; expected 2-D [M, Dq] or "
            "3-D [B, M, Dq]"
        )
    dense = array[None] if array.ndim == 2 else array
    _check_query_shape(dense.shape, source.name, budget)
    check_finite(array, source.name)
    indices, values, nnz = _dense_to_sparse(dense, source.name, budget)
    note = (
        f"{source.name}: the dense query array {list(array.shape)} was converted to a sparse "
        f"query with {nnz:,} non-zeros (density {nnz / dense.size:.1%})"
    )
    warnings.warn(note, InputWarning, stacklevel=4)
    return indices, values, dense.shape, "npy-dense", [note]


class _LineCursor:
    """Single lines from `text.line_chunks` for a file's header, then the rest chunk by chunk."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._numbers, self._lines, self._at = [], [], 0

    def next(self):
        while self._at >= len(self._lines):
            chunk = next(self._chunks, None)
            if chunk is None:
                return None, None
            (self._numbers, self._lines), self._at = chunk, 0
        self._at += 1
        return self._numbers[self._at - 1], self._lines[self._at - 1]

    def rest(self):
        yield self._numbers[self._at:], self._lines[self._at:]
        yield from self._chunks


def _scan(source: _Source, max_rows: int):
    """`text.scan_text` within the source's byte allowance; returns (line count, line chunks)."""
    source.allowance.take(source.size, "the text")
    line_count = scan_text(source.stream, source.size, source.name,
                           max_bytes=source.allowance.limit, max_lines=max_rows + EXTRA_LINES)
    return line_count, line_chunks(source.stream, source.name)


def _load_mtx_queries(source: _Source, budget: Budget):
    """Matrix Market queries, parsed here rather than by `scipy.io.mmread`.

    scipy 1.17's C++ reader segfaults on some malformed files (e.g. a last value "5E-" at the
    end of the file), which would take the whole app down; this reader accepts the same
    coordinate/array, real/integer/pattern, general/symmetric/skew-symmetric files, and streams
    them: the entry count is checked against the size line while the lines are parsed.
    """
    name = source.name
    # Text costs a parse per value: a dense array layout gets the non-zero budget too (a larger
    # dense matrix belongs in a .npy), so every Matrix Market file has at most max_nonzeros lines.
    line_count, chunks = _scan(source, budget.max_nonzeros)
    lines = _LineCursor(chunks)
    expected_banner = "'%%MatrixMarket matrix coordinate real general'"
    number, banner_line = lines.next()
    if number != 1 or not banner_line.lower().startswith("%%matrixmarket"):
        raise InputError(
            f"{name}: not a Matrix Market file (line 1 is not a %%MatrixMarket banner); expected "
            f"a banner such as {expected_banner}"
        )
    banner = banner_line.lower().split()
    if (len(banner) != 5 or banner[1] != "matrix" or banner[2] not in ("coordinate", "array")
            or banner[4] not in ("general", "symmetric", "skew-symmetric", "hermitian")):
        raise InputError(
            f"{name}, line 1: banner {_echo(banner_line, 80)} is not a Matrix Market matrix "
            f"banner; expected e.g. {expected_banner}"
        )
    layout, field_kind, symmetry = banner[2:]
    if field_kind not in ("real", "integer", "pattern") or (layout, field_kind) == ("array", "pattern"):
        raise InputError(
            f"{name}, line 1: has {layout} field {_echo(field_kind, 20)}; expected real, integer or "
            "pattern values"
        )
    if symmetry == "hermitian" or (layout == "array" and symmetry != "general"):
        raise InputError(
            f"{name}, line 1: '{layout} {symmetry}' matrices are not supported; expected "
            "'coordinate' with general/symmetric/skew-symmetric, or 'array general'"
        )
    sizes = "rows columns entries" if layout == "coordinate" else "rows columns"
    number, size_line = lines.next()
    while number is not None and size_line.lstrip().startswith("%"):
        number, size_line = lines.next()
    if number is None:
        raise InputError(f"{name}: has no size line after the banner; expected '{sizes}'")
    size_tokens = size_line.split()
    if len(size_tokens) != len(sizes.split()) or not all(
        re.fullmatch(r"[0-9]{1,18}", token) for token in size_tokens
    ):
        raise InputError(
            f"{name}, line {number}: the size line {_echo(size_line, 80)} is invalid; expected "
            f"'{sizes}' as non-negative integers"
        )
    rows, columns = int(size_tokens[0]), int(size_tokens[1])
    shape = (1, rows, columns)
    _check_query_shape(shape, name, budget)
    if symmetry != "general" and rows != columns:
        raise InputError(
            f"{name}, line {number}: a {symmetry} matrix must be square; the size line declares "
            f"{rows:,} x {columns:,}"
        )
    if layout == "array":
        _check_limit(rows * columns, budget.max_nonzeros, name, "dense entries (one per line)",
                     "max_nonzeros")
        declared = rows * columns
    else:
        declared = int(size_tokens[2])
        # Symmetric files store one triangle; mirroring can double the entries.
        stored = declared * (1 if symmetry == "general" else 2)
        _check_limit(stored, budget.max_nonzeros, name, "declared entries", "max_nonzeros")
    if declared == 0:
        raise InputError(f"{name}: the query has no stored entries; expected at least one non-zero")
    if line_count - number > declared + EXTRA_LINES:
        # Known from the raw-byte scan: refuse a flood before parsing any of it.
        raise InputError(
            f"{name}: the size line declares {declared:,} entries but {line_count - number:,} "
            "lines follow; expected one line per entry (plus a few comments)"
        )
    width = 1 if layout == "array" else (2 if field_kind == "pattern" else 3)
    table = NumericTable(
        name, columns=(width,), max_rows=declared, max_values=width * declared,
        budget_setting="max_nonzeros", delimiter=None, comment="%", allow_header=False,
        columns_hint="(row col value, 1-based)" if width == 3 else "",
        too_many_rows=(f"{name}: the size line declares {declared:,} entries but more entry "
                       "lines follow; the file has extra lines, or a wrong size line"),
        capacity=declared,
    )
    for chunk in lines.rest():
        table.feed(*chunk)
    if table.rows != declared:
        raise InputError(
            f"{name}: the size line declares {declared:,} entries but {table.rows:,} entry "
            "lines follow; the file is truncated or has extra lines"
        )
    data, line_numbers = table.result()
    if layout == "array":
        values = data[:, 0]
        _check_float32_range(values, line_numbers, name)
        dense = values.reshape(columns, rows).T  # array layout is column-major
        indices, stored_values, nnz = _dense_to_sparse(dense[None], name, budget)
        note = (
            f"{name}: the dense Matrix Market array [{rows}, {columns}] was converted to a "
            f"sparse query with {nnz:,} non-zeros"
        )
        warnings.warn(note, InputWarning, stacklevel=4)
        return indices, stored_values, shape, "mtx", [note]
    row_index = _checked_index_column(data[:, 0], line_numbers, name, "row", low=1, high=rows)
    column_index = _checked_index_column(data[:, 1], line_numbers, name, "column", low=1,
                                         high=columns)
    values = np.ones(data.shape[0]) if field_kind == "pattern" else data[:, 2]
    _check_float32_range(values, line_numbers, name)
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


def _checked_index_column(values: np.ndarray, line_numbers, name: str, label: str, *, low: int,
                          high: int, high_reason: str = "") -> np.ndarray:
    """Integer indices from a float column: whole numbers in [low, high], else the line is named."""
    bad = np.flatnonzero((values < low) | (values > high) | (values != np.floor(values)))
    if bad.size:
        row = int(bad[0])
        raise InputError(
            f"{name}, line {line_numbers[row]:,}: {label} index {values[row]:g} is invalid; "
            f"expected an integer from {low} to {high:,}{high_reason}"
        )
    return values.astype(np.int64)


def _check_float32_range(values: np.ndarray, line_numbers, name: str):
    too_large = np.flatnonzero(np.abs(values) > np.finfo(np.float32).max)
    if too_large.size:
        row = int(too_large[0])
        raise InputError(
            f"{name}, line {line_numbers[row]:,}: value {values[row]:g} overflows float32; "
            "expected magnitudes below 3.4e38"
        )


def _read_table(source: _Source, *, columns, max_rows: int, max_values: int, budget_setting: str,
                columns_hint: str = ""):
    """A csv file as a float64 table and each row's line number, parsed chunk by chunk."""
    line_count, chunks = _scan(source, max_rows)
    table = NumericTable(source.name, columns=columns, max_rows=max_rows, max_values=max_values,
                         budget_setting=budget_setting, columns_hint=columns_hint,
                         capacity=line_count)
    for chunk in chunks:
        table.feed(*chunk)
    return table.result()


def _load_csv_queries(source: _Source, budget: Budget):
    name = source.name
    table, line_numbers = _read_table(
        source, columns=(3, 4), columns_hint="(row,col,value or batch,row,col,value)",
        max_rows=budget.max_nonzeros, max_values=4 * budget.max_nonzeros,
        budget_setting="max_nonzeros",
    )
    if table.shape[1] == 3:
        table = np.concatenate([np.zeros((table.shape[0], 1)), table], axis=1)
    # Indices past the budget would make the inferred query shape itself too big.
    largest = budget.max_dense_floats - 1
    coordinates = np.stack(
        [_checked_index_column(table[:, column], line_numbers, name, label, low=0, high=largest,
                               high_reason=" (raise Budget.max_dense_floats for larger shapes)")
         for column, label in enumerate(("batch", "row", "col"))],
        axis=1,
    )
    _check_float32_range(table[:, 3], line_numbers, name)
    shape = tuple(int(size) + 1 for size in coordinates.max(axis=0))
    _check_query_shape(shape, name, budget)
    indices, values, merged = _canonical_coo(coordinates, table[:, 3], name)
    notes = [f"{name}: the query shape {list(shape)} was inferred from the largest indices"]
    if merged:
        notes.append(f"{name}: {merged} duplicate entries were summed")
    return indices, values, shape, "csv-coo", notes


def _load_npz(source: _Source, budget: Budget):
    """Open a .npz through its checked zip directory; returns (SafeArchive, {key: member name}).

    The archive's member count, methods and declared sizes are checked here, before any member
    is opened; each `_npz_member` read then takes its bytes from the archive's byte allowance.
    """
    archive = SafeArchive(source.stream, source.size, source.name, budget)
    members = {key: member.name for key, member in npy_members(archive.members).items()}
    if not members:
        raise InputError(
            f"{source.name}: holds no .npy arrays; expected an sdattn bundle or a scipy.sparse "
            "matrix"
        )
    return archive, members


def _npz_member(archive: SafeArchive, members, key, source_name, *, kinds, max_elements,
                budget_setting):
    return archive.read_array(members[key], f"{source_name}, array '{key}'", kinds=kinds,
                              max_elements=max_elements, budget_setting=budget_setting)


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
    except (UnicodeDecodeError, ValueError):
        raise InputError(f"{name}: array 'format' is not a format name") from None
    if sparse_format not in ("csr", "csc", "coo"):
        raise InputError(
            f"{name}: sparse format {_echo(sparse_format, 20)} is not supported; expected csr, csc or "
            "coo (convert with .tocsr() before save_npz)"
        )
    shape_array = member("shape", "iu", 3)
    if shape_array.ndim != 1 or shape_array.size not in (2, 3):
        raise InputError(
            f"{name}: array 'shape' is {_echo(shape_array.tolist())}; expected (M, Dq) or (B, M, Dq)"
        )
    matrix_shape = tuple(int(size) for size in shape_array)
    shape = (1, *matrix_shape) if len(matrix_shape) == 2 else matrix_shape
    _check_query_shape(shape, name, budget)
    if len(matrix_shape) == 3 and sparse_format != "coo":
        raise InputError(f"{name}: a 3-D shape needs the coo format; found {sparse_format}")
    data = member("data", "biuf", nnz_limit)
    if data.ndim != 1:
        raise InputError(f"{name}: array 'data' has shape {data.shape}; expected 1-D")
    check_finite(data, f"{name}, array 'data'")
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
        source = _Source(keys, budget.max_bytes)
        name = source.name
        source.allowance = ByteAllowance(budget.max_bytes, name)
        try:
            if source.extension == ".npy":
                array = read_npy(source.stream, source.size, name, kinds="biuf",
                                 max_elements=budget.max_dense_floats,
                                 budget_setting="max_dense_floats", allowance=source.allowance)
            elif source.extension == ".csv":
                array, _ = _read_table(source, columns=None, max_rows=budget.max_dense_floats,
                                       max_values=budget.max_dense_floats,
                                       budget_setting="max_dense_floats")
            else:
                raise InputError(
                    f"{name}: unknown key file type '{(source.extension or '(none)')[:20]}'; "
                    "expected .npy or a dense .csv"
                )
        finally:
            source.close()
        description = {"file": name}
    if array.ndim not in (2, 3) or 0 in array.shape:
        raise InputError(
            f"{name}: keys of shape {_echo(array.shape)}; expected a non-empty [N, D] or "
            "[B, N, D] array"
        )
    value = array[None] if array.ndim == 2 else array
    check_finite(value, name)
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
    """`schema.decode_json` (kept under its old name for callers of this module)."""
    return schema.decode_json(array, where)


def save_inputs(example: Example, path_or_file, extras: dict[str, Any] | None = None) -> None:
    """Write an example (and optional extra arrays) as an sdattn bundle (.npz, no pickles).

    The bundle layout is documented in the README ("Input formats"). `load_inputs` reads it back
    exactly: same arrays, dtypes, labels and metadata.

    Args:
        example: a valid example (checked with `validate_example`).
        path_or_file: a path ending in .npz, or a writable binary file object.
        extras: optional named payloads stored beside the example, e.g. a run's config and
            results. A numpy array (bool, integer, float, or strings of at most 4,096 bytes each)
            is stored as member `extra.<name>`; any other JSON-serialisable value as JSON in
            `extra_json.<name>`. Read them back with `load_inputs(..., return_extras=True)`.

    Raises:
        InputError: invalid or empty example, non-JSON metadata, bad extra name, or an extra
            array `load_inputs` would refuse (object, complex, structured, or long strings).
    """
    validate_example(example)
    _require_entries(example.nnz, "the example")
    try:
        metadata_json = _json_array(_json_ready(example.metadata))
    except (TypeError, ValueError) as error:
        raise InputError(
            f"metadata is not JSON-serialisable ({_echo(str(error), 80)}); expected plain JSON "
            "values"
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
                f"extra name {_echo(extra_name)} is invalid; expected letters, digits, '_', '-' "
                "or '.'"
            )
        if isinstance(payload, np.ndarray):
            dtype = payload.dtype
            if (dtype.kind not in _EXTRA_KINDS or dtype.fields is not None
                    or (dtype.kind in "US" and dtype.itemsize > MAX_STRING_ITEMSIZE)):
                raise InputError(
                    f"extra '{extra_name}' has dtype {_cut(dtype)}; expected a bool, "
                    f"integer, float or string array (strings of at most {MAX_STRING_ITEMSIZE:,} "
                    "bytes; object arrays would need pickles)"
                )
            arrays[f"extra.{extra_name}"] = payload
        else:
            try:
                arrays[f"extra_json.{extra_name}"] = _json_array(_json_ready(payload))
            except (TypeError, ValueError) as error:
                raise InputError(
                    f"extra '{extra_name}' is neither a numpy array nor JSON-serialisable "
                    f"({_echo(str(error), 80)})"
                ) from error
    _write_npz(path_or_file, arrays, "bundle")


def _write_npz(path_or_file, arrays: dict[str, np.ndarray], kind: str) -> None:
    """`np.savez_compressed` to a path (which must end in .npz) or a binary file object.

    Args:
        path_or_file: where to write.
        arrays: the members, by name.
        kind: what the file is ("bundle", "session"), for the message about a wrong suffix.
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        path = pathlib.Path(path_or_file)
        if path.suffix.lower() != ".npz":
            raise InputError(f"{_display_name(str(path))}: a {kind} path must end in .npz")
        with open(path, "wb") as stream:
            np.savez_compressed(stream, **arrays)
    else:
        np.savez_compressed(path_or_file, **arrays)


# The members of a bundle, besides `extra.<name>` / `extra_json.<name>`: (dtype kinds, required).
_BUNDLE_MEMBERS = {
    "bundle_info": ("u", True),
    "query_shape": ("iu", True),
    "query_indices": ("iu", True),
    "query_values": ("biuf", True),
    "value": ("biuf", True),
    "query_mask": ("b", True),
    "value_mask": ("b", True),
    "metadata": ("u", True),
    "query_labels": ("u", False),
    "key_labels": ("u", False),
    "ground_truth": ("iu", False),
}


def _load_bundle(archive: SafeArchive, members, source: _Source, budget: Budget):
    """An sdattn bundle, every field checked against the layout in the README.

    The member names are checked against the layout from the zip directory before any member is
    read; each array's dtype, shape and bytes before its data is read; each JSON member against
    `schema` (labels are lists of strings, metadata notes are strings, versions are versions).
    """
    name = source.name
    unknown = [key for key in members
               if key not in _BUNDLE_MEMBERS and not (
                   (key.startswith("extra.") or key.startswith("extra_json."))
                   and _EXTRA_NAME.match(key.split(".", 1)[1]))]
    others = [member for member in archive.namelist() if not member.endswith(".npy")]
    if unknown or others:
        raise InputError(
            f"{name}: holds member {_echo((unknown or others)[0])}, which is not part of an sdattn "
            "bundle; expected only the members save_inputs writes (README: the bundle layout)"
        )
    json_left = [_MAX_FILE_JSON]

    def member(key, limit, setting="max_dense_floats"):
        kinds, required = _BUNDLE_MEMBERS.get(key, (_EXTRA_KINDS, False))
        if key not in members:
            if required:
                raise InputError(f"{name}: the sdattn bundle is missing array '{key}'")
            return None
        return _npz_member(archive, members, key, name, kinds=kinds, max_elements=limit,
                           budget_setting=setting)

    def json_member(key, limit=_MAX_MEMBER_JSON):
        if key not in members:
            member(key, 0)  # the missing-array message, when it is required
            return None
        where = f"{name}, array '{key}'"
        size = archive.getinfo(members[key]).size
        if size > min(limit, json_left[0]) + 256:  # 256: the .npy header
            raise InputError(
                f"{where}: is {size:,} bytes of JSON, over the limit of {min(limit, json_left[0]):,}"
                " bytes; expected a smaller bundle"
            )
        json_left[0] -= size
        raw = _npz_member(archive, members, key, name, kinds="u", max_elements=limit,
                          budget_setting="max_bytes")
        if raw.dtype != np.uint8:
            raise InputError(f"{where}: has dtype {raw.dtype}; expected uint8 UTF-8 JSON bytes")
        return schema.decode_json(raw, where)

    info = json_member("bundle_info", 4096)
    schema.check_bundle_info(info, f"{name}, array 'bundle_info'", BUNDLE_VERSION)
    shape_array = member("query_shape", 3)
    if shape_array.shape != (3,):
        raise InputError(
            f"{name}: array 'query_shape' is {_echo(shape_array.tolist())}; expected [B, M, Dq]"
        )
    shape = tuple(int(size) for size in shape_array)
    _check_query_shape(shape, name, budget)
    batch_size, num_queries, _ = shape
    indices = member("query_indices", 3 * budget.max_nonzeros, "max_nonzeros")
    values = member("query_values", budget.max_nonzeros, "max_nonzeros")
    value = member("value", budget.max_dense_floats)
    query_mask = member("query_mask", budget.max_dense_floats)
    value_mask = member("value_mask", budget.max_dense_floats)
    truth = member("ground_truth", budget.max_dense_floats)
    if indices.ndim != 2 or indices.shape[1:] != (3,):
        raise InputError(
            f"{name}: array 'query_indices' has shape {_echo(indices.shape)}; expected [nnz, 3]"
        )
    if values.shape != (indices.shape[0],):
        raise InputError(
            f"{name}: array 'query_values' has shape {_echo(values.shape)}; expected "
            f"[{indices.shape[0]}]"
        )
    if value.ndim != 3:
        raise InputError(
            f"{name}: array 'value' has shape {_echo(value.shape)}; expected [B, N, D]"
        )
    num_keys = value.shape[1]
    metadata = json_member("metadata")
    schema.check_metadata(metadata, f"{name}, array 'metadata'")
    labels = {}
    for key, count in (("query_labels", num_queries), ("key_labels", num_keys)):
        labels[key] = json_member(key, _MAX_LABELS_JSON)
        if labels[key] is not None:
            schema.check_labels(labels[key], f"{name}, array '{key}'", count)
    check_finite(values, f"{name}, array 'query_values'")
    check_finite(value, f"{name}, array 'value'")
    _check_index_range(indices, shape, f"{name}, array 'query_indices'", ("b", "m", "d"))
    notes = []
    canonical_indices, canonical_values, merged = _canonical_coo(indices, values, name)
    if merged or not np.array_equal(canonical_indices, indices):
        summed = f" and {merged} duplicates summed" if merged else ""
        notes.append(f"{name}: query entries were sorted{summed}")
    if truth is not None and truth.ndim == 3:
        bad = np.argwhere((truth < -1) | (truth >= max(num_keys, 0)))
        if bad.size:
            position = [int(x) for x in bad[0]]
            raise InputError(
                f"{name}, array 'ground_truth' entry {position}: {int(truth[tuple(position)])} is "
                f"out of range; expected -1 or a key position in [0, {num_keys})"
            )
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
        raise InputError(f"{name}: {error}") from None
    _require_entries(example.nnz, name)
    extras = {}
    for key in members:
        if key.startswith("extra."):
            extras[key[len("extra."):]] = member(key, budget.max_dense_floats)
        elif key.startswith("extra_json."):
            extra_name = key[len("extra_json."):]
            extras[extra_name] = json_member(key)
            schema.check_extra_json(extra_name, extras[extra_name], f"{name}, array '{key}'")
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

    Work is bounded by bytes before anything is decoded: the zip directory (member count,
    methods, declared sizes), `.npy` headers (length, dtype, elements x itemsize), and text files
    (size, line count, line length, then rows while parsing) are checked against the budget, so
    memory stays bounded by `Budget.max_bytes` rather than by what a file claims.

    Args:
        path_or_file: a path, or a binary file object with a `.name` (e.g. Streamlit's
            UploadedFile).
        keys: dense keys for query-only formats: an array [N, D] or [B, N, D], or a path / file
            object of a `.npy` or dense `.csv` (one key per line). None generates
            `num_generated_keys` standard-normal keys of size Dq with a fixed seed, recorded in
            `metadata["keys"]`. Ignored (with a warning) for bundles, which carry their keys.
        budget: size limits; default `Budget()` (5M non-zeros, 50M dense floats, 512 MiB).
        num_generated_keys: N for generated keys.
        return_extras: also return the bundle's extra payloads (see `save_inputs`). One call
            with `return_extras=True` gives both the example and, e.g., a session config: load
            an upload once and derive both from the result.

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
        source = _Source(path_or_file, budget.max_bytes)
        source.allowance = ByteAllowance(budget.max_bytes, source.name)
        example, extras = _load_from_source(source, keys, budget, num_generated_keys)
    except InputError:
        raise
    except Exception as error:  # a bad file must never crash the app: anything else is an input error
        name = getattr(source, "name", "the input")
        raise InputError(
            f"{name}: cannot read the file ({type(error).__name__}: {_echo(str(error), 80)}); "
            f"expected a valid {getattr(source, 'extension', '') or 'input'} file"
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
            f"{name}: unknown file type '{(source.extension or '(none)')[:20]}'; expected .npz (bundle or "
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
                f"{name}: holds arrays {_echo(sorted(members)[:10])}; expected an sdattn bundle (with "
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
