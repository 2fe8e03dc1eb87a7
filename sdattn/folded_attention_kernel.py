"""The compiled loop of `folded_attention`: softmax attention of folded queries over their selected
raw rows, in Numba.

Imported only when the kernel is first used, so `import sdattn` does not pay for Numba.
Compiled on first call and cached on disk (`cache=True`).
"""

import numba
import numpy as np

# exp(x) for x <= 0 as Cephes' expf computes it (about 1 ulp): x = n·ln 2 + r, |r| <= ln 2 / 2,
# e^r by a degree-7 polynomial and 2^n from the float's exponent bits. Unlike a call to the C
# library's expf, LLVM vectorises it.
_LOG2E = np.float32(1.44269504088896341)
_LN2_HIGH = np.float32(0.693359375)
_LN2_LOW = np.float32(-2.12194440e-4)
_LOWEST = np.float32(-87.0)  # e^-87 is still a normal float32; below, the weight is that
_P0, _P1, _P2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
_P3, _P4, _P5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)
_ZERO = np.float32(0.0)

# Selected rows read side by side in the logits and mixing loops: several rows' loads in flight
# at once hide part of the memory's latency (the rows lie at random positions), and in the
# mixing loop the head's sum is loaded and stored once per pass. The logits took 8-9% less
# with eight rows than with four; the mixing the same (benchmarks/NOTES.md, "The floor").
_LOGIT_ROWS_PER_PASS = 8
_ROWS_PER_PASS = 4


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _logits(query_heads, rows, positions, logits):
    """`logits[h, j] = query_heads[h] · rows[positions[j]]`, eight rows at a time."""
    heads, depth = query_heads.shape
    slots = positions.shape[0]
    j = 0
    while j + _LOGIT_ROWS_PER_PASS <= slots:
        key0, key1 = rows[np.uint64(positions[j])], rows[np.uint64(positions[j + 1])]
        key2, key3 = rows[np.uint64(positions[j + 2])], rows[np.uint64(positions[j + 3])]
        key4, key5 = rows[np.uint64(positions[j + 4])], rows[np.uint64(positions[j + 5])]
        key6, key7 = rows[np.uint64(positions[j + 6])], rows[np.uint64(positions[j + 7])]
        for h in range(heads):
            query = query_heads[h]
            t0, t1, t2, t3, t4, t5, t6, t7 = _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO, _ZERO
            for d in range(depth):
                q = query[d]
                t0 += q * key0[d]
                t1 += q * key1[d]
                t2 += q * key2[d]
                t3 += q * key3[d]
                t4 += q * key4[d]
                t5 += q * key5[d]
                t6 += q * key6[d]
                t7 += q * key7[d]
            logits[h, j], logits[h, j + 1], logits[h, j + 2], logits[h, j + 3] = t0, t1, t2, t3
            logits[h, j + 4], logits[h, j + 5], logits[h, j + 6], logits[h, j + 7] = t4, t5, t6, t7
        j += _LOGIT_ROWS_PER_PASS
    while j < slots:
        key = rows[np.uint64(positions[j])]
        for h in range(heads):
            query = query_heads[h]
            total = _ZERO
            for d in range(depth):
                total += query[d] * key[d]
            logits[h, j] = total
        j += 1


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _softmax(logits, allowed, two_to):
    """`logits` (one head's slots) replaced by its softmax over the allowed slots, 0 at the
    others; all 0 when no slot is allowed. `two_to` (int32 scratch as long) holds 2^n."""
    slots = logits.shape[0]
    largest = np.float32(-np.inf)
    for j in range(slots):
        largest = logits[j] if (allowed[j] and logits[j] > largest) else largest
    if largest == -np.inf:
        logits[:] = 0
        return
    exponent = two_to.view(np.int32)
    for j in range(slots):
        x = logits[j] - largest
        x = x if x > _LOWEST else _LOWEST
        n = np.floor(x * _LOG2E + _HALF)
        r = x - n * _LN2_HIGH - n * _LN2_LOW
        p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
        logits[j] = p * r * r + r + _ONE
        exponent[j] = (np.int32(n) + np.int32(127)) << np.int32(23)
    total = _ZERO
    for j in range(slots):
        weight = logits[j] * two_to[j] if allowed[j] else _ZERO
        logits[j] = weight
        total += weight
    inverse = _ONE / total
    for j in range(slots):
        logits[j] *= inverse


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _mix(weights, rows, positions, out):
    """`out[h] = Σ_j weights[h, j] · rows[positions[j]]`, four rows at a time."""
    heads, depth = out.shape
    slots = positions.shape[0]
    out[:] = 0
    j = 0
    while j + _ROWS_PER_PASS <= slots:
        value0, value1 = rows[np.uint64(positions[j])], rows[np.uint64(positions[j + 1])]
        value2, value3 = rows[np.uint64(positions[j + 2])], rows[np.uint64(positions[j + 3])]
        for h in range(heads):
            w0, w1, w2, w3 = weights[h, j], weights[h, j + 1], weights[h, j + 2], weights[h, j + 3]
            total = out[h]
            for d in range(depth):
                total[d] += w0 * value0[d] + w1 * value1[d] + w2 * value2[d] + w3 * value3[d]
        j += _ROWS_PER_PASS
    while j < slots:
        value = rows[np.uint64(positions[j])]
        for h in range(heads):
            w = weights[h, j]
            total = out[h]
            for d in range(depth):
                total[d] += w * value[d]
        j += 1


