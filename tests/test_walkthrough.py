"""The teaching walkthrough's numbers against the NumPy reference and the TF layer."""

import numpy as np
import pytest
import tensorflow as tf

from sdattn import reference
from sdattn.layer import SparseDenseMultiHeadAttention
from sdattn.walkthrough import BREAK_IT_PRESETS, build_walkthrough


def tiny_case(seed=0):
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(4, 6)) * (rng.random((4, 6)) < 0.4)
    query[:, 0] += 1.0
    value = rng.normal(size=(12, 6))
    return query.astype("float32"), value.astype("float32")


@pytest.mark.parametrize("masked", [False, True])
def test_walkthrough_steps_match_reference_and_layer(masked):
    query, value = tiny_case()
    value_mask = np.array([True] * 9 + [False] * 3) if masked else None
    layer = SparseDenseMultiHeadAttention(2, 4, 3)
    out, scores, indices = layer(tf.sparse.from_dense(query[None]), value[None],
                                 value_mask=None if value_mask is None else value_mask[None],
                                 return_attention_scores=True)
    weights = layer.get_weights()
    walk = build_walkthrough(query, value, weights, 3, value_mask=value_mask)
    assert [s.key for s in walk.steps] == ["query", "projections", "scores", "top_k", "softmax", "weighted_sum", "output"]
    _, _, logits = reference.dense_attention(query[None], value[None], weights)
    np.testing.assert_allclose(walk.step("scores").arrays["scores"], logits[0], atol=1e-6)
    np.testing.assert_array_equal(np.sort(walk.step("top_k").arrays["indices"], -1), np.sort(indices.numpy()[0], -1))
    mask = None if value_mask is None else reference.combined_mask(1, 4, 12, key_mask=value_mask[None])
    ref_out, ref_scores = reference.selected_attention(query[None], value[None], weights,
                                                       walk.step("top_k").arrays["indices"][None], attention_mask=mask)
    np.testing.assert_allclose(walk.step("softmax").arrays["weights"], ref_scores[0], atol=1e-6)
    np.testing.assert_allclose(walk.step("output").arrays["output"], ref_out[0], atol=1e-6)
    np.testing.assert_allclose(walk.step("output").arrays["output"], out.numpy()[0], atol=1e-5)
    kept = walk.step("top_k").arrays["kept"]
    assert kept.shape == (2, 4, 12) and (kept.sum(-1) == 3).all()
    if masked:
        assert not kept[..., 9:].any()


def test_all_keys_masked_gives_zero_weights_and_bias_only_output():
    query, value = tiny_case(1)
    layer = SparseDenseMultiHeadAttention(2, 4, 3)
    layer(tf.sparse.from_dense(query[None]), value[None])
    walk = build_walkthrough(query, value, layer.get_weights(), 3, value_mask=np.zeros(12, bool))
    assert (walk.step("top_k").arrays["indices"] == -1).all()
    assert (walk.step("softmax").arrays["weights"] == 0).all()
    np.testing.assert_allclose(walk.step("output").arrays["output"], np.broadcast_to(layer.get_weights()[-1], (4, 6)))


def test_presets_are_complete():
    for name, preset in BREAK_IT_PRESETS.items():
        assert {"label", "generator", "top_k", "what", "why"} <= set(preset), name
