"""Selection-quality metrics: how far a top-k selection strays from exact dense attention.

Pure NumPy on the layer's conventions: `indices` [B, H, M, k] key positions, -1 for an invalid slot.
"""

from __future__ import annotations

import numpy as np

# Conventions shared by every function here, so that all metrics agree on what a query selected:
# - The *selected set* of a query is the set of its distinct non-negative indices: -1 slots are
#   ignored and a key picked twice counts once (a selection cannot earn credit twice).
# - A *valid key* is one the mask allows. `mask` is boolean, True meaning valid (as in Keras), and
#   may be [B, N] (key padding), [B, M, N] or [B, 1|H, M, N]; any axis of size 1 broadcasts.
#   Logits equal to -inf also mark masked keys. The layer masks with a large finite negative, so
#   pass the same combined mask it used rather than relying on the logits.
# - A per-query value that is undefined (0 / 0, e.g. a query with no valid key) is NaN, produced
#   without a RuntimeWarning; `mean_of_defined` averages while skipping those queries.

__all__ = [
    "attention_mass_captured",
    "ground_truth_recall",
    "head_agreement",
    "k_sweep",
    "mean_head_agreement",
    "mean_of_defined",
    "output_relative_error",
    "recall_at_k",
    "selector_overlap",
    "summarize",
]


# --------------------------------------------------------------------------- validation helpers


def _invalid_value(argument, expected, received):
    return ValueError(
        f"Received an invalid value for argument `{argument}`, expected {expected}. "
        f"Received: {received}"
    )


def _as_indices(indices, argument="indices"):
    """Validates an int array [B, H, M, k] with entries >= -1; returns it as int64."""
    selected_indices = np.asarray(indices)
    if selected_indices.ndim != 4:
        raise _invalid_value(
            argument,
            "an integer array of shape [B, H, M, k]",
            f"{argument}.shape={selected_indices.shape}",
        )
    if not np.issubdtype(selected_indices.dtype, np.integer):
        raise _invalid_value(
            argument, "an integer array", f"{argument}.dtype={selected_indices.dtype}"
        )
    if selected_indices.size and selected_indices.min() < -1:
        raise _invalid_value(
            argument,
            "key positions >= 0, or -1 for an invalid slot",
            f"min({argument})={selected_indices.min()}",
        )
    return selected_indices.astype(np.int64, copy=False)


def _as_float_array(values, argument, ndim=None, shape_text=None):
    array = np.asarray(values)
    if ndim is not None and array.ndim != ndim:
        raise _invalid_value(
            argument, f"an array of shape {shape_text}", f"{argument}.shape={array.shape}"
        )
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise _invalid_value(argument, "a real-valued array", f"{argument}.dtype={array.dtype}")
    array = array.astype(np.float64, copy=False)
    if np.isnan(array).any():
        raise _invalid_value(argument, "an array without NaN", f"{argument} containing NaN")
    return array


def _check_indices_below(selected_indices, num_keys, argument="indices"):
    if selected_indices.size and selected_indices.max() >= num_keys:
        raise _invalid_value(
            argument,
            f"key positions below N={num_keys}",
            f"max({argument})={selected_indices.max()}",
        )


def _check_same_queries(selected_indices, dense, argument):
    """Checks that `dense` [B, 1|H, M, N] matches the batch, heads and queries of `indices`."""
    batch, heads, queries, _ = selected_indices.shape
    if (
        dense.shape[0] != batch
        or dense.shape[2] != queries
        or dense.shape[1] not in (1, heads)
    ):
        raise _invalid_value(
            argument,
            f"shape [B, 1|H, M, N] = [{batch}, 1|{heads}, {queries}, N] to match `indices`",
            f"{argument}.shape={dense.shape}",
        )


