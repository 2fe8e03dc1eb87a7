"""Tests for sdattn.metrics: hand-computed answers on small matrices, then randomized agreement
with plain Python-set computations and with sdattn.reference."""

import warnings

import numpy as np
import pytest

from sdattn import metrics, reference

NAN = float("nan")


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    # Fully masked queries must give NaN quietly: any RuntimeWarning escaping fails the test.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def ints(rows):
    return np.array(rows, dtype=np.int32)


def floats(rows):
    return np.array(rows, dtype=np.float64)


# --------------------------------------------------------------------------- recall@k


def test_recall_hand_computed_1x1x2x5():
    dense_logits = floats([[[[3.0, 1.0, 2.0, 0.5, -1.0],  # exact top-2 = {0, 2}
                             [0.0, 4.0, 3.5, 1.0, 2.0]]]])  # exact top-2 = {1, 2}
    indices = ints([[[[0, 1],  # hits {0}
                      [2, 4]]]])  # hits {2}
    np.testing.assert_allclose(metrics.recall_at_k(indices, dense_logits), [[[0.5, 0.5]]])
    perfect = ints([[[[2, 0], [1, 2]]]])
    np.testing.assert_allclose(metrics.recall_at_k(perfect, dense_logits), [[[1.0, 1.0]]])


def test_recall_ties_at_kth_place_count_as_hits():
    dense_logits = floats([[[[1.0, 2.0, 2.0, 2.0, 0.0]]]])  # k=2: threshold 2, three keys tie
    np.testing.assert_allclose(metrics.recall_at_k(ints([[[[3, 1]]]]), dense_logits), [[[1.0]]])
    np.testing.assert_allclose(metrics.recall_at_k(ints([[[[2, 0]]]]), dense_logits), [[[0.5]]])


def test_recall_tie_tolerance():
    dense_logits = floats([[[[1.0, 0.9999999, 0.0]]]])
    indices = ints([[[[1]]]])
    np.testing.assert_allclose(metrics.recall_at_k(indices, dense_logits), [[[0.0]]])
    np.testing.assert_allclose(
        metrics.recall_at_k(indices, dense_logits, tie_tolerance=1e-6), [[[1.0]]]
    )


def test_recall_duplicates_count_once_and_minus_one_slots_are_ignored():
    dense_logits = floats([[[[3.0, 1.0, 2.0, 0.5, -1.0]]]])  # top-2 = {0, 2}
    np.testing.assert_allclose(metrics.recall_at_k(ints([[[[2, 2]]]]), dense_logits), [[[0.5]]])
    np.testing.assert_allclose(metrics.recall_at_k(ints([[[[0, -1]]]]), dense_logits), [[[0.5]]])


def test_recall_with_key_padding_mask():
    dense_logits = floats([[[[5.0, 1.0, 3.0, 2.0, 0.0]]]])
    key_mask = np.array([[False, True, True, True, False]])  # [B, N]; valid top-2 = {2, 3}
    indices = ints([[[[0, 2]]]])  # key 0 has the largest logit but is masked: not a hit
    np.testing.assert_allclose(
        metrics.recall_at_k(indices, dense_logits, mask=key_mask), [[[0.5]]]
    )
    np.testing.assert_allclose(metrics.recall_at_k(indices, dense_logits), [[[1.0]]])


def test_recall_fewer_valid_keys_than_k_and_fully_masked_query():
    dense_logits = floats([[[[5.0, 1.0, 3.0, 2.0],
                             [1.0, 2.0, 3.0, 4.0]]]])
    mask = np.array([[[[False, True, False, False],  # one valid key: k_eff = 1
                       [False, False, False, False]]]])  # no valid key: NaN
    indices = ints([[[[1, -1, -1], [-1, -1, -1]]]])
    np.testing.assert_allclose(
        metrics.recall_at_k(indices, dense_logits, mask=mask), [[[1.0, NAN]]]
    )


