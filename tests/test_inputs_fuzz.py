"""Fuzz test for sdattn.load_inputs: hundreds of malformed files, every one must raise InputError.

Each case is built to be invalid by construction, quickly, within 2 s and without big allocations.
"""

import collections
import dataclasses
import io
import pickle
import time
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdattn.inputs import Budget, InputError, generate_inputs, load_inputs, save_inputs

FUZZ_CASES = 600
# A small budget, so "absurd" sizes are cheap to write and any allocation beyond it stands out.
FUZZ_BUDGET = Budget(max_nonzeros=2_000, max_dense_floats=20_000)
PEAK_BYTES_LIMIT = 8 * 2**20  # far above what the budget allows, far below an absurd shape
TIME_LIMIT_S = 2.0
MESSAGE_LIMIT = 300  # issue 17: short enough to read, and echoed values cut short


@dataclasses.dataclass
class Case:
    family: str
    name: str
    data: bytes
    keys: object = None  # None, or (name, bytes) of a keys file


def npy_bytes(array, allow_pickle=False) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array, allow_pickle=allow_pickle)
    return stream.getvalue()


def npy_header_only(shape, descr="<f8", body=b"\x00" * 32) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {"descr": descr, "fortran_order": False, "shape": shape})
    return stream.getvalue() + body


def npz_bytes(members: dict) -> bytes:
    """A .npz from arrays or raw .npy bytes (so members can be malformed on purpose)."""
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        for key, member in members.items():
            archive.writestr(f"{key}.npy", member if isinstance(member, bytes) else npy_bytes(member))
    return stream.getvalue()


# Valid files the mutations start from (each is checked to load in the first test).
QUERY_DENSE = np.array(
    [[0.0, 1.5, 0.0, 0.0, 2.0], [0.0, 0.0, -1.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.5, 0.0],
     [0.0, 0.0, 0.0, 0.0, 4.0]]
)
ROWS, COLUMNS = np.nonzero(QUERY_DENSE)
CSV_LINES = [f"{row},{column},{QUERY_DENSE[row, column]:g}" for row, column in zip(ROWS, COLUMNS)]
VALID_CSV = ("\n".join(CSV_LINES) + "\n").encode()
_mtx = io.BytesIO()
scipy.io.mmwrite(_mtx, scipy.sparse.coo_matrix(QUERY_DENSE))
VALID_MTX = _mtx.getvalue()
_mtx_lines = VALID_MTX.split(b"\n")
_size_line = next(position for position, line in enumerate(_mtx_lines) if not line.startswith(b"%"))
MTX_HEADER = _mtx_lines[: _size_line + 1]  # banner, comments, "rows columns entries"
MTX_ENTRIES = [line for line in _mtx_lines[_size_line + 1:] if line]
VALID_NPY = npy_bytes(QUERY_DENSE)
_csr = scipy.sparse.csr_matrix(QUERY_DENSE)
SCIPY_MEMBERS = {"format": np.array(b"csr"), "shape": np.array(_csr.shape), "data": _csr.data,
                 "indices": _csr.indices, "indptr": _csr.indptr}
VALID_SCIPY_NPZ = npz_bytes(SCIPY_MEMBERS)
_bundle = io.BytesIO()
save_inputs(generate_inputs("planted", seed=0, num_queries=4, num_keys=8, dim=6, relevant_per_query=2,
                            nonzeros_per_query=2), _bundle)
VALID_BUNDLE = _bundle.getvalue()
with np.load(io.BytesIO(VALID_BUNDLE), allow_pickle=False) as _archive:
    BUNDLE_MEMBERS = {key: _archive[key] for key in _archive.files}
VALID_KEYS_NPY = npy_bytes(np.linspace(-1, 1, 6 * 5).reshape(6, 5))
VALID_KEYS_CSV = "\n".join(",".join(str(x) for x in row) for row in np.eye(6, 5)).encode() + b"\n"
VALID_FILES = {"q.csv": VALID_CSV, "q.mtx": VALID_MTX, "q.npy": VALID_NPY, "scipy.npz": VALID_SCIPY_NPZ,
               "bundle.npz": VALID_BUNDLE}

