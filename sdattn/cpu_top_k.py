"""Exact top-k over long rows on the CPU, with a compiled kernel instead of `tf.math.top_k`.

TF's CPU top-k pushes every element of a row through a heap: about 2 µs per row of 256 scores
and 8 µs per row of 4,096 on this project's 2-core machines, which made exact per-head
selection (`dot`: B·H·M rows) cost more than the whole of Keras' dense attention at N = 4,096.
The kernel (`top_k_kernel.top_k_rows`) reads each row once, keeps only the scores above a
cheap lower bound on the k-th largest, and sorts those: 3–4× faster than TF's per-row heap,
with the same result, ties included.

It runs outside TF's graph (through `tf.numpy_function` in a `tf.function`), so it is used
only where that costs nothing: TF on the CPU, no XLA compilation, float32 or float64 scores.
Elsewhere `sdattn.selection.grouped_top_k` runs in TF. `set_enabled(False)` (or the
environment variable `SDATTN_CPU_TOP_K=0`) turns it off, for example before exporting a graph
with `tf.saved_model`, which cannot hold Python code.
"""

import functools
import math
import os

import numpy as np
import tensorflow as tf

from sdattn import distinct, workers

# Below k·4 keys a row is short enough that TF's top_k costs little.
_MIN_KEYS_PER_SLOT = 4
# Rows per thread below which splitting the rows over threads costs more than it saves.
_MIN_ROWS_PER_THREAD = 64

_enabled = os.environ.get("SDATTN_CPU_TOP_K", "1") != "0"


def set_enabled(enabled):
    """Turns the compiled kernel on or off for all later traces and eager calls.

    Args:
        enabled: bool. Off, exact selection always runs `tf.math.top_k`-based code in TF.
    """
    global _enabled
    _enabled = bool(enabled)


def is_enabled():
    """Whether `set_enabled` (or `SDATTN_CPU_TOP_K`) leaves the kernel on."""
    return _enabled


@functools.cache
def _tf_sees_gpu():
    return bool(tf.config.list_logical_devices("GPU"))


@functools.cache
def _kernel():
    """The compiled `top_k_rows`, or None when Numba cannot be imported."""
    try:
        from sdattn import top_k_kernel
    except ImportError:  # pragma: no cover - numba is a runtime requirement
        return None
    return top_k_kernel.top_k_rows


def applies(scores, k):
    """Whether `top_k_indices` should replace TF's top-k for these scores.

    Args:
        scores: a float tensor `[..., n]` about to be reduced to its top k.
        k: Python int.

    Returns:
        bool: the kernel is enabled and importable, n is static and at least 4·k, the dtype is
        float32 or float64, TF sees no GPU (whose own top-k is fast), and the graph being
        built will not be compiled by XLA (which cannot call Python).
    """
    num_keys = scores.shape[-1] if scores.shape.rank else None
    return (_enabled and num_keys is not None and num_keys >= _MIN_KEYS_PER_SLOT * k
            and scores.dtype in (tf.float32, tf.float64) and not _tf_sees_gpu()
            and not distinct.in_xla_context() and _kernel() is not None)


def _num_groups(num_keys, k):
    """G for the kernel: k buckets of the power of two groups at or above sqrt(n / k) each,
    never more than n groups. Measured best (single thread, random rows) from n = 1,024 to
    65,536 and k = 8 to 128: at n = 4,096, k = 32 that is 512 groups, 3.8 µs per row."""
    per_bucket = 2 ** max(0, math.ceil(math.log2(math.sqrt(num_keys / k))))
    return k * min(per_bucket, num_keys // k)


def top_k_indices_numpy(scores, k):
    """Positions of the k largest scores of each row, ordered as `tf.math.top_k` orders them.

    Rows are split over `workers.parallel_map`; the kernel releases the GIL.

    Args:
        scores: float32 or float64 array `[..., n]`, n >= k.
        k: Python int.

    Returns:
        int32 array `[..., k]`.
    """
    scores = np.asarray(scores)
    leading, num_keys = scores.shape[:-1], scores.shape[-1]
    rows = np.ascontiguousarray(scores.reshape(-1, num_keys))  # [R, n]
    indices = np.empty((rows.shape[0], k), np.int32)  # [R, k]
    num_groups = _num_groups(num_keys, k)
    kernel = _kernel()
    chunks = max(1, min(workers.WORKERS, rows.shape[0] // _MIN_ROWS_PER_THREAD))
    if chunks == 1:
        kernel(rows, k, num_groups, indices)
    else:
        bounds = np.linspace(0, rows.shape[0], chunks + 1).astype(int)
        workers.parallel_map(
            lambda start, stop: kernel(rows[start:stop], k, num_groups, indices[start:stop]),
            bounds[:-1], bounds[1:])
    return indices.reshape(leading + (k,))  # [..., k]


def top_k_indices(scores, k):
    """`top_k_indices_numpy` as a TF op: eagerly on the tensor's buffer, or through
    `tf.numpy_function` inside a `tf.function`. Check `applies(scores, k)` first.

    Args:
        scores: float tensor `[..., n]` with static n >= k.
        k: Python int.

    Returns:
        int32 tensor `[..., k]` (no gradient: gather the values from `scores` to get one).
    """
    if tf.executing_eagerly():
        return tf.constant(top_k_indices_numpy(np.asarray(scores), k))  # np.asarray: no copy
    indices = tf.numpy_function(functools.partial(top_k_indices_numpy, k=k), [scores], tf.int32,
                                stateful=False)
    return tf.ensure_shape(indices, scores.shape[:-1].concatenate([k]))