def _valid_key_mask(mask, batch, queries, num_keys):
    """Returns the boolean mask as [B, 1|H, M, N] (head axis kept as given), or None."""
    if mask is None:
        return None
    valid = np.asarray(mask)
    if valid.dtype != bool:
        if not (np.issubdtype(valid.dtype, np.integer) or np.issubdtype(valid.dtype, np.floating)):
            raise _invalid_value("mask", "a boolean array", f"mask.dtype={valid.dtype}")
        valid = valid != 0
    original_shape = valid.shape
    if valid.ndim == 2:
        valid = valid[:, None, None, :]  # [B, 1, 1, N]
    elif valid.ndim == 3:
        valid = valid[:, None, :, :]  # [B, 1, M, N]
    elif valid.ndim != 4:
        raise _invalid_value(
            "mask",
            "a boolean array of shape [B, N], [B, M, N] or [B, 1|H, M, N]",
            f"mask.shape={original_shape}",
        )
    target_shape = (batch, valid.shape[1], queries, num_keys)
    try:
        return np.broadcast_to(valid, target_shape)
    except ValueError:
        raise _invalid_value(
            "mask",
            f"a shape that broadcasts to [B, 1|H, M, N] = [{batch}, 1|H, {queries}, {num_keys}]",
            f"mask.shape={original_shape}",
        ) from None


def _combined_valid(mask, dense_logits, heads):
    """Valid keys [B, 1|H, M, N]: allowed by `mask` and with a logit above -inf."""
    batch, _, queries, num_keys = dense_logits.shape
    valid = dense_logits != -np.inf  # NaN was rejected on the way in
    mask_valid = _valid_key_mask(mask, batch, queries, num_keys)
    if mask_valid is not None:
        if mask_valid.shape[1] not in (1, heads):
            raise _invalid_value(
                "mask", f"a head axis of size 1 or H={heads}", f"mask.shape={np.shape(mask)}"
            )
        valid = valid & mask_valid
    return valid


def _membership(selected_indices, num_keys):
    """Selected sets as a boolean [B, H, M, N]; -1 slots and duplicates drop out here."""
    slot_to_column = np.where(selected_indices < 0, num_keys, selected_indices)
    member = np.zeros(selected_indices.shape[:-1] + (num_keys + 1,), dtype=bool)
    np.put_along_axis(member, slot_to_column, True, axis=-1)
    return member[..., :num_keys]  # column N collected the -1 slots


def _divide_or_nan(numerator, denominator):
    """numerator / denominator, NaN where the denominator is 0, with no RuntimeWarning."""
    numerator, denominator = np.broadcast_arrays(
        np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    )
    quotient = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=quotient, where=denominator != 0)
    return quotient


def _exact_topk_threshold(valid_logits_desc, num_valid, k):
    """k-th largest valid logit per row, and k_eff = min(k, number of valid keys).

    `valid_logits_desc` holds the logits sorted in descending order with masked keys at -inf.
    Where k_eff is 0 the threshold is -inf, which matches no valid key.
    """
    num_keys = valid_logits_desc.shape[-1]
    k_eff = np.minimum(k, num_valid)
    if num_keys == 0:
        return np.full(num_valid.shape, -np.inf), k_eff
    threshold_position = np.clip(k_eff - 1, 0, num_keys - 1)
    threshold = np.take_along_axis(valid_logits_desc, threshold_position[..., None], axis=-1)
    return np.where(k_eff > 0, threshold[..., 0], -np.inf), k_eff


def _sorted_descending(values):
    # Negate around an ascending sort: -inf (masked) ends up last.
    return -np.sort(-values, axis=-1)


def mean_of_defined(values, axis=None):
    """Mean over the entries that are not NaN, with no warning when none are.

    Args:
        values: array of per-query metric values; NaN marks an undefined query.
        axis: axis or tuple of axes to average over; None averages everything.

    Returns:
        The mean of the defined entries (a float, or an array without `axis`), NaN where no entry
        is defined.
    """
    values = np.asarray(values, dtype=np.float64)
    defined = ~np.isnan(values)
    total = np.where(defined, values, 0.0).sum(axis=axis)
    count = defined.sum(axis=axis)
    mean = _divide_or_nan(total, count)
    return float(mean) if mean.ndim == 0 else mean