BAD_DTYPES = [np.complex64, np.complex128, "<U3", "S3", "datetime64[s]", "timedelta64[s]",
              [("a", "<f4"), ("b", "<i4")], "V8"]
NON_FINITE = [np.nan, np.inf, -np.inf]
NON_FINITE_TEXT = ["nan", "NaN", "inf", "-inf", "Infinity", "-Infinity"]


def array_of(dtype, shape=(4, 5)):
    dtype = np.dtype(dtype)
    if dtype.kind in "US":
        return np.full(shape, "x", dtype=dtype)
    return np.zeros(shape, dtype=dtype)


def with_value(lines, line_index, column, token):
    parts = lines[line_index].split(",")
    parts[column] = token
    return lines[:line_index] + [",".join(parts)] + lines[line_index + 1:]


def text(lines) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def looks_like_numeric_csv(data: bytes) -> bool:
    allowed = set(b"0123456789.,-+eE \t\r\n#")
    return bool(data) and set(data) <= allowed


# ----------------------------------------------------------------------------------------------
# Families of malformed files
# ----------------------------------------------------------------------------------------------


@st.composite
def truncated(draw):
    kind = draw(st.sampled_from(["npy", "scipy.npz", "bundle.npz", "csv", "mtx", "keys.npy"]))
    if kind in ("npy", "scipy.npz", "bundle.npz"):
        data = {"npy": VALID_NPY, "scipy.npz": VALID_SCIPY_NPZ, "bundle.npz": VALID_BUNDLE}[kind]
        cut = draw(st.integers(0, len(data) - 1))
        return Case("truncated", "t." + kind.split(".")[-1], data[:cut])
    if kind == "keys.npy":
        cut = draw(st.integers(0, len(VALID_KEYS_NPY) - 1))
        return Case("truncated", "q.csv", VALID_CSV, ("k.npy", VALID_KEYS_NPY[:cut]))
    if kind == "csv":
        # Cut a line before its last comma: the final row loses a column, so it cannot parse.
        line_index = draw(st.integers(0, len(CSV_LINES) - 1))
        line = CSV_LINES[line_index]
        cut = draw(st.integers(1, line.rindex(",")))
        return Case("truncated", "q.csv", text(CSV_LINES[:line_index] + [line[:cut]]))
    # Matrix Market: drop at least one declared entry, optionally leaving half a line.
    kept = draw(st.integers(0, len(MTX_ENTRIES) - 1))
    partial = b""
    if draw(st.booleans()):
        entry = MTX_ENTRIES[kept]
        partial = entry[: draw(st.integers(1, entry.rindex(b" ")))]
    body = b"\n".join(MTX_HEADER + MTX_ENTRIES[:kept]) + b"\n" + partial
    if draw(st.booleans()):
        body = VALID_MTX[: draw(st.integers(0, len(b"\n".join(MTX_HEADER))))]  # inside the header
    return Case("truncated", "q.mtx", body)


@st.composite
def random_bytes(draw):
    extension = draw(st.sampled_from([".npy", ".npz", ".mtx", ".csv"]))
    data = draw(st.binary(max_size=600))
    if extension == ".npy":
        data = data if not data.startswith(b"\x93NUMPY") else b"x" + data
    elif extension == ".npz":
        data = data.replace(b"PK", b"pk")
    elif extension == ".mtx":
        data = data if not data.startswith(b"%%") else b"x" + data
    elif looks_like_numeric_csv(data) or not data.strip():
        data = b"\xff" + data  # never valid UTF-8, so never an accidental valid csv
    return Case("random_bytes", "r" + extension, data)


@st.composite
def unknown_extension(draw):
    extension = draw(st.sampled_from([".txt", ".json", ".pkl", ".pickle", ".tsv", ".npy.gz", ".xlsx",
                                       ".h5", "", ".npz.bak", ".csv~"]))
    data = draw(st.sampled_from(list(VALID_FILES.values())))
    return Case("unknown_extension", "file" + extension, data)


