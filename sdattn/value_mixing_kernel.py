"""The compiled loop of `value_mixing`: each (query, head) row's weighted sum of its selected raw
value rows, in Numba.

Imported only when the kernel is first used, so `import sdattn` does not pay for Numba.
Compiled on first call and cached on disk (`cache=True`).
"""

import numba
import numpy as np

# Selected rows summed in one pass over the output row: eight rows' loads in flight and their
# multiply-adds per element keep the accumulator in registers for an eighth of the passes
# (benchmarks/NOTES.md, "Exact per-head `dot`": eight measured faster than four).
_ROWS_PER_PASS = 8


@numba.njit(nogil=True, cache=True)
def mix_rows(tokens, indices, weights, mixed, start, stop):
    """Writes `mixed[h, b, m] = Σ_j weights[b, h, m, j] · tokens[b, indices[b, h, m, j]]` for the
    query rows `b·M + m` in `[start, stop)`.

    Args:
        tokens: float32 or float64 `[B, N, D]`, C-contiguous.
        indices: int32 `[B, H, M, k]`, positions in `[0, N)`.
        weights: `[B, H, M, k]` of the tokens' dtype.
        mixed: `[H, B, M, D]` of the tokens' dtype, written (head-major: the value kernel is then
            applied by one batched matmul over the heads, with no transpose of the sums).
        start, stop: the range of flat query rows `b·M + m` to write.
    """
    _, heads, num_queries, slots = indices.shape
    depth = tokens.shape[2]
    total = np.zeros(depth, tokens.dtype)
    for flat in range(start, stop):
        b = flat // num_queries
        m = flat - b * num_queries
        rows = tokens[b]
        for h in range(heads):
            positions = indices[b, h, m]
            row_weights = weights[b, h, m]
            total[:] = 0
            j = 0
            while j + _ROWS_PER_PASS <= slots:
                row0, row1 = rows[np.uint64(positions[j])], rows[np.uint64(positions[j + 1])]
                row2, row3 = rows[np.uint64(positions[j + 2])], rows[np.uint64(positions[j + 3])]
                row4, row5 = rows[np.uint64(positions[j + 4])], rows[np.uint64(positions[j + 5])]
                row6, row7 = rows[np.uint64(positions[j + 6])], rows[np.uint64(positions[j + 7])]
                w0, w1, w2, w3 = row_weights[j], row_weights[j + 1], row_weights[j + 2], row_weights[j + 3]
                w4, w5, w6, w7 = row_weights[j + 4], row_weights[j + 5], row_weights[j + 6], row_weights[j + 7]
                for d in range(depth):
                    total[d] += ((w0 * row0[d] + w1 * row1[d] + w2 * row2[d] + w3 * row3[d])
                                 + (w4 * row4[d] + w5 * row5[d] + w6 * row6[d] + w7 * row7[d]))
                j += _ROWS_PER_PASS
            while j < slots:
                row0, w0 = rows[np.uint64(positions[j])], row_weights[j]
                for d in range(depth):
                    total[d] += w0 * row0[d]
                j += 1
            mixed[h, b, m] = total