def test_recall_minus_inf_logits_are_masked_keys():
    dense_logits = floats([[[[-np.inf, 1.0, -np.inf, 0.0],
                             [-np.inf, -np.inf, -np.inf, -np.inf]]]])
    indices = ints([[[[1, 3, 0], [0, 1, 2]]]])  # k=3 but only 2 valid keys, both selected
    np.testing.assert_allclose(metrics.recall_at_k(indices, dense_logits), [[[1.0, NAN]]])


def test_recall_mask_shapes_broadcast():
    dense_logits = floats([[[[3.0, 2.0, 1.0]], [[1.0, 2.0, 3.0]]]])  # [B=1, H=2, M=1, N=3]
    indices = ints([[[[0]], [[0]]]])
    head_mask = np.array([[[[True, True, True]], [[True, True, False]]]])  # [B, H, M, N]
    query_key_mask = np.array([[[False, True, True]]])  # [B, M, N]
    np.testing.assert_allclose(
        metrics.recall_at_k(indices, dense_logits, mask=head_mask), [[[1.0], [0.0]]]
    )
    # With key 0 masked for every head, selecting it is never a hit.
    np.testing.assert_allclose(
        metrics.recall_at_k(indices, dense_logits, mask=query_key_mask), [[[0.0], [0.0]]]
    )


def test_recall_shared_logit_head_axis_broadcasts():
    dense_logits = floats([[[[3.0, 2.0, 1.0]]]])  # [B, 1, M, N]
    indices = ints([[[[0]], [[2]]]])  # [B, H=2, M, k=1]
    np.testing.assert_allclose(metrics.recall_at_k(indices, dense_logits), [[[1.0], [0.0]]])


@pytest.mark.parametrize(
    "indices, dense_logits, mask, argument",
    [
        (np.zeros((1, 1, 2), np.int32), np.zeros((1, 1, 2, 3)), None, "indices"),
        (np.zeros((1, 1, 2, 1), np.float32), np.zeros((1, 1, 2, 3)), None, "indices"),
        (np.full((1, 1, 2, 1), -2), np.zeros((1, 1, 2, 3)), None, "indices"),
        (np.full((1, 1, 2, 1), 3), np.zeros((1, 1, 2, 3)), None, "indices"),
        (np.zeros((1, 1, 2, 1), np.int32), np.zeros((1, 1, 3, 3)), None, "dense_logits"),
        (np.zeros((1, 2, 2, 1), np.int32), np.zeros((1, 3, 2, 3)), None, "dense_logits"),
        (np.zeros((1, 1, 2, 1), np.int32), np.full((1, 1, 2, 3), np.nan), None, "dense_logits"),
        (np.zeros((1, 1, 2, 1), np.int32), np.zeros((1, 1, 2, 3)), np.ones((1, 4), bool), "mask"),
        (np.zeros((1, 1, 2, 1), np.int32), np.zeros((1, 1, 2, 3)), np.ones(3, bool), "mask"),
        (np.zeros((1, 1, 2, 1), np.int32), np.zeros((1, 1, 2, 3)), np.ones((1, 2, 2, 3), bool),
         "mask"),
    ],
)
def test_recall_rejects_bad_inputs_naming_the_argument(indices, dense_logits, mask, argument):
    with pytest.raises(ValueError, match=f"argument `{argument}`"):
        metrics.recall_at_k(indices, dense_logits, mask=mask)


# --------------------------------------------------------------------------- attention mass


def test_mass_hand_computed():
    dense_weights = floats([[[[0.1, 0.4, 0.2, 0.3, 0.0]]]])
    for selection, expected in [([1, 3], 0.7), ([1, -1], 0.4), ([1, 1], 0.4), ([-1, -1], 0.0),
                                ([4, 0], 0.1)]:
        np.testing.assert_allclose(
            metrics.attention_mass_captured(ints([[[selection]]]), dense_weights), [[[expected]]]
        )


