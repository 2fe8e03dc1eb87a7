"""The compiled folded attention (`sdattn.folded_attention`) of a shared selection: the same softmax
weights and mixed rows as the TF ops it replaces, the same layer outputs and gradients, and planned
only where it can run."""

import numpy as np
import pytest
import tensorflow as tf

from sdattn import SparseDenseMultiHeadAttention, budgets, folded_attention
from tests.cases import random_case


def _in_ops(folded, keys, values, indices, valid, bias):
    """The kernel's maths in TF ops: logits over the gathered rows, a masked softmax, the mixing."""
    rows = tf.gather(keys, indices, batch_dims=1)  # [B, M, k, Dk]
    logits = tf.einsum("bmhd,bmkd->bmhk", folded, rows)
    allowed = tf.broadcast_to(tf.transpose(valid, (0, 2, 1, 3)), logits.shape)  # [B, M, H, k]
    if bias is not None:
        logits += tf.transpose(bias, (0, 2, 1, 3))
    scores = tf.where(allowed, tf.nn.softmax(tf.where(allowed, logits, -1e30), axis=-1), 0.0)
    value_rows = tf.gather(keys if values is None else values, indices, batch_dims=1)  # [B, M, k, Dv]
    return scores.numpy(), tf.einsum("bmhk,bmkd->bmhd", scores, value_rows).numpy()


@pytest.mark.parametrize("slots", [1, 5, 8, 11])  # below, off and at the kernel's four (mixing) and eight (logits) rows a pass
@pytest.mark.parametrize("separate_values", [False, True])
@pytest.mark.parametrize("bias_heads", [None, 1, 3])
@pytest.mark.parametrize("valid_heads", [1, 3])
def test_kernel_equals_the_tf_ops(slots, separate_values, bias_heads, valid_heads):
    rng = np.random.default_rng([slots, separate_values, bias_heads or 0, valid_heads])
    batch, num_queries, heads, num_keys, depth = 2, 7, 3, 40, 12
    folded = rng.normal(size=(batch, num_queries, heads, depth)).astype("float32")
    keys = rng.normal(size=(batch, num_keys, depth)).astype("float32")
    values = rng.normal(size=(batch, num_keys, 5)).astype("float32") if separate_values else None
    indices = rng.integers(0, num_keys, size=(batch, num_queries, slots)).astype("int32")
    valid = rng.random((batch, valid_heads, num_queries, slots)) > 0.3
    valid[0, :, 0] = False  # a query with no valid slot weighs nothing
    bias = None if bias_heads is None else rng.normal(size=(batch, bias_heads, num_queries, slots)).astype("float32")
    head_major = np.ascontiguousarray(folded.transpose(2, 0, 1, 3))  # [H, B, M, D], as the kernel reads it
    scores, mixed = folded_attention.attend_numpy(head_major, keys, values, indices, valid, bias)
    expected_scores, expected_mixed = _in_ops(folded, keys, values, indices, valid, bias)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-7)
    assert mixed.shape == (heads, batch, num_queries, expected_mixed.shape[-1])  # head-major
    np.testing.assert_allclose(mixed.transpose(1, 2, 0, 3), expected_mixed, rtol=1e-5, atol=1e-6)
    assert not scores[0, 0].any() and not mixed[:, 0, 0].any()


def test_the_softmax_holds_far_apart_logits_and_infinities():
    """Logits hundreds apart (weights that underflow) and -inf ones (a masked key's score)."""
    folded = np.zeros((1, 3, 1, 1), "float32")
    keys = np.array([[[0.0], [1.0], [2.0], [3.0]]], "float32")
    indices = np.array([[[0, 1, 2, 3]] * 3], "int32")
    bias = np.array([[[[0.0, -30.0, -100.0, -400.0], [0.0, 0.0, 1e-3, -np.inf], [-np.inf] * 4]]], "float32")
    valid = np.ones((1, 1, 3, 4), bool)
    scores, _ = folded_attention.attend_numpy(folded.transpose(2, 0, 1, 3).copy(), keys, None, indices, valid, bias)
    expected, _ = _in_ops(folded, keys, None, indices, valid, bias)
    np.testing.assert_allclose(scores[0, :2], expected[0, :2], rtol=2e-6, atol=1e-12)
    assert not scores[0, 2].any()  # every logit -inf: nothing to attend, as with every slot masked


@pytest.fixture
def kernel_always(monkeypatch):
    """Plans the kernel for calls of any size (by default small calls keep TF's ops)."""
    monkeypatch.setattr(budgets, "FOLDED_KERNEL_MIN_ELEMENTS", 0)


@pytest.mark.parametrize("selector", ["cosine", "window", "learned", "lsh"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_the_layer_equals_its_tf_ops_with_the_kernel(kernel_always, monkeypatch, selector, use_bias):
    rng = np.random.default_rng(5)
    query, value = random_case(rng, 2, 14, 120, 10, 10)
    value_mask = rng.random(value.shape[:2]) > 0.3
    value = tf.constant(value)
    sparse = tf.sparse.from_dense(query)
    layer = SparseDenseMultiHeadAttention(3, 4, 9, selector=selector, use_bias=use_bias)
    layer(sparse, value)
    assert layer.attention_plan(sparse, value).compiled_folding
    assert not layer.attention_plan(sparse, value, training=True).compiled_folding

    def outputs_and_gradients():
        results = []
        for call in (layer, tf.function(layer)):
            with tf.GradientTape() as tape:
                tape.watch(value)
                out, scores, indices = call(sparse, value, value_mask=value_mask, return_attention_scores=True)
                loss = tf.reduce_sum(out ** 2)
            results.append((out, scores, indices, tape.gradient(loss, [value] + layer.trainable_weights)))
        return results

    compiled = outputs_and_gradients()
    monkeypatch.setattr(budgets, "FOLDED_KERNEL_MIN_ELEMENTS", 2**62)
    assert not layer.attention_plan(sparse, value).compiled_folding
    in_ops = outputs_and_gradients()
    for (out, scores, indices, grads), (want_out, want_scores, want_indices, want_grads) in zip(compiled, in_ops):
        np.testing.assert_array_equal(indices.numpy(), want_indices.numpy())
        np.testing.assert_allclose(scores.numpy(), want_scores.numpy(), atol=1e-6)
        np.testing.assert_allclose(out.numpy(), want_out.numpy(), atol=1e-5)
        for got, want in zip(grads, want_grads):
            assert got is not None and want is not None
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
