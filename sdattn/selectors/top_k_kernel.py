"""The compiled loop of `cpu_top_k`: exact top-k of each row of a 2-D array, in Numba.

Imported only when the kernel is first used, so `import sdattn` does not pay for Numba.
Compiled on first call and cached on disk (`cache=True`).
"""

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def top_k_rows(scores, k, num_groups, values, indices):
    """Writes each row's k largest scores and their positions, exactly as TensorFlow's `top_k` orders
    them: by decreasing score, the lower position first on ties.

    Per row, in one pass that reads the row from memory once:
      1. Group maxima. Group i holds positions i, i + G, i + 2G, ..., so its maximum is an
         elementwise max of contiguous slices (vectorised by LLVM).
      2. A lower bound t on the k-th largest score: the groups are cut into k buckets, and the
         smallest of the k bucket maxima is t (they are k distinct elements, all >= t).
      3. Candidates: every score >= t, from the groups whose maximum is >= t only, collected
         in increasing position order (the row is in cache by now). On random rows of 4,096
         scores with k = 32 that is about 130 candidates.
      4. An insertion sort of the candidates into k sorted slots. Candidates arrive in position
         order and only a strictly larger score moves up, so ties keep the lower position.

    Args:
        scores: float32 or float64 `[R, n]`, C-contiguous, n >= num_groups.
        k: slots per row, 1 <= k <= n.
        num_groups: G, with k <= G <= n.
        values: `[R, k]` of the scores' dtype, written.
        indices: int32 `[R, k]`, written.
    """
    rows, n = scores.shape
    full_slices = n // num_groups
    per_bucket = num_groups // k
    group_max = np.empty(num_groups, scores.dtype)
    active = np.empty(num_groups, np.int32)
    candidate_values = np.empty(n, scores.dtype)
    candidate_positions = np.empty(n, np.int32)
    for r in range(rows):
        row = scores[r]
        # 1. Group maxima.
        group_max[:] = row[:num_groups]
        for j in range(1, full_slices):
            part = row[j * num_groups:(j + 1) * num_groups]
            for i in range(num_groups):
                group_max[i] = part[i] if part[i] > group_max[i] else group_max[i]
        tail = row[full_slices * num_groups:]
        for i in range(tail.shape[0]):
            group_max[i] = tail[i] if tail[i] > group_max[i] else group_max[i]
        # 2. The smallest bucket maximum bounds the k-th largest score from below.
        bound = group_max[0]
        for b in range(k):
            start = b * per_bucket
            bucket_max = group_max[start]
            for i in range(start + 1, start + per_bucket):
                bucket_max = group_max[i] if group_max[i] > bucket_max else bucket_max
            bound = bucket_max if (b == 0 or bucket_max < bound) else bound
        # 3. Candidates, branch-free: written always, kept when not below the bound.
        num_active = 0
        for i in range(num_groups):
            active[num_active] = i
            num_active += not (group_max[i] < bound)
        count = 0
        for j in range(full_slices + 1):
            base = j * num_groups
            for a in range(num_active):
                position = base + active[a]
                if position >= n:
                    break
                candidate_values[count] = row[position]
                candidate_positions[count] = position
                count += not (row[position] < bound)
        if count < k:  # only with NaN scores, which no bound orders: every position is a candidate
            for position in range(n):
                candidate_values[position] = row[position]
                candidate_positions[position] = position
            count = n
        # 4. Insertion into k slots sorted by decreasing score.
        slot_values = values[r]
        slot_positions = indices[r]
        filled = 0
        for c in range(count):
            value = candidate_values[c]
            if filled < k:
                slot = filled
                filled += 1
            elif value > slot_values[k - 1]:
                slot = k - 1
            else:
                continue
            while slot > 0 and slot_values[slot - 1] < value:
                slot_values[slot] = slot_values[slot - 1]
                slot_positions[slot] = slot_positions[slot - 1]
                slot -= 1
            slot_values[slot] = value
            slot_positions[slot] = candidate_positions[c]