@st.composite
def wrong_dtype(draw):
    dtype = draw(st.sampled_from(BAD_DTYPES))
    target = draw(st.sampled_from(["npy", "scipy.data", "scipy.indices", "scipy.indptr", "bundle",
                                   "keys.npy"]))
    if target == "npy":
        return Case("wrong_dtype", "q.npy", npy_bytes(array_of(dtype)))
    if target == "keys.npy":
        return Case("wrong_dtype", "q.csv", VALID_CSV, ("k.npy", npy_bytes(array_of(dtype, (6, 5)))))
    if target.startswith("scipy."):
        member = target.split(".")[1]
        length = SCIPY_MEMBERS[member].shape
        members = {**SCIPY_MEMBERS, member: array_of(dtype, length)}
        if member != "data" and draw(st.booleans()):
            members[member] = SCIPY_MEMBERS[member].astype(np.float64)  # float indices
        return Case("wrong_dtype", "s.npz", npz_bytes(members))
    member = draw(st.sampled_from(["query_indices", "query_values", "query_shape", "value", "query_mask",
                                   "value_mask", "ground_truth", "metadata", "query_labels"]))
    original = BUNDLE_MEMBERS[member]
    replacement = array_of(dtype, original.shape)
    if member in ("query_mask", "value_mask") and draw(st.booleans()):
        replacement = original.astype(draw(st.sampled_from([np.float32, np.int8])))
    if member in ("query_indices", "query_shape", "ground_truth") and draw(st.booleans()):
        replacement = original.astype(np.float64)
    if member in ("metadata", "query_labels") and draw(st.booleans()):
        replacement = original.astype(draw(st.sampled_from([np.float32, np.int64])))
    return Case("wrong_dtype", "b.npz", npz_bytes({**BUNDLE_MEMBERS, member: replacement}))


class Payload:
    """Would create a file if ever unpickled; the fuzz must never get that far."""

    def __reduce__(self):
        return (open, ("/nonexistent-dir/sdattn-fuzz-pwned", "w"))


@st.composite
def pickles(draw):
    obj = draw(st.one_of(
        st.lists(st.integers(), max_size=5),
        st.dictionaries(st.text(max_size=4), st.floats(allow_nan=False), max_size=3),
        st.just(Payload()),
        st.builds(lambda values: np.array(values), st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=6)),
    ))
    protocol = draw(st.integers(0, pickle.HIGHEST_PROTOCOL))
    raw = pickle.dumps(obj, protocol=protocol)
    object_array = np.empty(3, dtype=object)
    object_array[:] = [obj, "x", 1]
    where = draw(st.sampled_from(["raw", "npy", "scipy", "bundle", "keys"]))
    if where == "raw":
        extension = draw(st.sampled_from([".npy", ".npz", ".csv", ".mtx"]))
        if extension == ".csv" and protocol == 0:
            raw = b"\xff" + raw  # text pickles can look like a one-column csv header; keep it binary
        return Case("pickle", "p" + extension, raw)
    if where == "npy":
        return Case("pickle", "p.npy", npy_bytes(object_array, allow_pickle=True))
    if where == "keys":
        return Case("pickle", "q.csv", VALID_CSV, ("k.npy", npy_bytes(object_array, allow_pickle=True)))
    pickled_member = npy_bytes(object_array, allow_pickle=True)
    if where == "scipy":
        member = draw(st.sampled_from(list(SCIPY_MEMBERS)))
        return Case("pickle", "s.npz", npz_bytes({**SCIPY_MEMBERS, member: pickled_member}))
    member = draw(st.sampled_from(list(BUNDLE_MEMBERS) + ["extra.results"]))
    return Case("pickle", "b.npz", npz_bytes({**BUNDLE_MEMBERS, member: pickled_member}))