# --------------------------------------------------------------------------- per-query metrics


def recall_at_k(indices, dense_logits, mask=None, tie_tolerance=0.0):
    """Share of the exact top-k keys that the selection found, per batch, head and query.

    The exact top-k of a query is taken over its valid keys by `dense_logits`. With
    `k_eff = min(k, number of valid keys)` and `t` the k_eff-th largest valid logit, a selected key
    is a *hit* when it is valid and its logit is `>= t - tie_tolerance`. So when several keys tie
    at the k-th place, picking any of them counts as a hit; recall is still at most 1, because at
    most k distinct keys are selected. Masked keys are never hits, -1 slots are ignored and a
    duplicated key counts once.

    Args:
        indices: int array [B, H, M, k], selected key positions, -1 for an invalid slot.
        dense_logits: float array [B, 1|H, M, N], the exact scaled logits q·k/sqrt(d) of dense
            attention (-inf marks a masked key).
        mask: optional boolean valid-key mask, [B, N], [B, M, N] or [B, 1|H, M, N].
        tie_tolerance: non-negative slack on the k-th logit, for comparing a float32 selection
            with float64 logits. 0 means exact ties only.

    Returns:
        float64 array [B, H, M]: hits / k_eff, NaN for a query with no valid key (k_eff = 0).
    """
    selected_indices = _as_indices(indices)
    logits = _as_float_array(dense_logits, "dense_logits", 4, "[B, 1|H, M, N]")
    _check_same_queries(selected_indices, logits, "dense_logits")
    if not tie_tolerance >= 0:
        raise _invalid_value(
            "tie_tolerance", "a non-negative float", f"tie_tolerance={tie_tolerance}"
        )
    num_keys = logits.shape[-1]
    _check_indices_below(selected_indices, num_keys)

    valid = _combined_valid(mask, logits, selected_indices.shape[1])  # [B, 1|H, M, N]
    valid_logits = np.where(valid, logits, -np.inf)
    threshold, k_eff = _exact_topk_threshold(
        _sorted_descending(valid_logits), valid.sum(axis=-1), selected_indices.shape[-1]
    )
    in_exact_topk = valid & (valid_logits >= threshold[..., None] - tie_tolerance)
    hits = (_membership(selected_indices, num_keys) & in_exact_topk).sum(axis=-1)  # [B, H, M]
    return _divide_or_nan(hits, np.broadcast_to(k_eff, hits.shape))


def attention_mass_captured(indices, dense_weights, mask=None):
    """Share of the dense softmax weight that falls on the selected keys, per batch, head, query.

    The share is the weight on the selected valid keys divided by the weight on all valid keys.
    For rows of a softmax (summing to 1) this is simply the sum of the selected weights; dividing
    makes it independent of whether a fully masked row is stored as zeros or as uniform weights.
    -1 slots are ignored and a duplicated key counts once.

    Args:
        indices: int array [B, H, M, k], selected key positions, -1 for an invalid slot.
        dense_weights: float array [B, 1|H, M, N], non-negative dense attention weights.
        mask: optional boolean valid-key mask, [B, N], [B, M, N] or [B, 1|H, M, N].

    Returns:
        float64 array [B, H, M] in [0, 1], NaN where the valid keys carry no weight at all (a query
        with no valid key).
    """
    selected_indices = _as_indices(indices)
    weights = _as_float_array(dense_weights, "dense_weights", 4, "[B, 1|H, M, N]")
    _check_same_queries(selected_indices, weights, "dense_weights")
    if weights.size and weights.min() < 0:
        raise _invalid_value(
            "dense_weights", "non-negative weights", f"min(dense_weights)={weights.min()}"
        )
    num_keys = weights.shape[-1]
    _check_indices_below(selected_indices, num_keys)

    batch, _, queries, _ = weights.shape
    mask_valid = _valid_key_mask(mask, batch, queries, num_keys)
    if mask_valid is not None:
        if mask_valid.shape[1] not in (1, selected_indices.shape[1]):
            raise _invalid_value(
                "mask",
                f"a head axis of size 1 or H={selected_indices.shape[1]}",
                f"mask.shape={np.shape(mask)}",
            )
        weights = np.where(mask_valid, weights, 0.0)
    selected_weight = np.where(_membership(selected_indices, num_keys), weights, 0.0).sum(-1)
    total_weight = np.broadcast_to(weights.sum(axis=-1), selected_weight.shape)
    return _divide_or_nan(selected_weight, total_weight)


