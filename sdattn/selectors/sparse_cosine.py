"""`cosine`'s sparse path: exact cosine top-k of sparse query rows, scored from their stored values.

A dense product scores each (query, key) pair with D multiply-adds, and its cost is all of
`cosine`'s selection: about a third of dense attention's, so `cosine` could never be more than
about 3× faster than Keras' MHA (benchmarks/NOTES.md, "`cosine`"). A sparse query row with z
stored values needs z of them (8 of 256 on Config P; a TF-IDF row of a paragraph, a few dozen
of thousands). `cosine_kernel.score_keys` does exactly that and keeps a running top-k per row,
so no `[B, M, N]` score tensor is ever written.

It runs on the host (the TF backend's host callback in a graph) where the CPU top-k kernel may
(`cpu_top_k.available()`), one key block per call so that only that block is ever copied out of
TF. The running top-k travels between calls packed in one float64 array `[B, M, 2k + 1]`: k
scores, k positions (exact in float64), and the count of filled slots.
"""

import numpy as np

from sdattn import workers

#: Keys normalised and transposed at a time: a `[D, tile]` float32 buffer of 1 MB at D = 256,
#: which stays in a core's cache while every query row is scored against it.
TILE_KEYS = 1024


def initial_state(batch, num_queries, k):
    """The packed running top-k of no keys: `[B, M, 2k + 1]` float64."""
    state = np.zeros((batch, num_queries, 2 * k + 1), np.float64)
    state[..., :k] = -np.inf
    return state


def _csr(indices, values, batch, num_queries):
    """Row starts, features and values `[B·M + 1]`, `[nnz]`, `[nnz]` of a sparse `[B, M, D]`
    query given as COO `indices [nnz, 3]` and `values [nnz]` (any order; duplicates add up)."""
    indices = np.asarray(indices, np.int64).reshape(-1, 3)
    rows = indices[:, 0] * num_queries + indices[:, 1]  # [nnz]
    order = np.argsort(rows, kind="stable")
    row_ptr = np.zeros(batch * num_queries + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=batch * num_queries), out=row_ptr[1:])
    return (row_ptr, np.ascontiguousarray(indices[order, 2]),
            np.ascontiguousarray(np.asarray(values, np.float32)[order]))


def fold_block(indices, values, keys, state, *, offset, epsilon, key_valid=None):
    """Folds one block of keys into the running top-k of every query row.

    Args:
        indices: int64 `[nnz, 3]` (batch, row, feature) of the sparse query.
        values: float32 `[nnz]` its values, each row already divided by its norm (plus epsilon).
        keys: float32 `[B, n, D]`, this block of raw keys.
        state: float64 `[B, M, 2k + 1]` from `initial_state` or the previous block.
        offset: the position of the block's first key.
        epsilon: added to each key's norm.
        key_valid: bool `[B, n]` or None; False keys are never selected.

    Returns:
        The new state, `[B, M, 2k + 1]`.
    """
    from sdattn.selectors import cosine_kernel

    batch, num_queries, width = state.shape
    k = (width - 1) // 2
    keys = np.ascontiguousarray(keys, np.float32)
    num_keys = keys.shape[1]
    row_ptr, cols, vals = _csr(indices, values, batch, num_queries)
    has_mask = key_valid is not None
    valid = (np.ascontiguousarray(key_valid, np.bool_) if has_mask
             else np.ones((batch, 1), np.bool_))
    # One task per batch item while there are as many items as threads; with fewer, each
    # item's keys are cut into contiguous ranges, each keeping its own top-k, merged afterwards
    # in key order (so ties still go to the lower position). A range's own top-k costs more
    # insertions than one running top-k, so keys are cut only to keep every thread busy.
    parts = max(1, min(-(-workers.WORKERS // batch), -(-num_keys // TILE_KEYS)))
    bounds = np.linspace(0, num_keys, parts + 1).astype(np.int64)
    tasks = [(b, p) for b in range(batch) for p in range(parts)]
    results = {}

    def run(b, p):
        rows = slice(b * num_queries, (b + 1) * num_queries + 1)
        first, last = row_ptr[b * num_queries], row_ptr[(b + 1) * num_queries]
        if p == 0:  # the first range continues the running top-k
            best_values = state[b, :, :k].astype(np.float32)
            best_positions = state[b, :, k:2 * k].astype(np.int32)
            counts = state[b, :, 2 * k].astype(np.int32)
        else:
            best_values = np.full((num_queries, k), -np.inf, np.float32)
            best_positions = np.zeros((num_queries, k), np.int32)
            counts = np.zeros(num_queries, np.int32)
        cosine_kernel.score_keys(
            row_ptr[rows] - first, cols[first:last], vals[first:last],
            keys[b], valid[b], has_mask, bounds[p], bounds[p + 1], offset, TILE_KEYS,
            np.float32(epsilon), best_values, best_positions, counts)
        results[b, p] = (best_values, best_positions, counts)

    workers.parallel_map(run, *zip(*tasks))
    new_state = np.empty_like(state)
    for b in range(batch):
        best_values, best_positions, counts = results[b, 0]
        for p in range(1, parts):
            cosine_kernel.merge_into(best_values, best_positions, counts, *results[b, p])
        new_state[b, :, :k] = best_values
        new_state[b, :, k:2 * k] = best_positions
        new_state[b, :, 2 * k] = counts
    return new_state


def positions(state):
    """The selected positions `[B, M, k]` int32 of a final state, -1 in slots left empty."""
    k = (state.shape[-1] - 1) // 2
    filled = np.arange(k)[None, None, :] < state[..., 2 * k:2 * k + 1]
    return np.where(filled, state[..., k:2 * k], -1).astype(np.int32)