@st.composite
def non_finite(draw):
    target = draw(st.sampled_from(["csv", "mtx", "npy", "scipy", "bundle.value", "bundle.query_values",
                                   "keys.npy", "keys.csv", "overflow.csv", "overflow.npy"]))
    if target == "csv":
        line = draw(st.integers(0, len(CSV_LINES) - 1))
        return Case("nan_inf", "q.csv", text(with_value(CSV_LINES, line, 2, draw(st.sampled_from(NON_FINITE_TEXT)))))
    if target == "overflow.csv":
        line = draw(st.integers(0, len(CSV_LINES) - 1))
        token = draw(st.sampled_from(["1e39", "-4e38", "1e308", "1e400"]))
        return Case("nan_inf", "q.csv", text(with_value(CSV_LINES, line, 2, token)))
    if target == "mtx":
        entry_index = draw(st.integers(0, len(MTX_ENTRIES) - 1))
        parts = MTX_ENTRIES[entry_index].split(b" ")
        parts[-1] = draw(st.sampled_from([b"nan", b"inf", b"-inf"]))
        entries = MTX_ENTRIES[:entry_index] + [b" ".join(parts)] + MTX_ENTRIES[entry_index + 1:]
        return Case("nan_inf", "q.mtx", b"\n".join(MTX_HEADER + entries) + b"\n")
    if target in ("npy", "overflow.npy", "keys.npy"):
        array = (QUERY_DENSE if target != "keys.npy" else np.ones((6, 5))).copy()
        row = draw(st.integers(0, array.shape[0] - 1))
        column = draw(st.integers(0, array.shape[1] - 1))
        array[row, column] = draw(st.sampled_from(NON_FINITE)) if target != "overflow.npy" else 1e39
        if target == "keys.npy":
            return Case("nan_inf", "q.csv", VALID_CSV, ("k.npy", npy_bytes(array)))
        return Case("nan_inf", "q.npy", npy_bytes(array))
    if target == "keys.csv":
        lines = VALID_KEYS_CSV.decode().split()
        line = draw(st.integers(0, len(lines) - 1))
        column = draw(st.integers(0, 4))
        return Case("nan_inf", "q.csv", VALID_CSV,
                    ("k.csv", text(with_value(lines, line, column, draw(st.sampled_from(NON_FINITE_TEXT))))))
    if target == "scipy":
        data = SCIPY_MEMBERS["data"].copy()
        data[draw(st.integers(0, data.size - 1))] = draw(st.sampled_from(NON_FINITE))
        return Case("nan_inf", "s.npz", npz_bytes({**SCIPY_MEMBERS, "data": data}))
    member = target.split(".")[1]
    array = BUNDLE_MEMBERS[member].copy()
    array.reshape(-1)[draw(st.integers(0, array.size - 1))] = draw(st.sampled_from(NON_FINITE))
    return Case("nan_inf", "b.npz", npz_bytes({**BUNDLE_MEMBERS, member: array}))