def test_mass_with_mask_and_fully_masked_rows():
    dense_weights = floats([[[[0.1, 0.4, 0.2, 0.3, 0.0],
                              [0.2, 0.2, 0.2, 0.2, 0.2],  # Keras-style uniform fully masked row
                              [0.0, 0.0, 0.0, 0.0, 0.0]]]])  # sdattn-style zero row
    mask = np.array([[[True, False, True, True, True],
                      [False] * 5,
                      [False] * 5]])  # [B, M, N]
    indices = ints([[[[1, 3], [0, 1], [0, 1]]]])
    # Row 0: key 1 is masked; 0.3 of the 0.6 valid weight is captured.
    np.testing.assert_allclose(
        metrics.attention_mass_captured(indices, dense_weights, mask=mask), [[[0.5, NAN, NAN]]]
    )
    np.testing.assert_allclose(
        metrics.attention_mass_captured(indices, dense_weights), [[[0.7, 0.4, NAN]]]
    )


def test_mass_rejects_negative_weights():
    with pytest.raises(ValueError, match="argument `dense_weights`"):
        metrics.attention_mass_captured(ints([[[[0]]]]), floats([[[[-0.1, 1.1]]]]))


# --------------------------------------------------------------------------- output error


def test_output_relative_error_hand_computed():
    sparse_output = floats([[[3.0, 4.0], [1.0, 1.0]]])
    dense_output = floats([[[0.0, 5.0], [1.0, 1.0]]])
    # ||(3, -1)|| / ||(0, 5)|| = sqrt(10) / 5; identical outputs give 0.
    np.testing.assert_allclose(
        metrics.output_relative_error(sparse_output, dense_output), [[np.sqrt(10.0) / 5.0, 0.0]]
    )


def test_output_relative_error_zero_dense_norm():
    sparse_output = floats([[[0.0, 0.0], [3.0, 4.0]]])
    dense_output = floats([[[0.0, 0.0], [0.0, 0.0]]])
    np.testing.assert_allclose(
        metrics.output_relative_error(sparse_output, dense_output, eps=1e-12), [[0.0, 5e12]]
    )


def test_output_relative_error_norms_over_all_feature_axes():
    sparse_output = np.ones((1, 1, 2, 2))  # output_shape=(2, 2)
    dense_output = np.full((1, 1, 2, 2), 2.0)
    np.testing.assert_allclose(metrics.output_relative_error(sparse_output, dense_output), [[0.5]])


def test_output_relative_error_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="argument `dense_output`"):
        metrics.output_relative_error(np.zeros((1, 2, 3)), np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match="argument `eps`"):
        metrics.output_relative_error(np.zeros((1, 2, 3)), np.zeros((1, 2, 3)), eps=0.0)


# --------------------------------------------------------------------------- ground truth


def test_ground_truth_recall_hand_computed():
    indices = ints([[[[2, 3], [0, 1], [0, 1], [0, 1], [1, 1]]]])
    ground_truth = ints([[[2, 4, -1, -1],  # 1 of min(2, k=2) found
                          [1, -1, -1, -1],  # 1 of min(1, 2)
                          [0, 1, 2, 3],  # 2 of min(4, 2): cannot do better with k=2
                          [-1, -1, -1, -1],  # no truth: NaN
                          [1, 1, 2, -1]]])  # duplicates on both sides: 1 of min(2, 2)
    np.testing.assert_allclose(
        metrics.ground_truth_recall(indices, ground_truth), [[[0.5, 1.0, 1.0, NAN, 0.5]]]
    )


def test_ground_truth_recall_rejects_bad_shapes():
    with pytest.raises(ValueError, match="argument `ground_truth`"):
        metrics.ground_truth_recall(ints([[[[0]]]]), ints([[0]]))
    with pytest.raises(ValueError, match="argument `ground_truth`"):
        metrics.ground_truth_recall(ints([[[[0]]]]), ints([[[0], [1]]]))
    with pytest.raises(ValueError, match="argument `ground_truth`"):
        metrics.ground_truth_recall(ints([[[[0]]]]), ints([[[-3]]]))


# --------------------------------------------------------------------------- overlap, agreement


