"""Exact top-k over long rows on the CPU, with a compiled kernel instead of TensorFlow's top-k.

TF's CPU top-k pushes every element of a row through a heap, which made exact per-head
selection (`dot`: B·H·M rows) cost more than the whole of Keras' dense attention at N = 4,096.
The kernel (`top_k_kernel.top_k_rows`) reads each row once, keeps only the scores above a cheap
lower bound on the k-th largest, and sorts those, with the same result, ties included
(per-row costs against TF's: benchmarks/NOTES.md, "CPU top-k").

It runs outside TF's graph (through the TF backend's host callback in a TF graph), so it
is used only where that costs nothing: TF on the CPU, no XLA compilation, float32 or float64
scores. On JAX, XLA's own top-k runs instead.
A call with at most `_SORT_MAX_SCORES` scores is ranked by a NumPy argsort instead, so small
inputs never load Numba.
Elsewhere `sdattn.selectors.top_k.grouped_top_k` runs in `keras.ops`. `set_enabled(False)` (or the
environment variable `SDATTN_CPU_TOP_K=0`) turns it off, for example before exporting a graph
as a TensorFlow SavedModel, which cannot hold Python code.
"""

import functools
import importlib.util
import math
import os

import keras
import numpy as np

from sdattn import backend, workers

# Below k·4 keys a row is short enough that TF's top_k costs little.
_MIN_KEYS_PER_SLOT = 4
# Rows per thread below which splitting the rows over threads costs more than it saves.
_MIN_ROWS_PER_THREAD = 64
# Up to this many scores per call, a stable NumPy argsort ranks them instead (well under a
# millisecond): small inputs, such as the app's defaults, then never load Numba, whose first
# call in a process costs far more than that (seconds when it compiles, once per install).
_SORT_MAX_SCORES = 2**14

_enabled = os.environ.get("SDATTN_CPU_TOP_K", "1") != "0"


def set_enabled(enabled):
    """Turns the compiled kernel on or off for all later traces and eager calls.

    Args:
        enabled: bool. Off, exact selection always runs `keras.ops.top_k`-based code.
    """
    global _enabled
    _enabled = bool(enabled)


def is_enabled():
    """Whether `set_enabled` (or `SDATTN_CPU_TOP_K`) leaves the kernel on."""
    return _enabled


@functools.cache
def _numba_installed():
    return importlib.util.find_spec("numba") is not None


def _kernel():
    """The compiled `top_k_rows` (imports Numba on first use)."""
    from sdattn.selectors import top_k_kernel

    return top_k_kernel.top_k_rows


def available():
    """Whether the kernel may run in the graph being built (or eagerly): enabled, Numba
    installed, the backend is TF (JAX always compiles with XLA) and sees no GPU (whose own
    top-k is fast), and no XLA compilation (which cannot call Python)."""
    return (_enabled and backend.NAME == "tensorflow" and not backend.sees_accelerator()
            and not backend.in_xla_context() and _numba_installed())


def applies(scores, k):
    """Whether `top_k` should replace TF's top-k for these scores.

    Args:
        scores: a float tensor `[..., n]` about to be reduced to its top k.
        k: Python int.

    Returns:
        bool: the kernel is enabled and Numba installed, n is static and at least 4·k, the dtype is
        float32 or float64, TF sees no GPU (whose own top-k is fast), and the graph being
        built will not be compiled by XLA (which cannot call Python).
    """
    num_keys = scores.shape[-1] if len(scores.shape) else None
    return (num_keys is not None and num_keys >= _MIN_KEYS_PER_SLOT * k
            and keras.backend.standardize_dtype(scores.dtype) in ("float32", "float64") and available())


#: Whether the graph being built will be compiled by XLA, which cannot call Python.
in_xla_context = backend.in_xla_context


def _num_groups(num_keys, k):
    """G for the kernel: k buckets of the power of two groups at or above sqrt(n / k) each,
    never more than n groups: at n = 4,096, k = 32 that is 512 groups. This size measured
    best from n = 1,024 to 65,536 and k = 8 to 128 (benchmarks/NOTES.md, "CPU top-k")."""
    per_bucket = 2 ** max(0, math.ceil(math.log2(math.sqrt(num_keys / k))))
    return k * min(per_bucket, num_keys // k)


def top_k_numpy(scores, k):
    """The k largest scores of each row and their positions, as TensorFlow's `top_k` gives them.

    Up to `_SORT_MAX_SCORES` scores are ranked by a stable argsort (`_sorted_top_k`); more go
    to the compiled kernel (`_compiled_top_k`).

    Args:
        scores: float32 or float64 array `[..., n]`, n >= k.
        k: Python int.

    Returns:
        `(values, indices)`: `[..., k]` of the scores' dtype, and int32 `[..., k]`.
    """
    scores = np.asarray(scores)
    leading, num_keys = scores.shape[:-1], scores.shape[-1]
    rows = np.ascontiguousarray(scores.reshape(-1, num_keys))  # [R, n]
    top_k_of_rows = _sorted_top_k if rows.size <= _SORT_MAX_SCORES else _compiled_top_k
    values, indices = top_k_of_rows(rows, k)  # [R, k] each
    return values.reshape(leading + (k,)), indices.reshape(leading + (k,))  # [..., k] each


def _sorted_top_k(rows, k):
    """`top_k_numpy` of `[R, n]` rows by a stable argsort of the negated scores (decreasing
    score, the lower position first on ties)."""
    indices = np.argsort(-rows, axis=-1, kind="stable")[:, :k].astype(np.int32)  # [R, k]
    return np.take_along_axis(rows, indices, axis=-1), indices


def _compiled_top_k(rows, k):
    """`top_k_numpy` of C-contiguous `[R, n]` rows with the kernel, the rows split over
    `workers.parallel_map` (the kernel releases the GIL)."""
    values = np.empty((rows.shape[0], k), rows.dtype)  # [R, k]
    indices = np.empty((rows.shape[0], k), np.int32)  # [R, k]
    num_groups = _num_groups(rows.shape[1], k)
    kernel = _kernel()
    workers.parallel_ranges(
        lambda start, stop: kernel(rows[start:stop], k, num_groups, values[start:stop], indices[start:stop]),
        rows.shape[0], _MIN_ROWS_PER_THREAD)
    return values, indices


def top_k(scores, k):
    """`top_k_numpy` as a TF op, with TensorFlow's `top_k` gradient: eagerly on the tensor's
    buffer, or through a host callback inside a TF graph (`sdattn.backend.tensorflow`). Check `applies` first.

    Args:
        scores: float tensor `[..., n]` with static n >= k.
        k: Python int.

    Returns:
        `(values, indices)`, `[..., k]` each; the values' gradient flows to `scores` at `indices`.
    """
    return backend.cpu_top_k(scores, k, top_k_numpy)