@st.composite
def bad_indices(draw):
    target = draw(st.sampled_from(["csv", "mtx", "scipy.indices", "scipy.indptr", "coo", "bundle",
                                   "ground_truth"]))
    if target == "csv":
        line = draw(st.integers(0, len(CSV_LINES) - 1))
        column = draw(st.integers(0, 1))
        token = draw(st.one_of(
            st.integers(-10**6, -1).map(str),
            st.floats(0.01, 100).filter(lambda x: x != int(x)).map(repr),
            st.integers(FUZZ_BUDGET.max_dense_floats, 10**15).map(str),
        ))
        return Case("bad_indices", "q.csv", text(with_value(CSV_LINES, line, column, token)))
    if target == "mtx":
        entry_index = draw(st.integers(0, len(MTX_ENTRIES) - 1))
        parts = MTX_ENTRIES[entry_index].split(b" ")
        axis = draw(st.integers(0, 1))
        limit = QUERY_DENSE.shape[axis]
        parts[axis] = str(draw(st.one_of(st.integers(-5, 0), st.integers(limit + 1, 10**9)))).encode()
        entries = MTX_ENTRIES[:entry_index] + [b" ".join(parts)] + MTX_ENTRIES[entry_index + 1:]
        return Case("bad_indices", "q.mtx", b"\n".join(MTX_HEADER + entries) + b"\n")
    if target == "scipy.indices":
        indices = SCIPY_MEMBERS["indices"].copy().astype(np.int64)
        indices[draw(st.integers(0, indices.size - 1))] = draw(
            st.one_of(st.integers(-100, -1), st.integers(QUERY_DENSE.shape[1], 10**12)))
        return Case("bad_indices", "s.npz", npz_bytes({**SCIPY_MEMBERS, "indices": indices}))
    if target == "scipy.indptr":
        pointer = SCIPY_MEMBERS["indptr"].copy().astype(np.int64)
        variant = draw(st.sampled_from(["decreasing", "start", "end", "length"]))
        if variant == "decreasing":
            position = draw(st.integers(1, pointer.size - 2))
            pointer[position] = pointer[position + 1] + draw(st.integers(1, 5))
        elif variant == "start":
            pointer[0] = draw(st.integers(1, 3))
        elif variant == "end":
            pointer[-1] += draw(st.sampled_from([-1, 1, 100]))
        else:
            pointer = pointer[:-1]
        return Case("bad_indices", "s.npz", npz_bytes({**SCIPY_MEMBERS, "indptr": pointer}))
    if target == "coo":
        coo = scipy.sparse.coo_matrix(QUERY_DENSE)
        row, col = coo.row.astype(np.int64), coo.col.astype(np.int64)
        array = draw(st.sampled_from([row, col]))
        array[draw(st.integers(0, array.size - 1))] = draw(st.one_of(st.integers(-9, -1), st.integers(5, 10**9)))
        members = {"format": np.array(b"coo"), "shape": np.array(coo.shape), "data": coo.data,
                   "row": row, "col": col}
        return Case("bad_indices", "s.npz", npz_bytes(members))
    if target == "bundle":
        indices = BUNDLE_MEMBERS["query_indices"].copy()
        column = draw(st.integers(0, 2))
        limit = int(BUNDLE_MEMBERS["query_shape"][column])
        indices[draw(st.integers(0, indices.shape[0] - 1)), column] = draw(
            st.one_of(st.integers(-10**6, -1), st.integers(limit, 10**12)))
        return Case("bad_indices", "b.npz", npz_bytes({**BUNDLE_MEMBERS, "query_indices": indices}))
    truth = BUNDLE_MEMBERS["ground_truth"].copy()
    truth.reshape(-1)[draw(st.integers(0, truth.size - 1))] = draw(
        st.one_of(st.integers(-1000, -2), st.integers(BUNDLE_MEMBERS["value"].shape[1], 10**6)))
    return Case("bad_indices", "b.npz", npz_bytes({**BUNDLE_MEMBERS, "ground_truth": truth}))


def absurd_shape_values(dimensions):
    """Shapes whose element count is over the fuzz budget (up to 10**18 elements)."""
    return st.lists(st.integers(1, 10**6), min_size=dimensions, max_size=dimensions).filter(
        lambda shape: int(np.prod(shape, dtype=object)) > FUZZ_BUDGET.max_dense_floats * 3
    ).map(tuple)


