"""Tests of sdattn.weights: MHA order and shapes, seeded draws, and aligned logits that follow the
raw query–key similarity with the requested spread (checked through sdattn.reference)."""

import numpy as np
import pytest
from scipy import stats

from sdattn import comparison, inputs, metrics, reference
from sdattn import weights as weights_lib


def keras_mha_shapes(query_dim, value_dim, num_heads, key_dim):
    """Weight shapes of a built `keras.layers.MultiHeadAttention`, in its order."""
    import keras

    layer = keras.layers.MultiHeadAttention(num_heads, key_dim)
    layer.build((1, 2, query_dim), (1, 3, value_dim))
    return [tuple(w.shape) for w in layer.get_weights()]


def masked_logits(example, weights):
    """Reference logits `[B, H, M, N]` and the valid (query, key) mask `[B, 1, M, N]`."""
    mask = reference.combined_mask(example.batch_size, example.num_queries, example.num_keys,
                                   example.query_mask, example.value_mask)
    _, _, logits = reference.dense_attention(example.dense_query(), example.value, weights,
                                             attention_mask=mask)
    return logits, mask


@pytest.mark.parametrize("kind", ["planted", "bag_of_words", "variable_length"])
@pytest.mark.parametrize("weights_kind", weights_lib.WEIGHT_KINDS)
def test_weights_have_keras_mha_order_and_shapes(kind, weights_kind):
    example = inputs.generate_inputs(kind, seed=0)
    weights = weights_lib.make_weights(weights_kind, example, 2, 8, seed=0)
    assert [w.shape for w in weights] == keras_mha_shapes(
        example.query_dim, example.value_dim, 2, 8)
    assert all(w.dtype == np.float32 for w in weights)


def test_random_weights_are_the_comparison_default():
    example = inputs.generate_inputs("planted", seed=0)
    default = comparison.run_selector(example, "dot", 4, 2, 8, seed=3, repeats=0)
    explicit = comparison.run_selector(example, "dot", 4, 2, 8, seed=3, repeats=0,
                                       weights=weights_lib.random_weights(example, 2, 8, seed=3))
    np.testing.assert_array_equal(default.indices, explicit.indices)
    np.testing.assert_array_equal(default.output, explicit.output)
    other_seed = comparison.run_selector(example, "dot", 4, 2, 8, seed=4, repeats=0)
    assert not np.array_equal(default.output, other_seed.output)  # the seed reaches the weights
    assert comparison.attention_weights is weights_lib.random_weights  # the older public name


def test_same_seed_same_weights_other_seed_other_weights():
    example = inputs.generate_inputs("planted", seed=0)
    first = weights_lib.aligned_weights(example, 2, 8, seed=5)
    again = weights_lib.aligned_weights(example, 2, 8, seed=5)
    other = weights_lib.aligned_weights(example, 2, 8, seed=6)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], other[0]) and not np.allclose(first[2], other[2])


def test_aligned_keeps_the_value_and_output_kernels_of_random():
    example = inputs.generate_inputs("needle", seed=1)
    aligned = weights_lib.aligned_weights(example, 4, 16, seed=2)
    random = weights_lib.random_weights(example, 4, 16, seed=2)
    for position in (1, 3, 4, 5, 6, 7):  # biases, value kernel, output kernel
        np.testing.assert_array_equal(aligned[position], random[position])


@pytest.mark.parametrize("kind,key_dim", [
    ("planted", 8), ("planted", 64), ("bag_of_words", 16), ("variable_length", 8)])
def test_aligned_logits_spread_as_requested_within_each_query(kind, key_dim):
    example = inputs.generate_inputs(kind, seed=0)
    weights = weights_lib.aligned_weights(example, 3, key_dim, seed=0, logit_std=1.5)
    logits, mask = masked_logits(example, weights)
    for head in range(3):
        spreads = [np.var(logits[0, head, m][mask[0, 0, m]])
                   for m in range(example.num_queries) if mask[0, 0, m].sum() > 1]
        assert np.sqrt(np.mean(spreads)) == pytest.approx(1.5, rel=1e-4)


