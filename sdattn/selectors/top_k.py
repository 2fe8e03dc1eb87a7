"""Top-k helpers for selection: exact top-k over masked scores, grouped and streamed over key blocks.
Pure tensor functions on `keras.ops`; on TF's CPU the rows go through `cpu_top_k`'s compiled kernel."""

import math

import keras
from keras import ops

from sdattn import backend
from sdattn.selectors import cpu_top_k

# Blocks reduced to their top-k before they are merged into the running top-k: one top-k over
# (8 + 1)·k columns costs less than eight over 2·k, each with its fixed cost per row, and the
# pending blocks hold only 8·k columns per row (benchmarks/NOTES.md, "Merging blocks").
_MERGE_EVERY = 8


def grouped_top_k(scores, k, group_size=None):
    """Exact top-k over the last axis in two cheap stages instead of one long `top_k`.

    Keys are cut into groups of `group_size`; the k groups with the largest maxima contain
    every top-k element (each top-k element's group has a maximum at least as large as the
    k-th largest element, and at most k groups can), so a top-k over the group maxima and a
    top-k over the k·group_size gathered candidates give the exact result. TF's CPU top-k is
    slow per element on long rows; a reduce-max is not.

    Args:
        scores: float `[..., n]` with static rank and static n.
        k: Python int, at most n.
        group_size: keys per group; defaults to the power of two nearest sqrt(n / k).

    Returns:
        `(values, indices)`, `[..., k]`, by decreasing value; ties go to the lower index.
    """
    num_keys = scores.shape[-1]
    if group_size is None:
        group_size = 2 ** max(0, round(math.log2(math.sqrt(max(num_keys, 1) / max(k, 1)))))
    num_groups = -(-num_keys // group_size)
    # Elsewhere than TF's CPU one long top-k is fast already (XLA's and the GPUs' sort).
    if group_size < 2 or num_groups < 2 * k or len(scores.shape) == 0 or backend.NAME != "tensorflow":
        return ops.top_k(scores, k=k)
    rank = len(scores.shape)
    padding = num_groups * group_size - num_keys
    if padding:
        scores = ops.pad(scores, [[0, 0]] * (rank - 1) + [[0, padding]], constant_values=-math.inf)
    leading = backend.dynamic_shape(scores)[:-1]
    grouped = ops.reshape(scores, leading + (num_groups, group_size))  # [..., G, g]
    _, top_groups = ops.top_k(ops.max(grouped, axis=-1), k=k, sorted=False)  # [..., k]
    # Candidates in increasing key order, so that the final top-k breaks ties by lower index.
    top_groups = ops.sort(top_groups, axis=-1)
    candidates = backend.gather_batched(grouped, top_groups, rank - 1)  # [..., k, g]
    candidates = ops.reshape(candidates, leading + (k * group_size,))  # [..., k·g]
    values, positions = ops.top_k(candidates, k=k)
    indices = backend.gather_batched(top_groups, positions // group_size, rank - 1) * group_size + positions % group_size
    return values, indices


def masked_scores(scores, mask):
    """Scores with masked keys at `-inf` (mask None: unchanged)."""
    if mask is None:
        return scores
    return ops.where(mask, scores, ops.cast(-math.inf, scores.dtype))


def streamed_top_k(block_scores, num_keys, block_size, k, return_values=False, cpu_kernel=True):
    """Exact top-k over keys `[0, num_keys)` scored one block at a time, with a running merge.

    Memory stays O(M·k·_MERGE_EVERY + block) whatever N is: each block is reduced to its top-k
    before the next block is scored, and every `_MERGE_EVERY` blocks the reduced blocks are
    merged into the running top-k, with one top-k over their concatenation.

    Args:
        block_scores: callable `(start, stop)` → float `[B, S, M, stop - start]`, masked keys
            already at `-inf`.
        num_keys: N, a Python int.
        block_size: keys per block.
        k: Python int, at most `num_keys`.
        return_values: also return the selected scores.
        cpu_kernel: allow the compiled CPU top-k (see `masked_top_k`).

    Returns:
        int32 `[B, S, M, k]` key positions, by decreasing score; with `return_values`,
        `(scores, positions)`, each `[B, S, M, k]`.
    """
    # The running top-k, then the blocks reduced since, in key order: in their concatenation an
    # equal score at a lower position has the lower key, so ties still go to the lower key.
    pending_values, pending_indices = [], []
    for start in range(0, num_keys, block_size):
        stop = min(start + block_size, num_keys)
        # In a graph every block is ready at once; without this dependency TF may compute all
        # blocks' scores before reducing any, and memory would grow with N after all.
        scores = backend.ordered(pending_values[-1:], lambda: block_scores(start, stop))
        values, indices = masked_top_k(scores, min(k, stop - start), cpu_kernel=cpu_kernel)
        pending_values.append(values)
        pending_indices.append(indices + start)
        if len(pending_values) > _MERGE_EVERY:
            best_values, best_indices = _merged_top_k(pending_values, pending_indices, k, cpu_kernel)
            pending_values, pending_indices = [best_values], [best_indices]
    best_values, best_indices = _merged_top_k(pending_values, pending_indices, k, cpu_kernel)
    return (best_values, best_indices) if return_values else best_indices


def _merged_top_k(values, indices, k, cpu_kernel=True):
    """The top-k of several `[B, S, M, k_i]` (values, key positions) pairs, concatenated in key
    order: `(values, positions)`, `[B, S, M, min(k, Σ k_i)]` each."""
    if len(values) == 1:
        return values[0], indices[0]
    merged_values = ops.concatenate(values, axis=-1)  # [B, S, M, Σ k_i]
    merged_indices = ops.concatenate(indices, axis=-1)  # [B, S, M, Σ k_i]
    best_values, order = masked_top_k(merged_values, min(k, merged_values.shape[-1]), cpu_kernel=cpu_kernel)
    return best_values, backend.gather_batched(merged_indices, order, 3)


def masked_top_k(scores, k, mask=None, cpu_kernel=True):
    """Top-k key positions per row, never preferring a masked key over an allowed one.

    A pure function: masked keys score `-inf`, so they fill slots only when fewer than k keys
    are allowed; the layer then marks those slots invalid.

    Args:
        scores: float `[B, S, M, n]` relevance scores.
        k: Python int, at most n.
        mask: bool tensor broadcastable to `scores`, or None.
        cpu_kernel: allow `cpu_top_k`'s compiled kernel where it applies (False: `keras.ops` only).

    Returns:
        `(values, indices)`, each `[B, S', M, k]` (S' = S broadcast with the mask's heads);
        indices are int32 positions in `[0, n)`, ordered by decreasing score, lower index first
        on ties.
    """
    scores = masked_scores(scores, mask)
    dtype = keras.backend.standardize_dtype(scores.dtype)
    if backend.NAME == "jax" and dtype in ("bfloat16", "float16"):
        # XLA's CPU top-k is 40× slower on half precision (1,024 rows of 4,096); the float32
        # copy is exact, so the ranking and its ties are the same.
        values, indices = masked_top_k(ops.cast(scores, "float32"), k, cpu_kernel=cpu_kernel)
        return ops.cast(values, dtype), indices
    if scores.shape[-1] is None:
        return ops.top_k(scores, k=k)
    if cpu_kernel and cpu_top_k.applies(scores, k):
        return cpu_top_k.top_k(scores, k)
    return grouped_top_k(scores, k)
