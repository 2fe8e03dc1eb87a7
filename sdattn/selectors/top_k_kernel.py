"""The compiled loop of `cpu_top_k`: exact top-k of each row of a 2-D array, in Numba.

Imported only when the kernel is first used, so `import sdattn` does not pay for Numba.
Compiled on first call and cached on disk (`cache=True`).
"""

import numba
import numpy as np

# Up to this many candidates per slot, a row's candidates are ordered by counting, for each,
# the candidates ahead of it (count² comparisons, vectorised); more (ties at the bound) go
# through an insertion sort, whose cost does not grow with the square.
_COUNTED_CANDIDATES_PER_SLOT = 4


@numba.njit(nogil=True, cache=True)
def _kth_largest(values, k):
    """The k-th largest of `values` (at least k of them, no NaN), ties counted: the smallest
    value with fewer than k values strictly larger. Counting is vectorised; for the 2·k super
    maxima of a row this is cheaper than a branching selection."""
    best = values[0]
    found = False
    for i in range(values.shape[0]):
        value = values[i]
        larger = np.int32(0)
        for j in range(values.shape[0]):
            larger += np.int32(values[j] > value)
        if larger < k and (not found or value < best):
            best = value
            found = True
    return best


@numba.njit(nogil=True, cache=True)
def _counted_order(candidate_values, candidate_positions, count, k, slot_values, slot_positions):
    """Writes the k first of `count` candidates (no NaN, in increasing position order) into the
    slots: each candidate's slot is the number of candidates ahead of it, larger or equal and
    earlier (TensorFlow's order: decreasing score, the lower position first on ties)."""
    for c in range(count):
        value = candidate_values[c]
        rank = np.int32(0)
        for d in range(count):
            rank += np.int32(candidate_values[d] > value)
        for d in range(c):
            rank += np.int32(candidate_values[d] == value)
        if rank < k:
            slot_values[rank] = value
            slot_positions[rank] = candidate_positions[c]


@numba.njit(nogil=True, cache=True)
def _inserted_order(candidate_values, candidate_positions, count, k, slot_values, slot_positions):
    """As `_counted_order`, by an insertion sort into k slots: candidates arrive in increasing
    position order and only a strictly larger score moves up, so ties keep the lower position.
    Also the way for rows with NaN, which no comparison orders: the positions stay distinct."""
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


@numba.njit(nogil=True, cache=True)
def top_k_rows(scores, k, num_groups, values, indices):
    """Writes each row's k largest scores and their positions, exactly as TensorFlow's `top_k` orders
    them: by decreasing score, the lower position first on ties.

    Per row, in one pass that reads the row from memory once:
      1. Group maxima. Group i holds positions i, i + G, i + 2G, ..., so its maximum is an
         elementwise max of contiguous slices (vectorised by LLVM).
      2. A lower bound t on the k-th largest score: the G group maxima are folded the same way
         into S = 2·k super maxima (k when G = k), and t is the k-th largest of those (k
         distinct elements are >= t). Counting finds it without branches.
      3. Candidates: every score >= t, from the groups whose maximum is >= t only, collected
         in increasing position order (the row is in cache by now). On random rows of 4,096
         scores with k = 32 that is about 44 candidates from about 42 groups.
      4. The candidates' order, by counting for each the candidates ahead of it
         (`_counted_order`), or by insertion when there are many (`_inserted_order`, also the
         way for rows with NaN).

    Args:
        scores: float32 or float64 `[R, n]`, C-contiguous, n >= num_groups.
        k: slots per row, 1 <= k <= n.
        num_groups: G, a multiple of k with k <= G <= n.
        values: `[R, k]` of the scores' dtype, written.
        indices: int32 `[R, k]`, written.
    """
    rows, n = scores.shape
    full_slices = n // num_groups
    num_super = 2 * k if (num_groups // k) % 2 == 0 else k
    per_super = num_groups // num_super
    group_max = np.empty(num_groups, scores.dtype)
    super_max = np.empty(num_super, scores.dtype)
    active = np.empty(num_groups, np.int32)
    candidate_values = np.empty(n, scores.dtype)
    candidate_positions = np.empty(n, np.int32)
    all_positions = np.arange(n).astype(np.int32)
    for r in range(rows):
        row = scores[r]
        slot_values = values[r]
        slot_positions = indices[r]
        # 1. Group maxima.
        group_max[:] = row[:num_groups]
        for j in range(1, full_slices):
            part = row[j * num_groups:(j + 1) * num_groups]
            for i in range(num_groups):
                group_max[i] = part[i] if part[i] > group_max[i] else group_max[i]
        tail = row[full_slices * num_groups:]
        for i in range(tail.shape[0]):
            group_max[i] = tail[i] if tail[i] > group_max[i] else group_max[i]
        # 2. Super maxima (super group i: groups i, i + S, ...) and their k-th largest.
        super_max[:] = group_max[:num_super]
        for j in range(1, per_super):
            part = group_max[j * num_super:(j + 1) * num_super]
            for i in range(num_super):
                super_max[i] = part[i] if part[i] > super_max[i] else super_max[i]
        has_nan = False
        for i in range(num_super):
            has_nan |= super_max[i] != super_max[i]
        if has_nan:  # no bound orders NaN: every position is a candidate
            _inserted_order(row, all_positions, n, k, slot_values, slot_positions)
            continue
        bound = _kth_largest(super_max, k)
        # 3. Candidates, branch-free: written always, kept when not below the bound.
        num_active = 0
        for i in range(num_groups):
            active[num_active] = i
            num_active += not (group_max[i] < bound)
        count = 0
        for j in range(full_slices):
            base = j * num_groups
            for a in range(num_active):
                position = base + active[a]
                candidate_values[count] = row[position]
                candidate_positions[count] = position
                count += not (row[position] < bound)
        base = full_slices * num_groups  # the partial last slice, if n is no multiple of G
        for a in range(num_active):
            position = base + active[a]
            if position >= n:
                break
            candidate_values[count] = row[position]
            candidate_positions[count] = position
            count += not (row[position] < bound)
        # 4. Their order. A NaN below slice 0 is no group maximum but is a candidate.
        for c in range(count):
            has_nan |= candidate_values[c] != candidate_values[c]
        if count <= _COUNTED_CANDIDATES_PER_SLOT * k and not has_nan:
            _counted_order(candidate_values, candidate_positions, count, k, slot_values, slot_positions)
        else:
            _inserted_order(candidate_values, candidate_positions, count, k, slot_values, slot_positions)