def output_relative_error(sparse_output, dense_output, eps=1e-12):
    """Relative error of the sparse attention output against the dense one, per query.

    `error = ||o_sparse - o_dense|| / max(||o_dense||, eps)`, with Euclidean norms over every axis
    after the query axis. So when the dense output is zero, two zero outputs give 0 and a non-zero
    sparse output gives a huge ||o_sparse|| / eps: a real discrepancy stays visible and no NaN
    appears.

    Args:
        sparse_output: float array [B, M, ...] (usually [B, M, D]), the sparse layer's output.
        dense_output: float array of the same shape, the exact dense attention output.
        eps: positive floor on the dense norm.

    Returns:
        float64 array [B, M].
    """
    sparse = _as_float_array(sparse_output, "sparse_output")
    dense = _as_float_array(dense_output, "dense_output")
    if sparse.ndim < 2:
        raise _invalid_value(
            "sparse_output", "an array of shape [B, M, ...]", f"sparse_output.shape={sparse.shape}"
        )
    if dense.shape != sparse.shape:
        raise _invalid_value(
            "dense_output",
            f"the shape of `sparse_output`, {sparse.shape}",
            f"dense_output.shape={dense.shape}",
        )
    if not eps > 0:
        raise _invalid_value("eps", "a positive float", f"eps={eps}")
    feature_axes = tuple(range(2, sparse.ndim))
    difference_norm = np.sqrt(np.sum((sparse - dense) ** 2, axis=feature_axes))
    dense_norm = np.sqrt(np.sum(dense**2, axis=feature_axes))
    return difference_norm / np.maximum(dense_norm, eps)


def ground_truth_recall(indices, ground_truth):
    """Share of a query's ground-truth keys that the selection found, per batch, head and query.

    `recall = |selected ∩ truth| / min(|truth|, k)`, with k the number of slots in `indices`: a
    selection of k keys cannot find more than k. Duplicates and -1 entries drop out on both sides.

    Args:
        indices: int array [B, H, M, k], selected key positions, -1 for an invalid slot.
        ground_truth: int array [B, M, G], the relevant key positions of each query, padded with -1.

    Returns:
        float64 array [B, H, M], NaN for a query with no ground-truth key (or when k = 0).
    """
    selected_indices = _as_indices(indices)
    truth = np.asarray(ground_truth)
    if truth.ndim != 3 or not np.issubdtype(truth.dtype, np.integer):
        raise _invalid_value(
            "ground_truth",
            "an integer array of shape [B, M, G] padded with -1",
            f"ground_truth.shape={truth.shape}, ground_truth.dtype={truth.dtype}",
        )
    batch, _, queries, k = selected_indices.shape
    if truth.shape[:2] != (batch, queries):
        raise _invalid_value(
            "ground_truth",
            f"shape [B, M, G] = [{batch}, {queries}, G] to match `indices`",
            f"ground_truth.shape={truth.shape}",
        )
    truth_indices = _as_indices(truth[:, None], "ground_truth")  # [B, 1, M, G]
    num_keys = 1 + max(
        selected_indices.max(initial=-1), truth_indices.max(initial=-1), 0
    )
    truth_member = _membership(truth_indices, num_keys)  # [B, 1, M, N]
    hits = (_membership(selected_indices, num_keys) & truth_member).sum(axis=-1)  # [B, H, M]
    truth_size = truth_member.sum(axis=-1)  # [B, 1, M]
    return _divide_or_nan(hits, np.broadcast_to(np.minimum(truth_size, k), hits.shape))


