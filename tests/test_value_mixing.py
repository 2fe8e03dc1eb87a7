"""The compiled value mixing (`sdattn.value_mixing`) of `dot`'s reused-logits path: the same sums as
the gather-and-einsum it replaces, the same layer outputs and gradients, and planned only where it
costs less and can run."""

import numpy as np
import pytest
import tensorflow as tf

from sdattn import SparseDenseMultiHeadAttention, budgets, reference, value_mixing
from tests.cases import paired_layers, random_case


def _mixing_case(rng, batch=2, heads=3, num_queries=9, slots=7, num_keys=50, depth=12, dtype="float32"):
    tokens = rng.normal(size=(batch, num_keys, depth)).astype(dtype)
    indices = rng.integers(0, num_keys, size=(batch, heads, num_queries, slots)).astype(np.int32)
    weights = rng.random((batch, heads, num_queries, slots)).astype(dtype)
    weights[..., -2:] = 0  # masked slots
    return tokens, indices, weights


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("slots", [1, 7, 8, 13, 32])  # below, at and off the kernel's eight rows a pass
def test_kernel_equals_the_gather_and_einsum(dtype, slots):
    rng = np.random.default_rng(slots)
    tokens, indices, weights = _mixing_case(rng, slots=slots, dtype=dtype)
    mixed = value_mixing.mix_numpy(tokens, indices, weights)
    expected = value_mixing.mix_in_ops(tf.constant(tokens), tf.constant(indices), tf.constant(weights)).numpy()
    assert mixed.shape == (3, 2, 9, 12) and mixed.dtype == np.dtype(dtype)  # [H, B, M, D]
    np.testing.assert_allclose(mixed, expected, rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-6)


def test_the_op_runs_eagerly_and_in_a_graph_with_the_reference_gradient():
    rng = np.random.default_rng(1)
    tokens, indices, weights = (tf.constant(part) for part in _mixing_case(rng, batch=3, num_queries=40))
    upstream = tf.constant(rng.normal(size=(3, 3, 40, 12)).astype("float32"))  # [H, B, M, D]
    expected = value_mixing.mix_in_ops(tokens, indices, weights)
    for call in (value_mixing.mix, tf.function(value_mixing.mix)):
        with tf.GradientTape() as tape:
            tape.watch([tokens, weights])
            mixed = call(tokens, indices, weights)
        np.testing.assert_allclose(mixed.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
        gradients = tape.gradient(mixed, [tokens, weights], output_gradients=upstream)
        with tf.GradientTape() as tape:
            tape.watch([tokens, weights])
            reference_mixed = value_mixing.mix_in_ops(tokens, indices, weights)
        for got, want in zip(gradients, tape.gradient(reference_mixed, [tokens, weights], output_gradients=upstream)):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.fixture
def mixing_always(monkeypatch):
    """Plans the mixing for calls of any size (by default small calls keep TF's ops)."""
    monkeypatch.setattr(budgets, "VALUE_MIXING_MIN_ELEMENTS", 0)


@pytest.mark.parametrize("use_bias", [True, False])
def test_dot_with_mixed_values_equals_the_reference_and_the_standard_path(mixing_always, use_bias):
    rng = np.random.default_rng(2)
    query, value = random_case(rng, 2, 12, 200, 6, 6)
    value_mask = rng.random(value.shape[:2]) > 0.3
    layer, mha = paired_layers(2, 4, 6, "dot", query, value, use_bias=use_bias)
    sparse = tf.sparse.from_dense(query)
    assert layer.attention_plan(sparse, value).mixes_raw_values
    standard = SparseDenseMultiHeadAttention(2, 4, 6, selector="dot", use_bias=use_bias, fast_paths=False)
    standard(sparse, value)
    standard.set_weights(layer.get_weights())
    mask = reference.combined_mask(2, 12, 200, key_mask=value_mask)
    for call in (layer, tf.function(layer)):
        out, scores, indices = call(sparse, value, value_mask=value_mask, return_attention_scores=True)
        ref_out, ref_scores = reference.selected_attention(query, value, mha.get_weights(), indices.numpy(),
                                                           attention_mask=mask)
        np.testing.assert_allclose(out.numpy(), ref_out, atol=1e-5)
        np.testing.assert_allclose(scores.numpy(), ref_scores, atol=1e-5)
        expected = standard(sparse, value, value_mask=value_mask, return_attention_scores=True)
        np.testing.assert_array_equal(indices.numpy(), expected[2].numpy())
        np.testing.assert_allclose(out.numpy(), expected[0].numpy(), atol=1e-5)


def test_dot_gradients_are_the_same_with_mixed_values(mixing_always):
    rng = np.random.default_rng(3)
    query, value = random_case(rng, 2, 12, 200, 6, 6)
    value = tf.constant(value)
    sparse = tf.sparse.from_dense(query)
    mixed = SparseDenseMultiHeadAttention(2, 4, 6, selector="dot")
    standard = SparseDenseMultiHeadAttention(2, 4, 6, selector="dot", fast_paths=False)
    mixed(sparse, value)
    standard(sparse, value)
    standard.set_weights(mixed.get_weights())
    assert mixed.attention_plan(sparse, value).mixes_raw_values
    gradients = []
    for layer in (mixed, standard):
        with tf.GradientTape() as tape:
            tape.watch(value)
            loss = tf.reduce_sum(layer(sparse, value) ** 2)
        gradients.append(tape.gradient(loss, [value] + layer.trainable_weights))
    for got, want in zip(*gradients):
        assert got is not None and want is not None
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