def test_selector_overlap_hand_computed():
    indices_a = ints([[[[0, 1, 2], [-1, -1, -1], [5, 5, -1]]]])
    indices_b = ints([[[[2, 3, -1], [-1, -1, -1], [5, 6, 7]]]])
    overlap = metrics.selector_overlap(indices_a, indices_b)
    np.testing.assert_array_equal(overlap["both"], [[[1, 0, 1]]])
    np.testing.assert_array_equal(overlap["a_only"], [[[2, 0, 0]]])
    np.testing.assert_array_equal(overlap["b_only"], [[[1, 0, 2]]])
    np.testing.assert_allclose(overlap["jaccard"], [[[0.25, NAN, 1 / 3]]])


def test_selector_overlap_different_k_and_shared_heads():
    indices_a = ints([[[[0, 1]]]])  # [B, 1, M, 2]: a shared selector
    indices_b = ints([[[[0]], [[4]]]])  # [B, 2, M, 1]
    overlap = metrics.selector_overlap(indices_a, indices_b)
    np.testing.assert_allclose(overlap["jaccard"], [[[0.5], [0.0]]])
    with pytest.raises(ValueError, match="argument `indices_b`"):
        metrics.selector_overlap(indices_a, ints([[[[0], [1]]]]))


def test_head_agreement_hand_computed():
    # H=2, M=3: query 0 {0,1} vs {1,2} → 1/3; query 1 {3} vs {3} → 1;
    # query 2 has both sets empty, so it is left out of the mean.
    indices = ints([[[[0, 1], [3, -1], [-1, -1]],
                     [[1, 2], [3, 3], [-1, -1]]]])
    expected = [[[1.0, 2 / 3], [2 / 3, 1.0]]]
    np.testing.assert_allclose(metrics.head_agreement(indices), expected)


def test_head_agreement_empty_against_non_empty_is_zero_and_undefined_is_nan():
    indices = ints([[[[-1]], [[0]]],  # example 0: head 0 empty, head 1 {0}
                    [[[-1]], [[-1]]]])  # example 1: nothing selected at all
    np.testing.assert_allclose(
        metrics.head_agreement(indices),
        [[[NAN, 0.0], [0.0, 1.0]], [[NAN, NAN], [NAN, NAN]]],
    )


def test_mean_head_agreement_pools_queries_over_the_batch():
    indices = ints([[[[0, 1], [2, -1]], [[0, 1], [2, -1]]],  # example 0: agree on both queries
                    [[[0, 1], [-1, -1]], [[2, 3], [-1, -1]]]])  # example 1: 0 on one query
    np.testing.assert_allclose(metrics.head_agreement(indices)[:, 0, 1], [1.0, 0.0])
    # Pooled: (1 + 1 + 0) / 3 defined queries, not the mean of the per-example means (0.5).
    np.testing.assert_allclose(
        metrics.mean_head_agreement(indices), [[1.0, 2 / 3], [2 / 3, 1.0]]
    )


# --------------------------------------------------------------------------- k-sweep


def softmax(row):
    exp = np.exp(np.asarray(row) - np.max(row))
    return exp / exp.sum()


def test_k_sweep_hand_computed():
    dense_logits = floats([[[[4.0, 3.0, 2.0, 1.0]]]])
    dense_weights = softmax(dense_logits)
    candidate_scores = floats([[[[1.0, 4.0, 3.0, 2.0]]]])  # ranks the keys 1, 2, 3, 0
    sweep = metrics.k_sweep(dense_logits, dense_weights, candidate_scores, ks=[1, 2, 3, 4, 9])
    np.testing.assert_array_equal(sweep["k"], [1, 2, 3, 4, 9])
    # k=1: {1} vs {0}; k=2: {1,2} vs {0,1}; k=3: {1,2,3} vs {0,1,2}; k>=4: everything.
    np.testing.assert_allclose(sweep["recall"], [0.0, 0.5, 2 / 3, 1.0, 1.0])
    w = dense_weights[0, 0, 0]
    np.testing.assert_allclose(
        sweep["mass"], [w[1], w[1] + w[2], w[1] + w[2] + w[3], 1.0, 1.0]
    )