@st.composite
def absurd_shapes(draw):
    target = draw(st.sampled_from(["npy", "keys.npy", "scipy.data", "scipy.shape", "bundle.value",
                                   "bundle.query_shape", "mtx", "mtx.array", "csv", "npy.negative"]))
    if target in ("npy", "keys.npy"):
        shape = draw(st.one_of(st.just((10**12,)), absurd_shape_values(2), absurd_shape_values(3)))
        data = npy_header_only(shape, draw(st.sampled_from(["<f8", "<f4", "|b1", "<i8"])))
        if target == "keys.npy":
            return Case("absurd_shape", "q.csv", VALID_CSV, ("k.npy", data))
        return Case("absurd_shape", "q.npy", data)
    if target == "npy.negative":
        return Case("absurd_shape", "q.npy", npy_header_only((draw(st.integers(-10**9, -1)), 3)))
    if target == "scipy.data":
        shape = (draw(st.integers(FUZZ_BUDGET.max_nonzeros + 1, 10**15)),)
        return Case("absurd_shape", "s.npz", npz_bytes({**SCIPY_MEMBERS, "data": npy_header_only(shape)}))
    if target == "scipy.shape":
        shape = draw(st.sampled_from([[10**12, 5], [4, 10**12], [10**9, 10**9]]))
        return Case("absurd_shape", "s.npz", npz_bytes({**SCIPY_MEMBERS, "shape": np.array(shape)}))
    if target == "bundle.value":
        shape = draw(absurd_shape_values(3))
        return Case("absurd_shape", "b.npz", npz_bytes({**BUNDLE_MEMBERS, "value": npy_header_only(shape)}))
    if target == "bundle.query_shape":
        shape = BUNDLE_MEMBERS["query_shape"].copy()
        shape[draw(st.integers(0, 2))] = draw(st.integers(10**8, 10**15))
        return Case("absurd_shape", "b.npz", npz_bytes({**BUNDLE_MEMBERS, "query_shape": shape}))
    if target == "mtx":
        rows, columns, entries = draw(st.sampled_from([
            (10**12, 5, 1), (5, 10**12, 1), (5, 5, 10**12), (10**6, 10**6, 10**7),
        ]))
        header = f"%%MatrixMarket matrix coordinate real general\n{rows} {columns} {entries}\n1 1 1\n"
        return Case("absurd_shape", "q.mtx", header.encode())
    if target == "mtx.array":
        side = draw(st.integers(200, 10**6))
        header = f"%%MatrixMarket matrix array real general\n{side} {side}\n1\n"
        return Case("absurd_shape", "q.mtx", header.encode())
    index = draw(st.integers(FUZZ_BUDGET.max_dense_floats, 10**18))
    return Case("absurd_shape", "q.csv", text(CSV_LINES + [f"{index},0,1"]))


@st.composite
def empty_inputs(draw):
    variant = draw(st.sampled_from(["file", "npy.rows", "npy.zeros", "csv.header", "csv.comments",
                                    "mtx", "npz.no_members", "scipy", "bundle", "keys"]))
    if variant == "file":
        return Case("empty", "e" + draw(st.sampled_from([".csv", ".npy", ".npz", ".mtx"])), b"")
    if variant == "npy.rows":
        return Case("empty", "e.npy", npy_bytes(np.zeros(draw(st.sampled_from([(0, 5), (4, 0), (0, 0, 3)])))))
    if variant == "npy.zeros":
        return Case("empty", "e.npy", npy_bytes(np.zeros((draw(st.integers(1, 5)), draw(st.integers(1, 5))))))
    if variant == "csv.header":
        return Case("empty", "e.csv", draw(st.sampled_from([b"row,col,value\n", b"\n\n", b"   \n"])))
    if variant == "csv.comments":
        return Case("empty", "e.csv", b"# only a comment\n# 0,0,1\n")
    if variant == "mtx":
        return Case("empty", "e.mtx", b"%%MatrixMarket matrix coordinate real general\n4 5 0\n")
    if variant == "npz.no_members":
        return Case("empty", "e.npz", npz_bytes({}))
    if variant == "scipy":
        members = {"format": np.array(b"csr"), "shape": np.array([4, 5]), "data": np.zeros(0),
                   "indices": np.zeros(0, np.int32), "indptr": np.zeros(5, np.int32)}
        return Case("empty", "e.npz", npz_bytes(members))
    if variant == "bundle":
        members = {**BUNDLE_MEMBERS, "query_indices": np.zeros((0, 3), np.int64),
                   "query_values": np.zeros(0, np.float32)}
        return Case("empty", "e.npz", npz_bytes(members))
    keys = draw(st.sampled_from([("k.csv", b""), ("k.csv", b"a,b\n"), ("k.npy", npy_bytes(np.zeros((0, 5))))]))
    return Case("empty", "q.csv", VALID_CSV, keys)


