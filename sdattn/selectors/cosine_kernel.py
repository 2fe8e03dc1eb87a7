"""The compiled loops of `cosine`'s sparse path: cosine scores of sparse query rows against a tile
of keys, kept as a running exact top-k per row, in Numba.

Imported only when the sparse path first runs, so `import sdattn` does not pay for Numba.
Compiled on first call and cached on disk (`cache=True`).
"""

import numba
import numpy as np


# Sums may be reassociated (vectorised norms) and multiply-adds fused; no flag that assumes the
# absence of NaN or infinity, which the ranking compares against.
_FAST = {"reassoc", "contract"}


@numba.njit(nogil=True, cache=True, inline="always")
def _insert(row_values, row_positions, count, score, position):
    """Puts `(score, position)` into a row's k sorted slots, below any equal score; a full row
    drops its last slot. Returns the new count of filled slots (the caller checks that the
    score beats a full row's k-th)."""
    k = row_values.shape[0]
    if count < k:
        slot = count
        count += 1
    else:
        slot = k - 1
    while slot > 0 and row_values[slot - 1] < score:
        row_values[slot] = row_values[slot - 1]
        row_positions[slot] = row_positions[slot - 1]
        slot -= 1
    row_values[slot] = score
    row_positions[slot] = position
    return count


@numba.njit(nogil=True, cache=True, fastmath=_FAST)
def score_keys(row_ptr, cols, vals, keys, key_valid, has_mask, start, stop, offset, tile,
               epsilon, best_values, best_positions, counts):
    """Folds keys `[start, stop)` of one batch item into each query row's running top-k.

    A query row with z stored values costs z·n multiply-adds against n keys, where a dense
    product costs D·n: the sparse query's few features are read, nothing else. Keys are taken a
    tile at a time, normalised and transposed into a `[D, tile]` buffer that stays in cache,
    so each stored value of a row adds one contiguous row of that buffer to the row's scores.

    Ranking follows TensorFlow's `top_k`: by decreasing score, the lower position first on
    ties. Keys arrive in increasing position and a full row takes a key only when it scores
    strictly above the row's k-th, so an equal score never displaces a lower position.

    Args:
        row_ptr: int64 `[R + 1]`, CSR row starts of the query rows.
        cols: int64 `[nnz]` feature of each stored value.
        vals: float32 `[nnz]` stored values, each row already divided by its norm.
        keys: float32 `[n, D]` raw keys of the item (this call's block of them).
        key_valid: bool `[n]`, read only when `has_mask`: False keys are never taken.
        has_mask: whether `key_valid` applies.
        start, stop: the keys of `keys` to fold in, `[start, stop)`.
        offset: added to a key's index in `keys` to give its position in the layer's input.
        tile: keys per tile.
        epsilon: added to each key's norm (an all-zero key scores 0, not NaN).
        best_values: float32 `[R, k]`, the rows' best scores so far, by decreasing score.
        best_positions: int32 `[R, k]`, their positions.
        counts: int32 `[R]`, filled slots per row (rows are full once they hold k).
    """
    rows = row_ptr.shape[0] - 1
    dim = keys.shape[1]
    k = best_values.shape[1]
    transposed = np.empty((dim, tile), np.float32)
    scores = np.empty(tile, np.float32)
    inverse = np.empty(tile, np.float32)
    for tile_start in range(start, stop, tile):
        n = min(tile, stop - tile_start)
        for i in range(n):  # each key's inverse norm, reading its row once
            squares = np.float32(0.0)
            for d in range(dim):
                value = keys[tile_start + i, d]
                squares += value * value
            inverse[i] = np.float32(1.0) / (np.sqrt(squares) + epsilon)
        # Unit keys, transposed to [D, n], 16 keys at a time: their 16 rows stay in the L1
        # cache while each feature's 16 values are written side by side.
        for block in range(0, n, 16):
            width = min(16, n - block)
            for d in range(dim):
                for j in range(width):
                    transposed[d, block + j] = keys[tile_start + block + j, d] * inverse[block + j]
        for r in range(rows):
            first, last = row_ptr[r], row_ptr[r + 1]
            if first == last:
                scores[:n] = 0.0
            else:
                # A 1-D view per feature: indexing the 2-D buffer in the inner loop kept LLVM
                # from vectorising it (6x slower).
                feature_row, value = transposed[cols[first]], vals[first]
                for i in range(n):
                    scores[i] = value * feature_row[i]
                for p in range(first + 1, last):
                    feature_row, value = transposed[cols[p]], vals[p]
                    for i in range(n):
                        scores[i] += value * feature_row[i]
            count = counts[r]
            row_values = best_values[r]
            row_positions = best_positions[r]
            kth = row_values[k - 1] if count == k else -np.inf
            # 64 scores at a time: a vectorised count of those above the row's k-th first, and
            # the scalar insertion only for a chunk that has some (once the row is full, few do).
            for chunk in range(0, n, 64):
                chunk_stop = min(chunk + 64, n)
                if count == k:
                    above = 0
                    for i in range(chunk, chunk_stop):
                        above += scores[i] > kth
                    if above == 0:
                        continue
                for i in range(chunk, chunk_stop):
                    score = scores[i]
                    if count == k and not score > kth:
                        continue
                    if has_mask and not key_valid[tile_start + i]:
                        continue
                    count = _insert(row_values, row_positions, count, score,
                                    offset + tile_start + i)
                    if count == k:
                        kth = row_values[k - 1]
            counts[r] = count


@numba.njit(nogil=True, cache=True)
def merge_into(best_values, best_positions, counts, more_values, more_positions, more_counts):
    """Merges another running top-k over *later* keys into `best_*`, with the same tie rule.

    Args:
        best_values, best_positions, counts: the running top-k `[R, k]`, `[R, k]`, `[R]`
            (updated).
        more_values, more_positions, more_counts: a top-k of the same rows over keys at higher
            positions, by decreasing score.
    """
    rows, k = best_values.shape
    for r in range(rows):
        count = counts[r]
        row_values = best_values[r]
        row_positions = best_positions[r]
        for j in range(more_counts[r]):
            score = more_values[r, j]
            if count == k and not score > row_values[k - 1]:
                break  # the rest score no higher
            count = _insert(row_values, row_positions, count, score, more_positions[r, j])
        counts[r] = count
