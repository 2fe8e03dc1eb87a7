"""Tests of the learned, lsh and hybrid selectors' own rules: NumPy references of each selection
rule, the learned scorer's weights, save/load and training (generic checks: test_layer.py)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from cases import paired_layers, random_case
from sdattn import metrics, reference
from sdattn.inputs import generate_inputs
from sdattn.layer import SparseDenseMultiHeadAttention

def masked_softmax(logits, valid):
    shifted = np.where(valid, logits, -np.inf)
    top = np.max(shifted, axis=-1, keepdims=True)
    exp = np.where(valid, np.exp(shifted - np.where(np.isfinite(top), top, 0.0)), 0.0)
    total = exp.sum(-1, keepdims=True)
    return np.divide(exp, total, out=np.zeros_like(exp), where=total > 0)


def top_k_sets(scores, k):
    """Sets of the k best positions per row of `[..., N]` scores."""
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    return [set(row) for row in order.reshape(-1, k)]


def index_sets(indices):
    return [set(row[row >= 0]) for row in indices.reshape(-1, indices.shape[-1])]


# ---- oracle: top_k >= N equals Keras MHA ----------------------------------------------------------

# The generic checks (oracle, masks, save/load, graphs) run for every registered selector in
# test_layer.py; these are the learned, lsh and hybrid selectors' own behaviours.

def test_learned_selector_weights_survive_save_and_load(tmp_path):
    rng = np.random.default_rng(21)
    query, value = random_case(rng, 2, 4, 9, 5, 5)
    query_input = keras.Input(shape=(4, 5), sparse=True)
    value_input = keras.Input(shape=(9, 5))
    layer = SparseDenseMultiHeadAttention(2, 4, 3, selector="learned", name="sdattn")
    model = keras.Model([query_input, value_input], layer(query_input, value_input))
    # Trained-looking selector weights, so the round trip must restore them too.
    weights = layer.get_weights()
    layer.set_weights(weights[:8] + [rng.normal(size=w.shape).astype("float32") for w in weights[8:]])
    inputs = [tf.sparse.from_dense(query), tf.constant(value)]
    before = model(inputs).numpy()
    _, _, indices_before = layer(*inputs, return_attention_scores=True)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_array_equal(restored(inputs).numpy(), before)
    restored_layer = restored.get_layer("sdattn")
    for restored_weight, weight in zip(restored_layer.get_weights()[8:], layer.get_weights()[8:]):
        np.testing.assert_array_equal(restored_weight, weight)
    _, _, indices_after = restored_layer(*inputs, return_attention_scores=True)
    np.testing.assert_array_equal(indices_after.numpy(), indices_before.numpy())


@pytest.mark.parametrize("kwargs,pattern", [
    ({"name": "learned", "rank": 0}, r"`rank`.*rank=0"),
    ({"name": "learned", "rank": 2.5}, r"`rank`.*rank=2.5"),
    ({"name": "lsh", "num_bits": 0}, r"`num_bits`.*num_bits=0"),
    ({"name": "lsh", "num_bits": 65}, r"`num_bits`.*num_bits=65"),
    ({"name": "lsh", "num_tables": 0}, r"`num_tables`.*num_tables=0"),
    ({"name": "lsh", "seed": -1}, r"`seed`.*seed=-1"),
    ({"name": "hybrid", "window_fraction": 1.5}, r"`window_fraction`.*window_fraction=1.5"),
    ({"name": "hybrid", "window_fraction": "half"}, r"`window_fraction`.*window_fraction='half'"),
])
def test_constructor_errors_name_the_argument_and_value(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        SparseDenseMultiHeadAttention(2, 4, 3, selector=kwargs)


# ---- learned -----------------------------------------------------------------------------------

def test_learned_weights_follow_the_attention_weights_and_bias_the_logits():
    rng = np.random.default_rng(24)
    query, value = random_case(rng, 2, 5, 7, 6, 4)
    layer, mha = paired_layers(2, 3, 7, {"name": "learned", "rank": 3}, query, value)
    assert [w.name for w in layer.weights[8:]] == ["query_factor", "key_factor"]
    assert [w.shape for w in layer.get_weights()[8:]] == [(6, 3), (4, 3)]
    query_factor = rng.normal(size=(6, 3)).astype("float32")
    key_factor = rng.normal(size=(4, 3)).astype("float32")
    layer.set_weights(mha.get_weights() + [query_factor, key_factor])
    np.testing.assert_array_equal(layer.get_weights()[9], key_factor)
    value_mask = np.array([[True] * 7, [True, False, True, True, False, True, True]])
    out = layer(tf.sparse.from_dense(query), value, value_mask=value_mask)
    # NumPy: dense attention whose logits gain the learned score (x A)·(y B) on every key.
    weights = reference.split_weights(mha.get_weights())
    _, _, logits = reference.dense_attention(query, value, mha.get_weights())
    learned_score = np.einsum("bmr,bnr->bmn", query @ query_factor, value @ key_factor)  # [B, M, N]
    attention = masked_softmax(logits + learned_score[:, None], value_mask[:, None, None, :])
    values = reference.project(value, weights["value_kernel"], weights["value_bias"])  # [B, N, H, vd]
    context = np.einsum("bhmn,bnhd->bmhd", attention, values)
    expected = reference.output_projection(context, weights["output_kernel"], weights["output_bias"])
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-4)


def test_learned_selects_by_head_mean_logits_plus_the_learned_score():
    rng = np.random.default_rng(25)
    query, value = random_case(rng, 2, 6, 15, 5, 5)
    layer, mha = paired_layers(3, 4, 4, {"name": "learned", "rank": 2}, query, value)
    query_factor, key_factor = (rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()[8:])
    layer.set_weights(mha.get_weights() + [query_factor, key_factor])
    _, _, indices = layer(tf.sparse.from_dense(query), value, return_attention_scores=True)
    _, _, logits = reference.dense_attention(query, value, mha.get_weights())
    relevance = logits.mean(axis=1) + np.einsum("bmr,bnr->bmn", query @ query_factor, value @ key_factor)
    expected = top_k_sets(relevance, 4)
    for head in range(3):
        assert index_sets(indices.numpy()[:, head]) == expected


def test_fit_on_planted_data_raises_the_learned_ground_truth_recall():
    """Only the learned scorer trains (attention weights frozen), towards attention on the truth.

    The target is attention restricted to each query's ground-truth keys, so a selection that
    misses them cannot fit it; the learned score is the one thing that can move the selection.
    Recall is also measured on a second, unseen planted example: the scorer learns what makes a
    key relevant (closeness in the raw space), not the positions of one example.
    """
    keras.utils.set_random_seed(0)
    shape = dict(batch_size=16, num_queries=8, num_keys=32, dim=16, relevant_per_query=4,
                 nonzeros_per_query=4, noise=0.05)
    train = generate_inputs("planted", seed=1, **shape)
    unseen = generate_inputs("planted", seed=2, **shape)
    heads = 2
    query_input = keras.Input(shape=(8, 16), sparse=True)
    value_input = keras.Input(shape=(32, 16))
    layer = SparseDenseMultiHeadAttention(heads, 8, 4, selector={"name": "learned", "rank": 8, "seed": 0})
    model = keras.Model([query_input, value_input], layer(query_input, value_input))
    for variable in layer.weights[:8]:
        variable.trainable = False
    truth = np.broadcast_to(train.ground_truth[:, None], (16, heads, 8, 4))
    target, _ = reference.selected_attention(train.dense_query(), train.value, layer.get_weights(), truth)

    def truth_recall(example):
        _, _, indices = layer(example.to_sparse_tensor(), tf.constant(example.value),
                              return_attention_scores=True)
        return metrics.mean_of_defined(metrics.ground_truth_recall(indices.numpy(), example.ground_truth))

    before, before_unseen = truth_recall(train), truth_recall(unseen)
    frozen = [w.copy() for w in layer.get_weights()[:8]]
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit([train.to_sparse_tensor(), tf.constant(train.value)], target.astype("float32"),
              epochs=10, batch_size=16, verbose=0, shuffle=False)
    after, after_unseen = truth_recall(train), truth_recall(unseen)
    # Random projections select about k/N = 1/8 of the truth; the trained scorer most of it.
    assert before < 0.35 and before_unseen < 0.35
    assert after > 0.75 and after > before + 0.4
    assert after_unseen > 0.65 and after_unseen > before_unseen + 0.3
    for old, new in zip(frozen, layer.get_weights()[:8]):
        np.testing.assert_array_equal(old, new)


# ---- lsh ---------------------------------------------------------------------------------------

def lsh_reference(selector, query_vectors, key_vectors, k, key_mask=None):
    """NumPy: per query, keys ordered by (min Hamming distance over tables, then -cosine)."""
    normals = selector.hyperplanes(query_vectors.shape[-1])  # [T, D, bits]
    query_codes = np.einsum("bmd,tdc->bmtc", query_vectors, normals) >= 0
    key_codes = np.einsum("bnd,tdc->bntc", key_vectors, normals) >= 0
    distance = (query_codes[:, :, None] != key_codes[:, None]).sum(-1).min(-1)  # [B, M, N]
    cosine = np.einsum("bmd,bnd->bmn", query_vectors, key_vectors) / (
        np.linalg.norm(query_vectors, axis=-1)[..., None] * np.linalg.norm(key_vectors, axis=-1)[:, None])
    expected = []
    for b in range(query_vectors.shape[0]):
        for m in range(query_vectors.shape[1]):
            allowed = [n for n in range(key_vectors.shape[1]) if key_mask is None or key_mask[b, n]]
            ranked = sorted(allowed, key=lambda n: (distance[b, m, n], -cosine[b, m, n]))
            expected.append(set(ranked[:k]))
    return expected, distance


def test_lsh_takes_the_best_keys_of_the_query_bucket_then_the_nearest_buckets():
    rng = np.random.default_rng(26)
    query, value = random_case(rng, 2, 12, 40, 8, 8)
    value_mask = rng.random((2, 40)) < 0.8
    layer = SparseDenseMultiHeadAttention(2, 4, 6, selector={"name": "lsh", "num_bits": 3, "seed": 5})
    _, _, indices = layer(tf.sparse.from_dense(query), value, value_mask=value_mask,
                          return_attention_scores=True)
    expected, distance = lsh_reference(layer.selector, query, value, 6, value_mask)
    selected = index_sets(indices.numpy()[:, 0])
    assert selected == expected
    assert index_sets(indices.numpy()[:, 1]) == selected  # shared by the heads
    # Both regimes occur: a bucket holding >= k allowed keys gives k same-bucket keys; a smaller
    # one gives all its keys, then falls back to the nearest buckets.
    same_bucket = (distance == 0) & value_mask[:, None, :]
    counts = same_bucket.reshape(-1, 40).sum(-1)
    assert (counts >= 6).any() and (counts < 6).any()
    for row, chosen, bucket in zip(range(len(selected)), selected, same_bucket.reshape(-1, 40)):
        if counts[row] >= 6:
            assert chosen <= set(np.flatnonzero(bucket))
        else:
            assert set(np.flatnonzero(bucket)) <= chosen


def test_lsh_with_several_tables_in_the_projected_space():
    rng = np.random.default_rng(27)
    query, value = random_case(rng, 1, 10, 30, 5, 7)  # Dq != D: hashes the projected vectors
    layer, mha = paired_layers(2, 4, 5, {"name": "lsh", "num_bits": 4, "num_tables": 3, "seed": 9},
                               query, value)
    _, _, indices = layer(tf.sparse.from_dense(query), value, return_attention_scores=True)
    weights = reference.split_weights(mha.get_weights())
    scale = 4 ** -0.5  # the layer hashes the scaled query, as attention uses it
    mean_query = reference.project(query, weights["query_kernel"], weights["query_bias"]).mean(2) * scale
    mean_key = reference.project(value, weights["key_kernel"], weights["key_bias"]).mean(2)
    expected, _ = lsh_reference(layer.selector, mean_query, mean_key, 5)
    assert index_sets(indices.numpy()[:, 0]) == expected


def test_lsh_is_seeded():
    rng = np.random.default_rng(28)
    query, value = random_case(rng, 1, 16, 30, 6, 6)
    sparse_query = tf.sparse.from_dense(query)

    def selected(config):
        layer = SparseDenseMultiHeadAttention(1, 4, 4, selector=config)
        return layer(sparse_query, value, return_attention_scores=True)[2].numpy(), layer

    first, _ = selected({"name": "lsh", "seed": 3})
    again, _ = selected({"name": "lsh", "seed": 3})
    other, _ = selected({"name": "lsh", "seed": 4})
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    _, unseeded = selected("lsh")
    assert isinstance(unseeded.selector.get_config()["seed"], int)  # drawn once, kept in the config


# ---- hybrid ------------------------------------------------------------------------------------

@pytest.mark.parametrize("window_fraction,top_k", [(0.5, 5), (0.3, 10), (0.25, 4)])
def test_hybrid_is_a_window_part_plus_the_best_remaining_keys_by_dot(window_fraction, top_k):
    rng = np.random.default_rng(29)
    batch, queries, keys, heads = 2, 5, 20, 2
    query, value = random_case(rng, batch, queries, keys, 6, 6)
    value_mask = rng.random((batch, keys)) < 0.8
    layer, mha = paired_layers(heads, 4, top_k, {"name": "hybrid", "window_fraction": window_fraction},
                               query, value)
    _, _, indices = layer(tf.sparse.from_dense(query), value, value_mask=value_mask,
                          return_attention_scores=True)
    _, _, logits = reference.dense_attention(query, value, mha.get_weights())
    window_slots = math.ceil(round(window_fraction * top_k, 9))
    for b in range(batch):
        allowed = np.flatnonzero(value_mask[b])
        for m in range(queries):
            centre = round(m * (keys - 1) / (queries - 1))
            window = sorted(allowed, key=lambda n: (abs(n - centre), n))[:window_slots]
            for h in range(heads):
                rest = [n for n in allowed if n not in window]
                best = sorted(rest, key=lambda n: -logits[b, h, m, n])[: top_k - window_slots]
                row = indices.numpy()[b, h, m]
                assert set(row[:window_slots]) == set(window)
                assert set(row[window_slots:]) == set(best)


@pytest.mark.parametrize("window_fraction,equivalent", [(0.0, "dot"), (1.0, "window")])
def test_hybrid_extremes_are_dot_and_window(window_fraction, equivalent):
    rng = np.random.default_rng(30)
    query, value = random_case(rng, 2, 6, 16, 5, 5)
    hybrid_layer, mha = paired_layers(2, 4, 5, {"name": "hybrid", "window_fraction": window_fraction},
                                      query, value)
    other_layer, _ = paired_layers(2, 4, 5, equivalent, query, value)
    other_layer.set_weights(mha.get_weights())
    sparse_query = tf.sparse.from_dense(query)
    _, _, hybrid_indices = hybrid_layer(sparse_query, value, return_attention_scores=True)
    _, _, other_indices = other_layer(sparse_query, value, return_attention_scores=True)
    assert index_sets(hybrid_indices.numpy()) == index_sets(other_indices.numpy())


def test_hybrid_fetch_then_drop_equals_ranking_taken_keys_last():
    """Streamed over blocks, hybrid fetches w extra keys and drops the window's afterwards; in
    one block it ranks them last while scoring. Both must pick the same keys in the same order."""
    rng = np.random.default_rng(11)
    query, value = random_case(rng, 2, 6, 40, 5, 5)
    value_mask = rng.random((2, 40)) > 0.3
    chosen = {"name": "hybrid", "window_fraction": 0.5, "block_size": 7}  # 6 blocks
    layer = SparseDenseMultiHeadAttention(2, 4, 8, selector=chosen)
    baseline = SparseDenseMultiHeadAttention(2, 4, 8, selector={"name": "hybrid", "window_fraction": 0.5})
    sparse = tf.sparse.from_dense(query)
    baseline(sparse, value)
    layer(sparse, value)
    layer.set_weights(baseline.get_weights())
    _, _, indices = layer(sparse, value, value_mask=value_mask, return_attention_scores=True)
    _, _, expected = baseline(sparse, value, value_mask=value_mask, return_attention_scores=True)
    np.testing.assert_array_equal(indices.numpy(), expected.numpy())
    valid = indices.numpy()[indices.numpy() >= 0]
    assert value_mask[np.nonzero(indices.numpy() >= 0)[0], valid].all()
    for row in indices.numpy().reshape(-1, 8):  # no key twice in a row
        kept = row[row >= 0]
        assert len(set(kept)) == len(kept)