@st.composite
def bad_keys(draw):
    variant = draw(st.sampled_from(["ndim", "batch", "ragged", "text", "extension", "random"]))
    if variant == "ndim":
        shape = draw(st.sampled_from([(5,), (2, 2, 2, 2), ()]))
        return Case("bad_keys", "q.csv", VALID_CSV, ("k.npy", npy_bytes(np.ones(shape))))
    if variant == "batch":
        batched_queries = b"0,0,0,1\n1,1,1,2\n"  # B=2
        return Case("bad_keys", "b.csv", batched_queries,
                    ("k.npy", npy_bytes(np.ones((draw(st.integers(3, 6)), 4, 5)))))
    if variant == "ragged":
        lines = VALID_KEYS_CSV.decode().split()
        line = draw(st.integers(1, len(lines) - 1))
        lines[line] = ",".join(lines[line].split(",")[: draw(st.integers(1, 4))])
        return Case("bad_keys", "q.csv", VALID_CSV, ("k.csv", text(lines)))
    if variant == "text":
        lines = VALID_KEYS_CSV.decode().split()
        line = draw(st.integers(1, len(lines) - 1))
        word = draw(st.text(alphabet="abcxyz_", min_size=1, max_size=6))
        return Case("bad_keys", "q.csv", VALID_CSV, ("k.csv", text(with_value(lines, line, 0, word))))
    if variant == "extension":
        extension = draw(st.sampled_from([".mtx", ".npz", ".txt", ""]))
        return Case("bad_keys", "q.csv", VALID_CSV, ("k" + extension, VALID_KEYS_NPY))
    data = draw(st.binary(min_size=1, max_size=300))
    data = data if not data.startswith(b"\x93NUMPY") else b"x" + data
    return Case("bad_keys", "q.csv", VALID_CSV, ("k.npy", data))


FAMILIES = [truncated(), random_bytes(), unknown_extension(), wrong_dtype(), pickles(), non_finite(),
            bad_indices(), absurd_shapes(), empty_inputs(), bad_keys()]
FAMILY_NAMES = {"truncated", "random_bytes", "unknown_extension", "wrong_dtype", "pickle", "nan_inf",
                "bad_indices", "absurd_shape", "empty", "bad_keys"}


def upload(name, data):
    stream = io.BytesIO(data)
    stream.name = name
    return stream


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALID_FILES))
def test_the_unmutated_files_load(name):
    """The mutations below start from files that are valid, so the errors come from the mutation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        example = load_inputs(upload(name, VALID_FILES[name]), budget=FUZZ_BUDGET)
    assert example.nnz > 0
    load_inputs(upload("q.csv", VALID_CSV), keys=upload("k.npy", VALID_KEYS_NPY), budget=FUZZ_BUDGET)
    load_inputs(upload("q.csv", VALID_CSV), keys=upload("k.csv", VALID_KEYS_CSV), budget=FUZZ_BUDGET)


def test_every_malformed_file_raises_input_error_quickly_and_without_big_allocations():
    seen = collections.Counter()

    @settings(max_examples=FUZZ_CASES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(FAMILIES))
    def check(case):
        seen[case.family] += 1
        keys = None if case.keys is None else upload(*case.keys)
        tracemalloc.start()
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with pytest.raises(InputError) as caught:
                    load_inputs(upload(case.name, case.data), keys=keys, budget=FUZZ_BUDGET)
            elapsed = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        message = str(caught.value)
        assert message, "an InputError must say what was wrong"
        assert len(message) < MESSAGE_LIMIT, f"{case.family}: {len(message)} characters: {message}"
        named = case.keys[0] if case.keys is not None and case.keys[0] in message else case.name
        assert named in message, f"{case.family}: the message does not name the file: {message}"
        assert elapsed < TIME_LIMIT_S, f"{case.family} {case.name} took {elapsed:.2f} s"
        assert peak < PEAK_BYTES_LIMIT, f"{case.family} {case.name} allocated {peak:,} bytes"

    check()
    assert sum(seen.values()) >= 500
    assert set(seen) == FAMILY_NAMES, f"families not exercised: {FAMILY_NAMES - set(seen)}"
