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
# The counting loops run over whole vectors of this many lanes (padded), so LLVM emits no
# scalar remainder loop after the vectorised one.
_LANES = 16

# From this many super groups on, the active groups are looked for in the active super groups
# only; with fewer, the short inner loops cost more than looking at every group (measured at
# n = 1,024, k = 8: 0.29 against 0.06 µs a row; at n = 4,096, k = 32: 0.22 against 0.34).
_SUPER_GROUPS_SKIPPED_FROM = 64

# Indices below are unsigned (np.uint64) where LLVM cannot prove them non-negative: Numba
# wraps negative indices around, and the check costs more than the work in the short loops.
_ONE = np.uint64(1)
_ZERO = np.uint64(0)


@numba.njit(nogil=True, cache=True)
def _kth_largest(values, k, larger):
    """The k-th largest of `values` (at least k of them, no NaN), ties counted: the smallest
    value with fewer than k values strictly larger. `larger` (as long as `values`) is scratch.
    The count for every value at once is one vectorised loop per value, with no branches."""
    count = values.shape[0]
    larger[:] = 0
    for j in range(count):
        value = values[j]
        for i in range(count):
            larger[i] += np.int32(value > values[i])
    best = np.inf
    for i in range(count):
        value = values[i]
        best = value if ((larger[i] < k) & (value < best)) else best
    return best


@numba.njit(nogil=True, cache=True)
def _counted_order(candidate_values, candidate_positions, count, k, slot_values, slot_positions,
                   rank, lane, ordered_values, ordered_positions):
    """Writes the k first of `count` candidates (no NaN, in increasing position order) into the
    slots: each candidate's slot is the number of candidates ahead of it, larger or equal and
    earlier (TensorFlow's order: decreasing score, the lower position first on ties).

    `candidate_values` must have room for `count` rounded up to `_LANES`; the padding is set
    to -inf, which no candidate ranks below. `rank`, `ordered_values` and `ordered_positions`
    are scratch of that length; `lane` holds 0, 1, 2, ... as int32."""
    width = (count + _LANES - 1) // _LANES * _LANES
    for c in range(count, width):
        candidate_values[c] = -np.inf
    rank[:width] = 0
    for d in range(count):
        value = candidate_values[d]
        for c in range(width):
            other = candidate_values[c]
            rank[c] += np.int32((value > other) | ((value == other) & (d < lane[c])))
    for c in range(count):  # the ranks are 0, ..., count - 1, each once
        slot = np.uint64(rank[c])
        ordered_values[slot] = candidate_values[c]
        ordered_positions[slot] = candidate_positions[c]
    slot_values[:] = ordered_values[:k]
    slot_positions[:] = ordered_positions[:k]


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
      3. Candidates: every score >= t, from the groups whose maximum is >= t only (looked
         for among the super groups at or above t when S >= 64), collected in increasing position order (the
         row is in cache by now). On random rows of 4,096 scores with k = 32 that is about 44
         candidates from about 42 groups.
      4. The candidates' order, by counting for each the candidates ahead of it
         (`_counted_order`, vectorised), or by insertion when there are many
         (`_inserted_order`, also the way for rows with NaN).

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
    limit = _COUNTED_CANDIDATES_PER_SLOT * k
    padded = limit + _LANES
    group_max = np.empty(num_groups, scores.dtype)
    super_max = np.empty(num_super, scores.dtype)
    larger = np.empty(num_super, np.int32)
    active_super = np.empty(num_super, np.int32)
    active = np.empty(num_groups, np.int32)
    candidate_values = np.empty(max(n, padded), scores.dtype)
    candidate_positions = np.empty(max(n, padded), np.int32)
    rank = np.empty(padded, np.int32)
    lane = np.arange(padded).astype(np.int32)
    ordered_values = np.empty(padded, scores.dtype)
    ordered_positions = np.empty(padded, np.int32)
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
        bound = _kth_largest(super_max, k, larger)
        # 3. Candidates, branch-free: written always, kept when not below the bound. A group
        #    at or above the bound lies in a super group at or above it, so only those super
        #    groups' groups are looked at, in increasing group order.
        num_active = _ZERO
        if num_super >= _SUPER_GROUPS_SKIPPED_FROM:
            num_active_super = _ZERO
            for i in range(num_super):
                active_super[num_active_super] = i
                num_active_super += _ZERO if super_max[i] < bound else _ONE
            for j in range(per_super):
                base = np.uint64(j * num_super)
                for a in range(num_active_super):
                    group = base + np.uint64(active_super[a])
                    active[num_active] = group
                    num_active += _ZERO if group_max[group] < bound else _ONE
        else:
            for i in range(num_groups):
                active[num_active] = i
                num_active += _ZERO if group_max[i] < bound else _ONE
        count = _ZERO
        for j in range(full_slices):
            base = np.uint64(j * num_groups)
            for a in range(num_active):
                position = base + np.uint64(active[a])
                value = row[position]
                candidate_values[count] = value
                candidate_positions[count] = position
                count += _ZERO if value < bound else _ONE
        base = np.uint64(full_slices * num_groups)  # the partial last slice, if n is no multiple of G
        for a in range(num_active):
            position = base + np.uint64(active[a])
            if position >= n:
                break
            value = row[position]
            candidate_values[count] = value
            candidate_positions[count] = position
            count += _ZERO if value < bound else _ONE
        count = np.int64(count)
        # 4. Their order. A NaN below slice 0 is no group maximum but is a candidate.
        for c in range(count):
            has_nan |= candidate_values[c] != candidate_values[c]
        if count <= limit and not has_nan:
            _counted_order(candidate_values, candidate_positions, count, k, slot_values,
                           slot_positions, rank, lane, ordered_values, ordered_positions)
        else:
            _inserted_order(candidate_values, candidate_positions, count, k, slot_values, slot_positions)