def selector_overlap(indices_a, indices_b):
    """How two selections of the same queries overlap, per batch, head and query.

    Args:
        indices_a: int array [B, H, M, k_a] from selector A, -1 for an invalid slot.
        indices_b: int array [B, H, M, k_b] from selector B; k_a and k_b may differ, and a head
            axis of size 1 broadcasts against the other's.

    Returns:
        dict of arrays [B, H, M]:
            "jaccard": float64 |A ∩ B| / |A ∪ B|, NaN where both sets are empty;
            "both": int64 |A ∩ B|; "a_only": int64 |A \\ B|; "b_only": int64 |B \\ A|.
    """
    selected_a = _as_indices(indices_a, "indices_a")
    selected_b = _as_indices(indices_b, "indices_b")
    shape_a, shape_b = selected_a.shape, selected_b.shape
    if (
        shape_a[0] != shape_b[0]
        or shape_a[2] != shape_b[2]
        or (shape_a[1] != shape_b[1] and 1 not in (shape_a[1], shape_b[1]))
    ):
        raise _invalid_value(
            "indices_b",
            f"the batch, head (or 1) and query sizes of `indices_a`, {shape_a}",
            f"indices_b.shape={shape_b}",
        )
    num_keys = 1 + max(selected_a.max(initial=-1), selected_b.max(initial=-1), 0)
    member_a = _membership(selected_a, num_keys)
    member_b = _membership(selected_b, num_keys)
    both = (member_a & member_b).sum(axis=-1)
    a_only = (member_a & ~member_b).sum(axis=-1)
    b_only = (~member_a & member_b).sum(axis=-1)
    return {
        "jaccard": _divide_or_nan(both, both + a_only + b_only),
        "both": both.astype(np.int64),
        "a_only": a_only.astype(np.int64),
        "b_only": b_only.astype(np.int64),
    }


# --------------------------------------------------------------------------- head agreement


def _head_jaccard_sums(indices):
    """Per example: the sum over queries of the H×H Jaccard indices, and how many were defined."""
    selected_indices = _as_indices(indices)
    num_keys = 1 + max(selected_indices.max(initial=-1), 0)
    member = _membership(selected_indices, num_keys).transpose(0, 2, 1, 3)  # [B, M, H, N]
    # float32 matmul counts exactly up to 2**24 keys, far beyond any N here.
    member_float = member.astype(np.float32)
    intersection = member_float @ member_float.swapaxes(-1, -2)  # [B, M, H, H]
    set_size = member.sum(axis=-1).astype(np.float32)  # [B, M, H]
    union = set_size[..., :, None] + set_size[..., None, :] - intersection  # [B, M, H, H]
    defined = union > 0  # two empty sets have no Jaccard index
    jaccard = _divide_or_nan(intersection, union)
    jaccard_sum = np.where(defined, jaccard, 0.0).sum(axis=1)  # [B, H, H]
    return jaccard_sum, defined.sum(axis=1)


def head_agreement(indices):
    """H×H agreement between the heads' selections, per example.

    Entry [b, i, j] is the mean over the queries of example b of the Jaccard index between the
    key sets that heads i and j selected. A query where both heads selected nothing has no Jaccard
    index and is left out of that mean; the diagonal is 1 wherever it is defined.

    Args:
        indices: int array [B, H, M, k], selected key positions, -1 for an invalid slot.

    Returns:
        float64 array [B, H, H], symmetric; NaN where no query of the example is defined.
    """
    jaccard_sum, defined_count = _head_jaccard_sums(indices)
    return _divide_or_nan(jaccard_sum, defined_count)