def test_k_sweep_masks_ties_and_minus_inf_scores():
    dense_logits = floats([[[[4.0, 3.0, 2.0, 1.0],
                             [1.0, 1.0, 1.0, 1.0]]]])
    mask = np.array([[[True, True, True, False],
                      [False, False, False, False]]])  # query 1 fully masked: left out
    dense_weights = np.zeros(dense_logits.shape)
    dense_weights[0, 0, 0, :3] = softmax([4.0, 3.0, 2.0])
    # Key 3 is masked, key 0 cannot be picked by the selector; keys 1 and 2 tie (1 goes first).
    candidate_scores = floats([[[[-np.inf, 5.0, 5.0, 9.0],
                                 [1.0, 2.0, 3.0, 4.0]]]])
    sweep = metrics.k_sweep(dense_logits, dense_weights, candidate_scores, ks=[1, 2, 3], mask=mask)
    # k=1: {1} vs {0}; k=2: {1,2} vs {0,1}; k=3: {1,2} vs {0,1,2}.
    np.testing.assert_allclose(sweep["recall"], [0.0, 0.5, 2 / 3])
    w = dense_weights[0, 0, 0]
    np.testing.assert_allclose(sweep["mass"], [w[1], w[1] + w[2], w[1] + w[2]])


def test_k_sweep_all_undefined_gives_nan_quietly():
    dense_logits = np.full((1, 1, 1, 3), -np.inf)
    sweep = metrics.k_sweep(dense_logits, np.zeros((1, 1, 1, 3)), np.zeros((1, 1, 1, 3)), ks=[1])
    assert np.isnan(sweep["recall"]).all() and np.isnan(sweep["mass"]).all()


@pytest.mark.parametrize("ks", [[0], [1.5], [[1, 2]], ["2"]])
def test_k_sweep_rejects_bad_ks(ks):
    with pytest.raises(ValueError, match="argument `ks`"):
        metrics.k_sweep(np.zeros((1, 1, 1, 3)), np.zeros((1, 1, 1, 3)), np.zeros((1, 1, 1, 3)), ks)


def test_k_sweep_rejects_mismatched_scores():
    with pytest.raises(ValueError, match="argument `candidate_scores`"):
        metrics.k_sweep(np.zeros((1, 2, 1, 3)), np.zeros((1, 2, 1, 3)), np.zeros((1, 3, 1, 3)), [1])


# --------------------------------------------------------------------------- summary


def test_summarize_means_over_defined_queries():
    dense_logits = floats([[[[3.0, 1.0, 2.0], [-np.inf, -np.inf, -np.inf]]]])
    dense_weights = floats([[[[0.5, 0.2, 0.3], [0.0, 0.0, 0.0]]]])
    indices = ints([[[[0, 1], [-1, -1]]]])
    summary = metrics.summarize(
        indices,
        dense_logits=dense_logits,
        dense_weights=dense_weights,
        sparse_output=floats([[[1.0], [2.0]]]),
        dense_output=floats([[[2.0], [2.0]]]),
        ground_truth=ints([[[1], [-1]]]),
    )
    assert summary == pytest.approx(
        {"recall": 0.5, "mass": 0.7, "output_error": 0.25, "ground_truth_recall": 1.0}
    )
    assert metrics.summarize(indices) == {}
    with pytest.raises(ValueError, match="argument `dense_output`"):
        metrics.summarize(indices, sparse_output=floats([[[1.0], [2.0]]]))


def test_mean_of_defined():
    assert metrics.mean_of_defined([1.0, NAN, 3.0]) == 2.0
    assert np.isnan(metrics.mean_of_defined([NAN, NAN]))
    np.testing.assert_allclose(
        metrics.mean_of_defined([[1.0, NAN], [NAN, NAN]], axis=1), [1.0, NAN]
    )


# --------------------------------------------------------------------------- randomized agreement


def masked_softmax(logits, valid):
    """Softmax over the valid keys of each row; rows with no valid key are all zeros."""
    weights = np.zeros(logits.shape)
    for row in np.ndindex(logits.shape[:-1]):
        if valid[row].any():
            weights[row][valid[row]] = softmax(logits[row][valid[row]])
    return weights


