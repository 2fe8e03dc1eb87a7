"""Selection primitives tested alone: the grouped top-k against tf.math.top_k and NumPy."""

import numpy as np
import pytest
import tensorflow as tf

from sdattn import selectors as selectors_lib


@pytest.mark.parametrize("shape,k,group_size", [
    ((3, 1000), 5, None), ((2, 4, 7, 4096), 32, None), ((2, 1, 3, 16384), 32, 64),
    ((5, 333), 7, 4), ((4, 64), 3, 8), ((2, 10), 10, None),
])
def test_grouped_top_k_equals_plain_top_k(shape, k, group_size):
    rng = np.random.default_rng(sum(shape) + k)
    scores = rng.normal(size=shape).astype("float32")
    scores[rng.random(shape) < 0.2] = -np.inf  # masked keys
    values, indices = selectors_lib.grouped_top_k(tf.constant(scores), k, group_size)
    expected_values, expected_indices = tf.math.top_k(scores, k)
    np.testing.assert_array_equal(values.numpy(), expected_values.numpy())
    np.testing.assert_array_equal(indices.numpy(), expected_indices.numpy())
    # Independent check with NumPy: the values at the returned indices are the k largest.
    picked = np.take_along_axis(scores, indices.numpy(), -1)
    np.testing.assert_array_equal(picked, -np.sort(-scores, -1)[..., :k])


def test_grouped_top_k_breaks_ties_by_lower_index():
    scores = np.zeros((2, 512), "float32")
    scores[:, 100:200] = 1.0
    _, indices = selectors_lib.grouped_top_k(tf.constant(scores), 8, 8)
    np.testing.assert_array_equal(indices.numpy(), np.tile(np.arange(100, 108), (2, 1)))


def test_block_sizes_follow_the_score_budget_per_batch_item():
    """Shared selectors get about 16 M scores per block and batch item, per-head ones 64 M;
    `block_size=` overrides both, and a block never holds fewer than k keys."""
    from sdattn import selectors as selectors_lib

    class Context:
        max_queries, num_heads = 512, 8

    assert selectors_lib.get("cosine")._block_size(Context, 32) == 2**24 // 512
    assert selectors_lib.get("dot")._block_size(Context, 32) == 2**26 // (512 * 8)
    assert selectors_lib.get({"name": "dot", "block_size": 100})._block_size(Context, 32) == 100
    Context.max_queries = 2**30
    assert selectors_lib.get("dot")._block_size(Context, 32) == 32


@pytest.mark.parametrize("block_size", [1000, 300, 37, 10], ids=["1-block", "4-blocks", "28-blocks", "100-blocks"])
def test_streamed_top_k_equals_one_top_k_over_all_keys(block_size):
    """Blocks reduced to their top-k and merged every `_MERGE_EVERY` blocks give exactly the
    top-k over all keys (values, positions, ties to the lower key) and the same gradient."""
    rng = np.random.default_rng(block_size)
    scores = rng.integers(0, 6, size=(2, 3, 4, 1000)).astype("float32")  # many ties across blocks
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    scores = tf.constant(scores)
    k = 10

    def top_k_and_gradient(top_k):
        with tf.GradientTape() as tape:
            tape.watch(scores)
            values, indices = top_k()
            loss = tf.reduce_sum(values * tf.range(1.0, k + 1.0))
        return values, indices, tape.gradient(loss, scores)

    got = top_k_and_gradient(lambda: selectors_lib.streamed_top_k(
        lambda start, stop: scores[..., start:stop], 1000, block_size, k, return_values=True))
    expected = top_k_and_gradient(lambda: tf.math.top_k(scores, k))
    for got_part, expected_part in zip(got, expected):
        np.testing.assert_array_equal(got_part.numpy(), expected_part.numpy())