def mean_head_agreement(indices):
    """H×H agreement between the heads' selections, pooled over the batch.

    Like `head_agreement`, but the mean runs over every (example, query) pair at once, so each
    defined query weighs the same whichever example it belongs to.

    Args:
        indices: int array [B, H, M, k], selected key positions, -1 for an invalid slot.

    Returns:
        float64 array [H, H], symmetric; NaN where no query is defined.
    """
    jaccard_sum, defined_count = _head_jaccard_sums(indices)
    return _divide_or_nan(jaccard_sum.sum(axis=0), defined_count.sum(axis=0))


# --------------------------------------------------------------------------- k-sweep


def k_sweep(dense_logits, dense_weights, candidate_scores, ks, mask=None, tie_tolerance=0.0):
    """Mean recall@k and mean captured mass as functions of k, from a single sort of the scores.

    The selector's relevance scores are sorted once per query (ties go to the lower key position,
    as in `tf.math.top_k`); the selection at each k is the first `min(k, N)` keys of that order,
    skipping keys whose score is -inf or that `mask` forbids, as the layer never picks those. Each
    point equals `mean_of_defined` of `recall_at_k` and of `attention_mass_captured` for that
    selection.

    Args:
        dense_logits: float array [B, H, M, N], exact scaled logits (-inf marks a masked key).
        dense_weights: float array [B, H, M, N], exact dense attention weights.
        candidate_scores: float array [B, S, M, N], the selector's relevance scores, S = 1 for a
            selector shared by all heads or S = H; -inf marks a key the selector cannot pick.
        ks: sequence of positive ints, the k values to evaluate, in the order given.
        mask: optional boolean valid-key mask, [B, N], [B, M, N] or [B, 1|H, M, N].
        tie_tolerance: as in `recall_at_k`.

    Returns:
        dict of arrays of shape [len(ks)]: "k" (int64, as given), "recall" and "mass" (float64
        means over the defined batch × head × query entries; NaN when none is defined).
    """
    logits = _as_float_array(dense_logits, "dense_logits", 4, "[B, H, M, N]")
    weights = _as_float_array(dense_weights, "dense_weights", 4, "[B, H, M, N]")
    scores = _as_float_array(candidate_scores, "candidate_scores", 4, "[B, 1|H, M, N]")
    batch, heads, queries, num_keys = logits.shape
    if weights.shape != logits.shape:
        raise _invalid_value(
            "dense_weights",
            f"the shape of `dense_logits`, {logits.shape}",
            f"dense_weights.shape={weights.shape}",
        )
    if weights.size and weights.min() < 0:
        raise _invalid_value(
            "dense_weights", "non-negative weights", f"min(dense_weights)={weights.min()}"
        )
    if (
        scores.shape[0] != batch
        or scores.shape[1] not in (1, heads)
        or scores.shape[2:] != (queries, num_keys)
    ):
        raise _invalid_value(
            "candidate_scores",
            f"shape [B, 1|H, M, N] = [{batch}, 1|{heads}, {queries}, {num_keys}]",
            f"candidate_scores.shape={scores.shape}",
        )
    k_values = np.asarray(ks)
    if (
        k_values.ndim != 1
        or not np.issubdtype(k_values.dtype, np.integer)
        or (k_values.size and k_values.min() < 1)
    ):
        raise _invalid_value("ks", "a sequence of positive integers", f"ks={ks!r}")
    if not tie_tolerance >= 0:
        raise _invalid_value(
            "tie_tolerance", "a non-negative float", f"tie_tolerance={tie_tolerance}"
        )

    valid = _combined_valid(mask, logits, heads)  # [B, H, M, N]
    mask_valid = _valid_key_mask(mask, batch, queries, num_keys)  # [B, 1|H, M, N] or None
    if mask_valid is not None:
        scores = np.where(mask_valid, scores, -np.inf)  # [B, 1|H, M, N]
        weights = np.where(mask_valid, weights, 0.0)

    # The single sort: stable on negated scores, so equal scores keep ascending key order.
    rank_order = np.argsort(-scores, axis=-1, kind="stable")  # [B, 1|H, M, N]
    selectable_by_rank = np.take_along_axis(scores, rank_order, axis=-1) > -np.inf
    rank_order = np.broadcast_to(rank_order, logits.shape)  # [B, H, M, N]
    selectable_by_rank = np.broadcast_to(selectable_by_rank, logits.shape)
    valid_logits = np.where(valid, logits, -np.inf)
    hit_candidate_by_rank = selectable_by_rank & np.take_along_axis(valid, rank_order, axis=-1)
    logits_by_rank = np.take_along_axis(valid_logits, rank_order, axis=-1)  # [B, H, M, N]
    weights_by_rank = np.where(
        selectable_by_rank, np.take_along_axis(weights, rank_order, axis=-1), 0.0
    )
    # Each key appears once in the order, so the prefix sums are the selected weights.
    captured_weight_by_k = np.cumsum(weights_by_rank, axis=-1)  # [B, H, M, N]
    total_weight = weights.sum(axis=-1)  # [B, H, M]
    valid_logits_desc = _sorted_descending(valid_logits)
    num_valid = valid.sum(axis=-1)  # [B, H, M]

    mean_recall = np.full(k_values.shape, np.nan)
    mean_mass = np.full(k_values.shape, np.nan)
    for position, k in enumerate(k_values):
        num_slots = int(min(k, num_keys))  # the layer's k = min(top_k, N)
        threshold, k_eff = _exact_topk_threshold(valid_logits_desc, num_valid, num_slots)
        hits = (
            hit_candidate_by_rank[..., :num_slots]
            & (logits_by_rank[..., :num_slots] >= threshold[..., None] - tie_tolerance)
        ).sum(axis=-1)  # [B, H, M]
        mean_recall[position] = mean_of_defined(_divide_or_nan(hits, k_eff))
        if num_slots > 0:
            captured_weight = captured_weight_by_k[..., num_slots - 1]
        else:
            captured_weight = np.zeros(total_weight.shape)
        mean_mass[position] = mean_of_defined(_divide_or_nan(captured_weight, total_weight))
    return {"k": k_values.astype(np.int64), "recall": mean_recall, "mass": mean_mass}