def random_case(rng):
    """A random small problem with integer logits (many ties), masks, -1 slots and duplicates."""
    batch, heads, queries = rng.integers(1, 3), rng.integers(1, 4), rng.integers(1, 5)
    num_keys, k = rng.integers(1, 8), rng.integers(1, 6)
    dense_logits = rng.integers(-2, 3, size=(batch, heads, queries, num_keys)).astype(float)
    mask = rng.random((batch, 1, queries, num_keys)) < 0.75
    mask[:, :, rng.integers(queries)] &= rng.random() < 0.7  # sometimes a fully masked query
    indices = rng.integers(-1, num_keys, size=(batch, heads, queries, k))
    dense_weights = masked_softmax(dense_logits, np.broadcast_to(mask, dense_logits.shape))
    ground_truth = rng.integers(-1, num_keys, size=(batch, queries, rng.integers(1, 4)))
    return dense_logits, dense_weights, mask, indices, ground_truth


def selected_set(slots):
    return {int(key) for key in slots if key >= 0}


def set_recall(selected, logits_row, valid_row, k):
    valid_logits = sorted((logit for logit, ok in zip(logits_row, valid_row) if ok), reverse=True)
    k_eff = min(k, len(valid_logits))
    if k_eff == 0:
        return NAN
    threshold = valid_logits[k_eff - 1]
    return sum(1 for key in selected if valid_row[key] and logits_row[key] >= threshold) / k_eff


def set_jaccard(a, b):
    return len(a & b) / len(a | b) if a | b else NAN


@pytest.mark.parametrize("seed", range(60))
def test_random_cases_agree_with_python_sets(seed):
    rng = np.random.default_rng(seed)
    dense_logits, dense_weights, mask, indices, ground_truth = random_case(rng)
    batch, heads, queries, k = indices.shape

    recall = metrics.recall_at_k(indices, dense_logits, mask=mask)
    mass = metrics.attention_mass_captured(indices, dense_weights, mask=mask)
    truth_recall = metrics.ground_truth_recall(indices, ground_truth)
    other_indices = rng.integers(-1, dense_logits.shape[-1], size=indices.shape)
    overlap = metrics.selector_overlap(indices, other_indices)
    agreement = metrics.head_agreement(indices)

    for b in range(batch):
        jaccard_lists = {(i, j): [] for i in range(heads) for j in range(heads)}
        for h in range(heads):
            for m in range(queries):
                selected = selected_set(indices[b, h, m])
                valid_row = mask[b, 0, m]
                np.testing.assert_allclose(
                    recall[b, h, m], set_recall(selected, dense_logits[b, h, m], valid_row, k)
                )
                total = sum(dense_weights[b, h, m])
                expected_mass = sum(dense_weights[b, h, m, key] for key in selected) / total \
                    if total > 0 else NAN
                np.testing.assert_allclose(mass[b, h, m], expected_mass)
                truth = selected_set(ground_truth[b, m])
                expected_truth = len(selected & truth) / min(len(truth), k) if truth else NAN
                np.testing.assert_allclose(truth_recall[b, h, m], expected_truth)
                other = selected_set(other_indices[b, h, m])
                assert overlap["both"][b, h, m] == len(selected & other)
                assert overlap["a_only"][b, h, m] == len(selected - other)
                assert overlap["b_only"][b, h, m] == len(other - selected)
                np.testing.assert_allclose(
                    overlap["jaccard"][b, h, m], set_jaccard(selected, other)
                )
        for m in range(queries):
            for i in range(heads):
                for j in range(heads):
                    jaccard = set_jaccard(
                        selected_set(indices[b, i, m]), selected_set(indices[b, j, m])
                    )
                    if not np.isnan(jaccard):
                        jaccard_lists[i, j].append(jaccard)
        for (i, j), values in jaccard_lists.items():
            np.testing.assert_allclose(agreement[b, i, j], np.mean(values) if values else NAN)