@numba.njit(nogil=True, cache=True)
def attend_rows(folded, keys, values, indices, valid, bias, start, stop, scores, mixed):
    """Softmax attention of each folded query over its selected raw rows, for the query rows
    `b·M + m` in `[start, stop)`.

    With x_j = `keys[b, indices[b, m, j]]`: logits[h, j] = folded[h, b, m]·x_j + bias[b, h, m, j];
    scores[b, m, h] = their softmax over the valid slots (0 at the others, and everywhere in a
    row without a valid slot); mixed[h, b, m] = Σ_j scores[b, m, h, j] · values[b, indices[b, m, j]].
    The logits are computed over the rows where they lie (no gathered copy), then the softmax,
    then the mixing, whose rows are still in cache.

    Args:
        folded: float32 `[H, B, M, Dk]`, the queries with the key kernel folded in (head-major,
            as one batched matmul over the heads writes them).
        keys: float32 `[B, N, Dk]`; values: float32 `[B, N, Dv]` (may be `keys`).
        indices: int32 `[B, M, k]`, in-range positions shared by the heads.
        valid: bool `[B, S, M, k]`, S = 1 or H.
        bias: float32 `[B, S, M, k]` (S = 1 or H) added to the logits, or `[0, 1, 1, 1]` for none.
        start, stop: the query rows to compute.
        scores: float32 `[B, M, H, k]`, written.
        mixed: float32 `[H, B, M, Dv]`, written (head-major, as the value kernel's batched
            matmul reads them).
    """
    heads, num_queries = folded.shape[0], folded.shape[2]
    slots = indices.shape[2]
    valid_heads = valid.shape[1]
    has_bias = bias.shape[0] > 0
    bias_heads = bias.shape[1]
    two_to = np.empty(slots, np.float32)
    # A row's heads lie B·M rows apart in `folded` and `mixed` (a multiple of 4 KB on Config P),
    # so in place they would all fall in the same cache sets: they are copied side by side first.
    query_heads = np.empty((heads, folded.shape[3]), np.float32)  # [H, Dk]
    mixed_heads = np.empty((heads, mixed.shape[3]), np.float32)  # [H, Dv]
    for row in range(start, stop):
        b = row // num_queries
        m = row - b * num_queries
        positions = indices[b, m]
        weights = scores[b, m]  # [H, k]: the logits until the softmax
        for h in range(heads):
            query_heads[h] = folded[h, b, m]
        _logits(query_heads, keys[b], positions, weights)
        for h in range(heads):
            if has_bias:
                weights[h] += bias[b, h if bias_heads > 1 else 0, m]
            _softmax(weights[h], valid[b, h if valid_heads > 1 else 0, m], two_to)
        _mix(weights, values[b], positions, mixed_heads)
        for h in range(heads):
            mixed[h, b, m] = mixed_heads[h]