# --------------------------------------------------------------------------- summary


def summarize(
    indices,
    dense_logits=None,
    dense_weights=None,
    sparse_output=None,
    dense_output=None,
    ground_truth=None,
    mask=None,
):
    """Mean of each metric whose inputs are given, over the defined queries.

    Args:
        indices: int array [B, H, M, k], selected key positions, -1 for an invalid slot.
        dense_logits: optional float array [B, 1|H, M, N], for "recall".
        dense_weights: optional float array [B, 1|H, M, N], for "mass".
        sparse_output, dense_output: optional float arrays [B, M, ...], for "output_error".
        ground_truth: optional int array [B, M, G] padded with -1, for "ground_truth_recall".
        mask: optional boolean valid-key mask, passed to "recall" and "mass".

    Returns:
        dict mapping "recall", "mass", "output_error" and "ground_truth_recall" (those computed)
        to floats, NaN where no query is defined.
    """
    summary = {}
    if dense_logits is not None:
        summary["recall"] = mean_of_defined(recall_at_k(indices, dense_logits, mask=mask))
    if dense_weights is not None:
        summary["mass"] = mean_of_defined(
            attention_mass_captured(indices, dense_weights, mask=mask)
        )
    if (sparse_output is None) != (dense_output is None):
        missing = "dense_output" if dense_output is None else "sparse_output"
        raise _invalid_value(
            missing, "an array, since the other output is given", f"{missing}=None"
        )
    if sparse_output is not None:
        summary["output_error"] = mean_of_defined(
            output_relative_error(sparse_output, dense_output)
        )
    if ground_truth is not None:
        summary["ground_truth_recall"] = mean_of_defined(ground_truth_recall(indices, ground_truth))
    return summary