def test_random_logits_are_tiny_and_aligned_ones_are_not():
    example = inputs.generate_inputs("bag_of_words", seed=0)
    random_logits, _ = masked_logits(example, weights_lib.random_weights(example, 4, 16))
    aligned_logits, _ = masked_logits(example, weights_lib.aligned_weights(example, 4, 16))
    assert np.abs(random_logits).std(axis=-1).mean() < 0.2
    assert aligned_logits.std(axis=-1).mean() > 1.0


def mean_rank_correlation(logits, similarity, mask):
    """Mean Spearman correlation over (head, query) rows of the valid keys."""
    values = []
    for head in range(logits.shape[1]):
        for query in range(logits.shape[2]):
            valid = mask[0, 0, query]
            values.append(stats.spearmanr(logits[0, head, query, valid],
                                          similarity[query, valid]).statistic)
    return float(np.mean(values))


def test_raw_alignment_follows_the_raw_dot_product():
    example = inputs.generate_inputs("needle", seed=0)  # Dq == D
    assert weights_lib.query_alignment(example) == "raw"
    similarity = example.dense_query()[0] @ example.value[0].T  # [M, N]
    aligned, mask = masked_logits(example, weights_lib.aligned_weights(example, 4, 32))
    random, _ = masked_logits(example, weights_lib.random_weights(example, 4, 32))
    assert mean_rank_correlation(aligned, similarity, mask) > 0.8
    assert abs(mean_rank_correlation(random, similarity, mask)) < 0.3


def test_vocabulary_alignment_maps_a_document_to_its_words_embeddings():
    example = inputs.generate_inputs("bag_of_words", seed=0)  # Dq == N: features are the keys
    assert weights_lib.query_alignment(example) == "vocabulary"
    embeddings = example.value[0]  # [N, D]
    document_vectors = example.dense_query()[0] @ embeddings  # [M, D]
    similarity = document_vectors @ embeddings.T  # [M, N]
    aligned, mask = masked_logits(example, weights_lib.aligned_weights(example, 4, 16))
    assert mean_rank_correlation(aligned, similarity, mask) > 0.8


def test_no_alignment_falls_back_to_random_queries_with_the_spread():
    example = inputs.generate_inputs("variable_length", seed=0)  # Dq, D and N all differ
    assert weights_lib.query_alignment(example) == "none"
    logits, mask = masked_logits(example, weights_lib.aligned_weights(example, 2, 8))
    assert np.isfinite(logits).all()


def test_aligned_weights_let_dot_find_the_planted_keys():
    example = inputs.generate_inputs("planted", seed=0, noise=0.05)
    found = {}
    for weights_kind in weights_lib.WEIGHT_KINDS:
        weights = weights_lib.make_weights(weights_kind, example, 4, 16, seed=0)
        logits, mask = masked_logits(example, weights)
        selected = reference.exact_top_k(logits, 4, mask)  # what `dot` picks: [B, H, M, 4]
        found[weights_kind] = metrics.mean_of_defined(
            metrics.ground_truth_recall(selected, example.ground_truth))
    assert found["aligned"] > 0.9
    assert found["random"] < 0.3


@pytest.mark.parametrize("bad", [
    dict(kind="trained"), dict(num_heads=0), dict(key_dim=-1), dict(logit_std=0.0)])
def test_bad_arguments_name_the_argument(bad):
    example = inputs.generate_inputs("planted", seed=0)
    arguments = dict(num_heads=2, key_dim=4)
    arguments.update({k: v for k, v in bad.items() if k != "kind"})
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"`{name}`"):
        if "logit_std" in bad:
            weights_lib.aligned_weights(example, **arguments)
        else:
            weights_lib.make_weights(bad.get("kind", "aligned"), example, **arguments)