@pytest.mark.parametrize("seed", range(60))
def test_random_k_sweep_matches_recall_and_mass_of_each_prefix(seed):
    rng = np.random.default_rng(1000 + seed)
    dense_logits, dense_weights, mask, _, _ = random_case(rng)
    batch, heads, queries, num_keys = dense_logits.shape
    shared = rng.random() < 0.5
    candidate_scores = rng.integers(-2, 3, size=(batch, 1 if shared else heads, queries, num_keys))
    candidate_scores = np.where(rng.random(candidate_scores.shape) < 0.1, -np.inf, candidate_scores)
    ks = [1, 2, 3, num_keys + 2]
    sweep = metrics.k_sweep(dense_logits, dense_weights, candidate_scores, ks, mask=mask)

    for position, k in enumerate(ks):
        slots = min(k, num_keys)
        # Top-k of the masked scores by Python sorting: higher score first, then lower position.
        indices = np.full((batch, heads, queries, slots), -1)
        for b in range(batch):
            for h in range(heads):
                for m in range(queries):
                    row = candidate_scores[b, 0 if shared else h, m]
                    pickable = [
                        key for key in range(num_keys) if mask[b, 0, m, key] and row[key] > -np.inf
                    ]
                    ranked = sorted(pickable, key=lambda key: (-row[key], key))[:slots]
                    indices[b, h, m, :len(ranked)] = ranked
        np.testing.assert_allclose(
            sweep["recall"][position],
            metrics.mean_of_defined(metrics.recall_at_k(indices, dense_logits, mask=mask)),
        )
        np.testing.assert_allclose(
            sweep["mass"][position],
            metrics.mean_of_defined(
                metrics.attention_mass_captured(indices, dense_weights, mask=mask)
            ),
        )


# --------------------------------------------------------------------------- reference agreement


def test_agrees_with_reference_exact_top_k_and_selected_attention():
    rng = np.random.default_rng(7)
    batch, queries, num_keys, heads, key_dim, model_dim = 2, 4, 6, 2, 3, 5
    query = rng.normal(size=(batch, queries, model_dim))
    value = rng.normal(size=(batch, num_keys, model_dim))
    weights = [
        rng.normal(size=(model_dim, heads, key_dim)), rng.normal(size=(heads, key_dim)),
        rng.normal(size=(model_dim, heads, key_dim)), rng.normal(size=(heads, key_dim)),
        rng.normal(size=(model_dim, heads, key_dim)), rng.normal(size=(heads, key_dim)),
        rng.normal(size=(heads, key_dim, model_dim)), rng.normal(size=(model_dim,)),
    ]
    key_mask = np.ones((batch, num_keys), bool)
    key_mask[0, :2] = False
    query_mask = np.ones((batch, queries), bool)
    query_mask[1, 0] = False
    attention_mask = reference.combined_mask(batch, queries, num_keys, query_mask, key_mask)
    dense_output, dense_weights, dense_logits = reference.dense_attention(
        query, value, weights, attention_mask=attention_mask
    )
    fully_masked = ~attention_mask.any(axis=-1)  # [B, 1, M]
    fully_masked = np.broadcast_to(fully_masked, (batch, heads, queries))

    exact = reference.exact_top_k(dense_logits, 3, attention_mask)
    recall = metrics.recall_at_k(exact, dense_logits, mask=attention_mask)
    np.testing.assert_array_equal(np.isnan(recall), fully_masked)
    np.testing.assert_allclose(recall[~fully_masked], 1.0)

    # Every valid key selected: all the mass, and the output of dense attention.
    everything = reference.exact_top_k(dense_logits, num_keys, attention_mask)
    mass = metrics.attention_mass_captured(everything, dense_weights, mask=attention_mask)
    np.testing.assert_allclose(mass[~fully_masked], 1.0)
    sparse_output, _ = reference.selected_attention(
        query, value, weights, everything, attention_mask=attention_mask
    )
    np.testing.assert_allclose(
        metrics.output_relative_error(sparse_output, dense_output), 0.0, atol=1e-12
    )

    # Mass captured by the exact top-3 equals the sum of its dense weights.
    mass = metrics.attention_mass_captured(exact, dense_weights)
    by_hand = np.where(exact >= 0, np.take_along_axis(dense_weights, np.maximum(exact, 0), -1), 0)
    expected = np.where(fully_masked, NAN, by_hand.sum(-1))
    np.testing.assert_allclose(mass, expected)
