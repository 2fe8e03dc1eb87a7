"""Core layer tests: oracle against keras.layers.MultiHeadAttention, top-k against the NumPy
reference, masks, NaN-freedom, Keras parity, save/load, training and argument errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdattn
from cases import (SELECTORS, SHARED_SELECTORS, XLA_SELECTORS, check_oracle, check_save_load_round_trip,
                   check_unknown_lengths_match_eager, paired_layers, random_case, selector_config)
from sdattn import plan as plan_lib
from sdattn import reference
from sdattn.layer import SparseDenseMultiHeadAttention


ORACLE_SHAPES = [
    # (B, M, N, Dq, Dv, H, key_dim, extra MHA kwargs)
    (2, 5, 7, 6, 4, 3, 8, {}),
    (1, 9, 4, 3, 5, 2, 4, {"value_dim": 6}),
    (3, 4, 11, 8, 8, 1, 5, {"output_shape": 7}),
    (2, 6, 6, 5, 9, 4, 3, {"value_dim": 2, "output_shape": (3, 2)}),
]


@pytest.mark.parametrize("selector", SELECTORS)
@pytest.mark.parametrize("shape", ORACLE_SHAPES, ids=lambda s: "x".join(map(str, s[:7])))
@pytest.mark.parametrize("sparse_query", [True, False], ids=["sparse", "dense"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "valuemask"])
def test_oracle_matches_keras_mha_when_every_key_is_selected(selector, shape, sparse_query, masked):
    check_oracle(selector, shape, sparse_query, masked, extra_keys=3)


def test_dot_with_top_k_below_n_matches_reference_over_exact_top_k():
    rng = np.random.default_rng(1)
    query, value = random_case(rng, 2, 6, 20, 7, 5)
    layer, mha = paired_layers(3, 4, 5, "dot", query, value)
    out, scores, indices = layer(tf.sparse.from_dense(query), value, return_attention_scores=True)
    weights = mha.get_weights()
    _, _, logits = reference.dense_attention(query, value, weights)
    exact = reference.exact_top_k(logits, 5)
    # The true top-k as a set (ties aside: random normals have none).
    np.testing.assert_array_equal(np.sort(indices.numpy(), -1), np.sort(exact, -1))
    ref_out, ref_scores = reference.selected_attention(query, value, weights, exact)
    np.testing.assert_allclose(out.numpy(), ref_out, atol=1e-5)
    np.testing.assert_allclose(np.sort(scores.numpy(), -1), np.sort(ref_scores, -1), atol=1e-5)
    np.testing.assert_allclose(scores.numpy().sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("selector", SELECTORS)
def test_top_k_below_n_matches_reference_over_the_selectors_own_indices(selector):
    rng = np.random.default_rng(2)
    query, value = random_case(rng, 2, 5, 16, 16, 16)
    layer, mha = paired_layers(2, 4, 4, selector, query, value)
    value_mask = rng.random((2, 16)) < 0.7
    out, scores, indices = layer(tf.sparse.from_dense(query), value, value_mask=value_mask,
                                 return_attention_scores=True)
    mask = reference.combined_mask(2, 5, 16, key_mask=value_mask)
    ref_out, ref_scores = reference.selected_attention(query, value, mha.get_weights(), indices.numpy(),
                                                       attention_mask=mask)
    np.testing.assert_allclose(out.numpy(), ref_out, atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), ref_scores, atol=1e-5)
    valid = indices.numpy() >= 0
    np.testing.assert_allclose(np.where(valid, scores.numpy(), 0).sum(-1), 1.0, atol=1e-5)


def test_window_picks_keys_nearest_the_proportional_position():
    rng = np.random.default_rng(3)
    query, value = random_case(rng, 1, 3, 9, 4, 4)
    layer = SparseDenseMultiHeadAttention(1, 4, 3, selector="window")
    _, _, indices = layer(tf.sparse.from_dense(query), value, return_attention_scores=True)
    # Centres round(i·8/2) = 0, 4, 8 → nearest three keys each (lower index first on ties).
    expected = [{0, 1, 2}, {3, 4, 5}, {6, 7, 8}]
    assert [set(row) for row in indices.numpy()[0, 0]] == expected


@pytest.mark.parametrize("sparse_density", [0.0, 1.0], ids=["sparse-matmul", "dense-matmul"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_cosine_ranks_by_raw_cosine_similarity(sparse_density, graph):
    rng = np.random.default_rng(4)
    query, value = random_case(rng, 2, 4, 12, 6, 6)
    selector = {"name": "cosine", "sparse_density": sparse_density}
    layer = SparseDenseMultiHeadAttention(2, 3, 3, selector=selector)
    run = lambda q, v: layer(q, v, return_attention_scores=True)  # noqa: E731
    _, _, indices = (tf.function(run) if graph else run)(tf.sparse.from_dense(query), tf.constant(value))
    cos = np.einsum("bmd,bnd->bmn", query, value) / (
        np.linalg.norm(query, axis=-1)[..., None] * np.linalg.norm(value, axis=-1)[:, None, :])
    expected = np.argsort(-cos, axis=-1)[..., :3]
    for head in range(2):
        np.testing.assert_array_equal(np.sort(indices.numpy()[:, head], -1), np.sort(expected, -1))


def test_random_selector_is_reproducible_with_a_seed_and_uniform():
    rng = np.random.default_rng(5)
    query, value = random_case(rng, 1, 40, 10, 4, 4)
    layer = SparseDenseMultiHeadAttention(1, 4, 3, selector={"name": "random", "seed": 7})
    _, _, first = layer(tf.sparse.from_dense(query), value, return_attention_scores=True)
    _, _, second = layer(tf.sparse.from_dense(query), value, return_attention_scores=True)
    np.testing.assert_array_equal(first.numpy(), second.numpy())
    counts = np.bincount(first.numpy().ravel(), minlength=10)
    assert counts.min() > 0 and len(set(map(tuple, np.sort(first.numpy()[0, 0], -1)))) > 10


# ---- property test: masks, empty rows, k beyond the valid count ---------------------------

@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_masked_selection_is_nan_free_and_never_picks_a_forbidden_key(data):
    batch = data.draw(st.integers(1, 2))
    queries = data.draw(st.integers(1, 5))
    keys = data.draw(st.integers(1, 7))
    top_k = data.draw(st.integers(1, 9))
    selector = selector_config(data.draw(st.sampled_from(SELECTORS)))
    if selector == "hybrid":
        selector = {"name": "hybrid", "window_fraction": data.draw(st.sampled_from([0.0, 0.3, 0.5, 1.0]))}
    elif isinstance(selector, dict) and selector["name"] == "lsh":
        selector.update(num_bits=data.draw(st.integers(1, 4)), num_tables=data.draw(st.integers(1, 2)))
    causal = data.draw(st.booleans())
    feature_dim = data.draw(st.sampled_from([3, 4]))  # 3 == value size: raw space; 4: projected
    seed = data.draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    query, value = random_case(rng, batch, queries, keys, feature_dim, 3, density=0.5)
    value_mask = rng.random((batch, keys)) < data.draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    query_mask = rng.random((batch, queries)) < 0.8
    attention_mask = rng.random((batch, queries, keys)) < 0.8
    layer = SparseDenseMultiHeadAttention(2, 3, top_k, selector=selector)
    sparse_query = tf.sparse.from_dense(query)
    value_tensor = tf.constant(value)
    with tf.GradientTape() as tape:
        tape.watch(value_tensor)
        out, scores, indices = layer(sparse_query, value_tensor, query_mask=query_mask, value_mask=value_mask,
                                     attention_mask=attention_mask, use_causal_mask=causal,
                                     return_attention_scores=True)
        loss = tf.reduce_sum(out ** 2)
    gradients = tape.gradient(loss, layer.trainable_weights + [value_tensor])
    assert np.isfinite(out.numpy()).all()
    for gradient in gradients:
        assert gradient is None or np.isfinite(tf.convert_to_tensor(gradient).numpy()).all()
    allowed = reference.combined_mask(batch, queries, keys, query_mask=query_mask, key_mask=value_mask,
                                      attention_mask=attention_mask, use_causal_mask=causal)
    allowed = np.broadcast_to(allowed, (batch, 2, queries, keys))
    indices, scores = indices.numpy(), scores.numpy()
    slots = min(top_k, keys)
    assert indices.shape == scores.shape == (batch, 2, queries, slots)
    picked = indices >= 0
    assert np.take_along_axis(allowed, np.where(picked, indices, 0), -1)[picked].all()
    assert (scores[~picked] == 0).all()
    # Slots fill up to the number of allowed keys, and no key is picked twice.
    np.testing.assert_array_equal(picked.sum(-1), np.minimum(allowed.sum(-1), slots))
    for row in indices.reshape(-1, slots):
        chosen = row[row >= 0]
        assert len(set(chosen)) == len(chosen)
    empty_rows = ~allowed.any(-1)
    assert (indices[empty_rows] == -1).all()
    np.testing.assert_allclose(scores.sum(-1), np.where(empty_rows, 0.0, 1.0), atol=1e-5)


def test_fully_masked_rows_give_zero_context():
    rng = np.random.default_rng(6)
    query, value = random_case(rng, 2, 3, 5, 4, 4)
    layer, mha = paired_layers(2, 4, 8, "dot", query, value)
    value_mask = np.array([[False] * 5, [True, False, True, False, True]])
    out = layer(tf.sparse.from_dense(query), value, value_mask=value_mask)
    np.testing.assert_allclose(out.numpy()[1], mha(query, value, value_mask=value_mask).numpy()[1], atol=1e-5)
    # Keras's fused inference path averages all values uniformly for a row with no valid key;
    # the contract is a zero context, which leaves just the output bias (zero at init).
    np.testing.assert_allclose(out.numpy()[0], 0.0, atol=1e-7)


# ---- Keras parity ---------------------------------------------------------------------------

def test_implicit_embedding_masks_equal_the_explicit_attention_mask():
    rng = np.random.default_rng(7)
    query_tokens = np.array([[3, 5, 2, 0, 0], [1, 4, 4, 6, 0]])
    value_tokens = np.array([[2, 2, 7, 1, 0, 0], [5, 3, 0, 0, 0, 0]])
    embed = keras.layers.Embedding(10, 6, mask_zero=True)
    query, value = embed(query_tokens), embed(value_tokens)
    assert query._keras_mask is not None
    layer, mha = paired_layers(2, 3, 6, "dot", query.numpy(), value.numpy())
    implicit = layer(query, value)
    explicit_mask = (query_tokens != 0)[:, :, None] & (value_tokens != 0)[:, None, :]
    explicit = layer(query.numpy(), value.numpy(), attention_mask=explicit_mask)
    keras_out = mha(embed(query_tokens), embed(value_tokens))
    np.testing.assert_allclose(implicit.numpy(), explicit.numpy(), atol=1e-6)
    valid_rows = query_tokens != 0  # Keras's fused path is uniform, not zero, on masked query rows
    np.testing.assert_allclose(implicit.numpy()[valid_rows], keras_out.numpy()[valid_rows], atol=1e-5)
    np.testing.assert_allclose(implicit.numpy()[~valid_rows], 0.0, atol=1e-7)
    np.testing.assert_array_equal(implicit._keras_mask.numpy(), query_tokens != 0)


def test_attention_mask_ranks_agree():
    rng = np.random.default_rng(8)
    query, value = random_case(rng, 2, 4, 6, 5, 5)
    layer, mha = paired_layers(3, 4, 6, "dot", query, value)
    mask_2d = rng.random((4, 6)) < 0.7
    mask_2d[:, 0] = True
    sparse_query = tf.sparse.from_dense(query)
    outputs = [layer(sparse_query, value, attention_mask=m).numpy() for m in (
        mask_2d, np.broadcast_to(mask_2d, (2, 4, 6)), np.broadcast_to(mask_2d, (2, 3, 4, 6)))]
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-6)
    np.testing.assert_allclose(outputs[0], outputs[2], atol=1e-6)
    np.testing.assert_allclose(outputs[0], mha(query, value, attention_mask=mask_2d).numpy(), atol=1e-5)
    per_head = rng.random((2, 3, 4, 6)) < 0.6
    per_head[..., 0] = True
    np.testing.assert_allclose(layer(sparse_query, value, attention_mask=per_head).numpy(),
                               mha(query, value, attention_mask=per_head).numpy(), atol=1e-5)


@pytest.mark.parametrize("selector", SELECTORS)
def test_causal_and_per_head_attention_masks_match_keras(selector):
    rng = np.random.default_rng(9)
    query, value = random_case(rng, 2, 6, 6, 5, 5)
    layer, mha = paired_layers(2, 4, 6, selector_config(selector), query, value)
    per_head = rng.random((2, 2, 6, 6)) < 0.7
    per_head[..., 0] = True
    sparse_query = tf.sparse.from_dense(query)
    np.testing.assert_allclose(layer(sparse_query, value, use_causal_mask=True).numpy(),
                               mha(query, value, use_causal_mask=True).numpy(), atol=1e-5)
    np.testing.assert_allclose(layer(sparse_query, value, attention_mask=per_head).numpy(),
                               mha(query, value, attention_mask=per_head).numpy(), atol=1e-5)


@pytest.mark.parametrize("selector", SELECTORS)
def test_static_shapes_inside_tf_function_match_eager(selector):
    rng = np.random.default_rng(27)
    query, value = random_case(rng, 2, 4, 10, 6, 6)
    layer = SparseDenseMultiHeadAttention(2, 4, 3, selector=selector_config(selector))
    sparse_query = tf.sparse.from_dense(query)
    eager = layer(sparse_query, value, return_attention_scores=True)
    compiled = tf.function(lambda q, v: layer(q, v, return_attention_scores=True))(sparse_query, value)
    np.testing.assert_allclose(compiled[0].numpy(), eager[0].numpy(), atol=1e-6)
    np.testing.assert_array_equal(compiled[2].numpy(), eager[2].numpy())


def test_query_mask_propagates_to_the_output():
    rng = np.random.default_rng(10)
    query, value = random_case(rng, 2, 4, 5, 3, 3)
    layer = SparseDenseMultiHeadAttention(2, 3, 2)
    query_mask = np.array([[True, True, False, False], [True, True, True, False]])
    out = layer(tf.sparse.from_dense(query), value, query_mask=query_mask)
    np.testing.assert_array_equal(out._keras_mask.numpy(), query_mask)


@pytest.mark.parametrize("output_shape,expected_tail", [(7, (7,)), ((7,), (7,)), ((2, 3), (2, 3))])
def test_output_shape_int_and_tuple(output_shape, expected_tail):
    rng = np.random.default_rng(11)
    query, value = random_case(rng, 2, 3, 4, 5, 6)
    layer, mha = paired_layers(2, 3, 4, "dot", query, value, output_shape=output_shape)
    out = layer(tf.sparse.from_dense(query), value)
    assert out.shape == (2, 3) + expected_tail
    np.testing.assert_allclose(out.numpy(), mha(query, value).numpy(), atol=1e-5)
    assert layer.compute_output_shape((2, 3, 5), (2, 4, 6)) == (2, 3) + expected_tail


@pytest.mark.parametrize("sparse_query", [True, False])
def test_float16_with_identity_kernels_matches_keras(sparse_query):
    rng = np.random.default_rng(12)
    size, heads = 4, 2
    query, value = random_case(rng, 2, 3, 5, size, size)
    mha = keras.layers.MultiHeadAttention(heads, size, dtype="float16")
    mha(query, value)
    identity = np.stack([np.eye(size)] * heads, axis=1)  # [D, H, D]
    weights = [identity, np.zeros((heads, size)), identity, np.zeros((heads, size)),
               identity, np.zeros((heads, size)), np.transpose(identity, (1, 0, 2)) / heads, np.zeros(size)]
    mha.set_weights(weights)
    layer = SparseDenseMultiHeadAttention(heads, size, 5, dtype="float16")
    layer_query = tf.sparse.from_dense(query) if sparse_query else query
    layer(layer_query, value)
    layer.set_weights(weights)
    out = layer(layer_query, value)
    assert out.dtype == tf.float16
    expected = mha(query, value)
    np.testing.assert_allclose(out.numpy().astype("float32"), expected.numpy().astype("float32"), atol=2e-3)
    ref, _, _ = reference.dense_attention(query, value, weights)
    np.testing.assert_allclose(out.numpy().astype("float32"), ref, atol=1e-2)


@pytest.mark.parametrize("policy", ["bfloat16", "mixed_float16", "mixed_bfloat16"])
def test_runs_under_low_precision_policies(policy):
    rng = np.random.default_rng(13)
    query, value = random_case(rng, 2, 3, 6, 4, 4)
    layer = SparseDenseMultiHeadAttention(2, 4, 3, dtype=policy)
    out, scores, indices = layer(tf.sparse.from_dense(query), value, value_mask=[[True] * 6, [False] * 6],
                                 return_attention_scores=True)
    assert out.dtype == tf.as_dtype(layer.compute_dtype)
    assert layer.weights[0].dtype == tf.as_dtype(layer.variable_dtype)
    assert np.isfinite(out.numpy().astype("float32")).all()
    assert (indices.numpy()[1] == -1).all()


# ---- Keras integration ------------------------------------------------------------------------

def test_weights_have_mha_order_and_shapes():
    layer = SparseDenseMultiHeadAttention(3, 4, 2, value_dim=5, output_shape=(2, 3))
    layer(tf.sparse.from_dense(np.ones((1, 2, 6), "float32")), np.ones((1, 3, 7), "float32"))
    mha = keras.layers.MultiHeadAttention(3, 4, value_dim=5, output_shape=(2, 3))
    mha(np.ones((1, 2, 6), "float32"), np.ones((1, 3, 7), "float32"))
    assert [w.shape for w in layer.get_weights()] == [w.shape for w in mha.get_weights()]
    assert [w.name for w in layer.weights] == [w.name for w in mha.weights]


def test_runs_inside_tf_function_and_a_sparse_functional_model():
    rng = np.random.default_rng(14)
    query, value = random_case(rng, 2, 4, 6, 5, 3)
    layer = SparseDenseMultiHeadAttention(2, 4, 3, selector="cosine", output_shape=2)
    eager = layer(tf.sparse.from_dense(query), value)
    compiled = tf.function(lambda q, v: layer(q, v))
    np.testing.assert_allclose(compiled(tf.sparse.from_dense(query), value).numpy(), eager.numpy(), atol=1e-6)

    query_input = keras.Input(shape=(4, 5), sparse=True)
    value_input = keras.Input(shape=(6, 3))
    output, scores, indices = layer(query_input, value_input, return_attention_scores=True)
    assert tuple(scores.shape) == (None, 2, 4, 3) and tuple(indices.shape) == (None, 2, 4, 3)
    model = keras.Model([query_input, value_input], output)
    np.testing.assert_allclose(model([tf.sparse.from_dense(query), tf.constant(value)]).numpy(), eager.numpy(), atol=1e-6)


@keras.saving.register_keras_serializable(package="sdattn_tests")
class FirstKeysSelector(sdattn.Selector):
    """A user's selector: always the first keys, in reverse order (shared by all heads)."""

    def __init__(self, reverse=True, **kwargs):
        super().__init__(**kwargs)
        self.reverse = reverse

    def scores(self, context, start, stop):
        positions = tf.cast(tf.range(start, stop), tf.float32)
        ranked = -positions if self.reverse else positions
        shape = tf.stack([tf.shape(context.key)[0], 1, context.num_queries, stop - start])
        return tf.broadcast_to(ranked, shape)

    def get_config(self):
        return {**super().get_config(), "reverse": self.reverse}


@pytest.mark.parametrize("selector", SELECTORS + ["custom"])
def test_keras_save_and_load_round_trip(selector, tmp_path):
    rng = np.random.default_rng(15)
    query, value = random_case(rng, 2, 4, 6, 5, 3)
    chosen = FirstKeysSelector() if selector == "custom" else (
        selector_config(selector, seed=3))
    layer, restored_layer, inputs = check_save_load_round_trip(chosen, query, value, tmp_path / "model.keras")
    assert type(restored_layer.selector) is type(layer.selector)
    if selector == "custom":
        _, _, indices = restored_layer(*inputs, return_attention_scores=True)
        np.testing.assert_array_equal(indices.numpy()[0, 0, 0], [0, 1, 2])


def test_get_config_keys_are_the_constructor_arguments():
    import inspect
    layer = SparseDenseMultiHeadAttention(2, 4, 3)
    own_keys = set(layer.get_config()) - set(keras.layers.Layer().get_config())
    parameters = set(inspect.signature(SparseDenseMultiHeadAttention.__init__).parameters) - {"self", "kwargs"}
    assert own_keys | {"activity_regularizer"} == parameters | {"activity_regularizer"}
    clone = SparseDenseMultiHeadAttention.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_model_fit_lowers_the_loss_and_reaches_every_kernel():
    rng = np.random.default_rng(16)
    query, value = random_case(rng, 32, 4, 8, 6, 5)
    teacher = keras.layers.MultiHeadAttention(2, 4, output_shape=3, kernel_initializer=keras.initializers.GlorotUniform(seed=1))
    target = teacher(query, value).numpy()
    query_input = keras.Input(shape=(4, 6), sparse=True)
    value_input = keras.Input(shape=(8, 5))
    layer = SparseDenseMultiHeadAttention(2, 4, 4, output_shape=3, seed=2)
    model = keras.Model([query_input, value_input], layer(query_input, value_input))
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    inputs = [tf.sparse.from_dense(query), tf.constant(value)]
    before = [w.numpy().copy() for w in layer.trainable_weights]
    history = model.fit(inputs, target, epochs=15, batch_size=32, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0]
    after = layer.trainable_weights
    assert len(after) == 8
    for old, new in zip(before, after):
        assert not np.allclose(old, new.numpy()), new.name


# ---- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,pattern", [
    ({"top_k": 0}, r"`top_k`.*top_k=0"),
    ({"top_k": 2.5}, r"`top_k`.*top_k=2.5"),
    ({"top_k": "3"}, r"`top_k`.*top_k='3'"),
    ({"num_heads": 0}, r"Received an invalid value for argument `num_heads`.*Received: num_heads=0"),
    ({"num_heads": -2}, r"`num_heads`.*num_heads=-2"),
    ({"num_heads": 1.5}, r"`num_heads`.*num_heads=1.5"),
    ({"key_dim": 0}, r"`key_dim`.*key_dim=0"),
    ({"key_dim": -2}, r"`key_dim`.*key_dim=-2"),
    ({"key_dim": 1.5}, r"`key_dim`.*key_dim=1.5"),
    ({"value_dim": 0}, r"`value_dim`.*value_dim=0"),
    ({"value_dim": 1.5}, r"`value_dim`.*value_dim=1.5"),
    ({"output_shape": "wide"}, r"`output_shape`.*output_shape='wide'"),
    ({"output_shape": (2, 0.5)}, r"`output_shape`.*output_shape=\(2, 0.5\)"),
    ({"output_shape": 8.0}, r"^Invalid `output_shape`.*Received: output_shape=8.0"),  # Keras MHA's test
    ({"selector": "nearest"}, r"`selector`.*\['ann', 'cosine', 'dot', .*'window'\].*selector='nearest'"),
    ({"selector": 3}, r"`selector`.*selector=3"),
    ({"dropout": 1.5}, r"`dropout`.*dropout=1.5"),
])
def test_constructor_errors_name_the_argument_and_value(kwargs, pattern):
    arguments = {"num_heads": 2, "key_dim": 4, "top_k": 3, **kwargs}
    with pytest.raises((ValueError, TypeError), match=pattern):
        SparseDenseMultiHeadAttention(**arguments)


def _call_error_cases():
    ones = lambda *shape: np.ones(shape, "float32")  # noqa: E731
    return [
        ({"query": ones(2, 5), "value": ones(2, 4, 3)}, r"`query`.*rank 3.*query.shape=\(2, 5\)"),
        ({"query": ones(2, 3, 5), "value": ones(3, 4, 3)}, r"same batch size.*query.shape=\(2, 3, 5\)"),
        ({"query": ones(2, 3, 5), "value": ones(2, 4, 3), "key": ones(2, 6, 3)}, r"`key` and `value`.*key.shape=\(2, 6, 3\)"),
        ({"query": ones(2, 3, 5), "value": ones(2, 4, 3), "value_mask": np.ones((2, 5), bool)}, r"`value_mask`.*value_mask.shape=\(2, 5\)"),
        ({"query": ones(2, 3, 5), "value": ones(2, 4, 3), "query_mask": np.ones((2, 4), bool)}, r"`query_mask`.*query_mask.shape=\(2, 4\)"),
        ({"query": ones(2, 3, 5), "value": ones(2, 4, 3), "attention_mask": np.ones((3, 5), bool)}, r"`attention_mask`.*attention_mask.shape=\(3, 5\)"),
        ({"query": ones(2, 3, 5), "value": ones(2, 4, 3), "attention_mask": np.ones((4,), bool)}, r"`attention_mask`.*attention_mask.shape=\(4,\)"),
        ({"query": ones(2, 3, 5), "value": np.ones((2, 4, 3), "int32")}, r"`value`.*float.*value.dtype=int32"),
    ]


@pytest.mark.parametrize("call_kwargs,pattern", _call_error_cases())
def test_call_errors_name_the_argument_and_value(call_kwargs, pattern):
    layer = SparseDenseMultiHeadAttention(2, 4, 3)
    with pytest.raises((ValueError, TypeError), match=pattern):
        layer(**call_kwargs)


# ---- the original write-up's example ------------------------------------------------------------

def test_original_write_up_example_runs_and_is_finite():
    query = tf.sparse.SparseTensor(indices=[[0, 0, 0], [0, 1, 2], [0, 2, 1]], values=[1.0, 2.0, 3.0],
                                   dense_shape=[1, 3, 3])
    value = tf.constant([[[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]], tf.float32)
    layer = SparseDenseMultiHeadAttention(num_heads=2, key_dim=3, top_k=10)
    out, scores, indices = layer(query, value, return_attention_scores=True)
    assert out.shape == (1, 3, 3) and indices.shape == (1, 2, 3, 4)
    assert np.isfinite(out.numpy()).all()
    assert sorted(indices.numpy()[0, 0, 0]) == [0, 1, 2, 3]


@pytest.mark.parametrize("selector", SELECTORS)
def test_unknown_lengths_inside_tf_function_match_eager(selector):
    check_unknown_lengths_match_eager(selector_config(selector), seed=17)


@pytest.mark.parametrize("selector", SELECTORS)
def test_projecting_only_selected_tokens_matches_reference(selector):
    # M·k (·H for per-head selectors) < N: the layer projects only the selected tokens.
    rng = np.random.default_rng(18)
    query, value = random_case(rng, 2, 3, 40, 6, 6)
    key = rng.normal(size=(2, 40, 5)).astype("float32")
    mha = keras.layers.MultiHeadAttention(2, 4, value_dim=3)
    mha(query, value, key=key)
    layer = SparseDenseMultiHeadAttention(2, 4, 2, selector=selector, value_dim=3)
    layer(tf.sparse.from_dense(query), value, key=key)
    layer.set_weights(mha.get_weights() + layer.get_weights()[8:])  # selector weights stay
    value_mask = rng.random((2, 40)) < 0.5
    out, scores, indices = layer(tf.sparse.from_dense(query), value, key=key, value_mask=value_mask,
                                 return_attention_scores=True)
    mask = reference.combined_mask(2, 3, 40, key_mask=value_mask)
    ref_out, ref_scores = reference.selected_attention(query, value, mha.get_weights(), indices.numpy(),
                                                       key=key, attention_mask=mask)
    np.testing.assert_allclose(out.numpy(), ref_out, atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), ref_scores, atol=1e-5)
    assert (indices.numpy() >= 0).all()


@pytest.mark.parametrize("selector", SHARED_SELECTORS)
@pytest.mark.parametrize("fast_paths", [True, False], ids=["fast-paths", "standard-path"])
@pytest.mark.parametrize("keys", [40, 6], ids=["k<N", "k>=N"])
def test_shared_selection_paths_match_reference(selector, fast_paths, keys):
    # A shared selection is attended with the key/value kernels folded into the query side
    # when that is cheaper (3 of 40 keys), else by projecting the selected tokens; with
    # fast_paths=False always the latter. Every path must give the reference's numbers.
    rng = np.random.default_rng(19)
    query, value = random_case(rng, 2, 3, keys, 6, 6)
    key = rng.normal(size=(2, keys, 6)).astype("float32")
    mha = keras.layers.MultiHeadAttention(2, 4, value_dim=3, output_shape=5,
                                          bias_initializer=keras.initializers.RandomNormal(seed=3))
    mha(query, value, key=key)
    chosen = selector_config(selector, seed=2)
    layer = SparseDenseMultiHeadAttention(2, 4, 3 if keys > 6 else 8, selector=chosen, value_dim=3,
                                          output_shape=5, fast_paths=fast_paths)
    sparse_query = tf.sparse.from_dense(query)
    layer(sparse_query, value, key=key)
    layer.set_weights(mha.get_weights() + layer.get_weights()[8:])  # selector weights stay
    expected_path = plan_lib.FOLDED if fast_paths and keys > 6 else plan_lib.STANDARD
    assert layer.attention_plan(sparse_query, value, key).path == expected_path
    value_mask = rng.random((2, keys)) < 0.7
    value_mask[:, 0] = True
    out, scores, indices = layer(sparse_query, value, key=key, value_mask=value_mask,
                                 use_causal_mask=keys == 6, return_attention_scores=True)
    mask = reference.combined_mask(2, 3, keys, key_mask=value_mask, use_causal_mask=keys == 6)
    ref_out, ref_scores = reference.selected_attention(query, value, mha.get_weights(), indices.numpy(),
                                                       key=key, attention_mask=mask)
    np.testing.assert_allclose(out.numpy(), ref_out, atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), ref_scores, atol=1e-5)
    if keys == 6:
        np.testing.assert_allclose(out.numpy(), mha(query, value, key=key, value_mask=value_mask,
                                                    use_causal_mask=True).numpy(), atol=1e-5)


def test_folded_path_is_chosen_for_sparse_selections_and_trains_like_the_standard_path():
    rng = np.random.default_rng(20)
    query, value = random_case(rng, 2, 4, 64, 8, 8)
    sparse_query = tf.sparse.from_dense(query)
    gradients = {}
    for fast_paths in (True, False):
        layer = SparseDenseMultiHeadAttention(2, 4, 3, selector="cosine", fast_paths=fast_paths,
                                              bias_initializer="random_normal")
        layer(sparse_query, value)
        weight_rng = np.random.default_rng(0)  # the same weights for both layers
        layer.set_weights([weight_rng.normal(size=w.shape).astype(w.dtype) * 0.3 for w in layer.get_weights()])
        plan = layer.attention_plan(sparse_query, value, training=True)
        assert plan.path == (plan_lib.FOLDED if fast_paths else plan_lib.STANDARD)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(sparse_query, value, training=True) ** 2)
        gradients[fast_paths] = tape.gradient(loss, layer.trainable_weights)
    for folded, standard in zip(gradients[True], gradients[False]):
        assert folded is not None and np.isfinite(folded.numpy()).all()
        np.testing.assert_allclose(folded.numpy(), standard.numpy(), rtol=1e-4, atol=1e-5)
    assert all(np.abs(g.numpy()).sum() > 0 for g in gradients[True])


def test_folded_path_keeps_dropout_working():
    rng = np.random.default_rng(24)
    query, value = random_case(rng, 2, 4, 64, 8, 8)
    layer = SparseDenseMultiHeadAttention(2, 4, 3, selector="cosine", dropout=0.3, seed=1)
    sparse_query = tf.sparse.from_dense(query)
    assert layer.attention_plan(sparse_query, value, training=True).path == plan_lib.FOLDED
    with tf.GradientTape() as tape:
        out = layer(sparse_query, value, training=True)
        loss = tf.reduce_sum(out ** 2)
    gradients = tape.gradient(loss, layer.trainable_weights)
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in gradients)
    assert not np.allclose(out.numpy(), layer(sparse_query, value).numpy())  # dropout did act


def test_dot_logits_from_selection_equal_recomputed_logits_and_the_reference():
    """Inference reuses `dot`'s top-k scores as logits; training recomputes q·k. Both must give
    the reference's attention over the same indices."""
    rng = np.random.default_rng(21)
    query, value = random_case(rng, 2, 12, 30, 6, 6)
    value_mask = rng.random(value.shape[:2]) > 0.2
    layer, mha = paired_layers(2, 4, 6, "dot", query, value)
    sparse = tf.sparse.from_dense(query)
    mask = reference.combined_mask(2, 12, 30, key_mask=value_mask)
    for training in (None, True):
        out, scores, indices = layer(sparse, value, value_mask=value_mask, return_attention_scores=True,
                                     training=training)
        ref_out, ref_scores = reference.selected_attention(query, value, mha.get_weights(), indices.numpy(),
                                                           attention_mask=mask)
        np.testing.assert_allclose(out.numpy(), ref_out, atol=1e-5)
        np.testing.assert_allclose(scores.numpy(), ref_scores, atol=1e-5)


def test_dot_gradients_are_the_same_with_and_without_reused_logits():
    rng = np.random.default_rng(22)
    query, value = random_case(rng, 2, 12, 30, 6, 6)
    layer = SparseDenseMultiHeadAttention(2, 4, 6, selector="dot")
    sparse = tf.sparse.from_dense(query)
    layer(sparse, value)
    gradients = {}
    for training in (None, True):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(sparse, value, training=training) ** 2)
        gradients[training] = tape.gradient(loss, layer.trainable_weights)
    for reused, recomputed in zip(gradients[None], gradients[True]):
        assert reused is not None and recomputed is not None
        np.testing.assert_allclose(reused.numpy(), recomputed.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("selector", XLA_SELECTORS)
def test_xla_compiles_the_layer_and_matches_the_reference(selector):
    """Under jit_compile no Python kernel may run (cpu_top_k steps aside); hybrid streams several
    blocks (block_size=7) here."""
    rng = np.random.default_rng(23)
    query, value = random_case(rng, 2, 12, 40, 6, 6)
    config = selector_config(selector)
    config = {**config, "block_size": 7} if isinstance(config, dict) else {"name": config, "block_size": 7}
    layer, mha = paired_layers(2, 4, 6, config, query, value)
    compiled = tf.function(lambda q, v: layer(q, v, return_attention_scores=True), jit_compile=True)
    output, scores, indices = compiled(tf.constant(query), tf.constant(value))
    ref_out, ref_scores = reference.selected_attention(query, value, mha.get_weights(), indices.numpy())
    np.testing.assert_allclose(output.numpy(), ref_out, atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), ref_scores, atol=1e-5)
    if selector != "random":  # XLA may pick another stateless RNG algorithm: other keys, as valid
        _, _, eager_indices = layer(query, value, return_attention_scores=True)
        np.testing.assert_array_equal(indices.numpy(), eager_indices.numpy())


def _plan(**overrides):
    settings = dict(num_queries=512, num_keys=4096, key_features=256, value_features=256, num_heads=8,
                    key_dim=32, value_dim=32, top_k=32, per_head=False, scores_are_logits=False,
                    selects_outside_tf=False, cpu_top_k_available=True)
    return plan_lib.plan_attention(**{**settings, **overrides})


def test_attention_plan_choices():
    # Shared selection of 32 of 4,096 keys: folding (H·D per slot) beats projecting 32 tokens per query.
    assert _plan().path == plan_lib.FOLDED
    assert _plan().cpu_top_k and not _plan().waits_for_selection
    # Per-head dot at inference reuses its scores; training recomputes q·k (no gradient through top-k).
    dot = dict(per_head=True, scores_are_logits=True)
    assert _plan(**dot).path == plan_lib.REUSED_LOGITS and _plan(**dot).selection_heads == 8
    assert _plan(**dot, training=True).path == plan_lib.STANDARD
    # A per-head attention mask makes every selection per head: no folding.
    assert _plan(mask_heads=8).selection_heads == 8 and _plan(mask_heads=8).path == plan_lib.STANDARD
    # Unknown sizes: nothing to compare costs with.
    assert _plan(num_keys=None).path == plan_lib.STANDARD and _plan(num_keys=None).slots == 32
    # k >= N with few queries: projecting all N tokens once is cheaper than folding.
    small = dict(num_queries=3, num_keys=6, top_k=8, key_dim=4, value_dim=3)
    assert _plan(**small).path == plan_lib.STANDARD and _plan(**small).slots == 6
    # The switch, and an overridden `_compute_attention`, give the standard path in TF ops.
    assert _plan(fast_paths=False) == _plan(**dot, fast_paths=False).__class__(
        path=plan_lib.STANDARD, slots=32, selection_heads=1, project_selected=False, cpu_top_k=False,
        waits_for_selection=False)
    assert _plan(**dot, custom_attention=True).path == plan_lib.STANDARD
    assert _plan(selects_outside_tf=True).waits_for_selection
    assert not _plan(selects_outside_tf=True, eager=True).waits_for_selection
    assert _plan(num_queries=2, num_keys=4096).project_selected  # 2·32 slots < 4,096 tokens


def test_the_plan_mixes_raw_values_where_it_costs_less_and_the_kernel_can_run():
    """`dot` at inference on Config P at 4,096 keys: H·M·k·Dv + M·Dv·H·vd = 67 M multiply-adds
    to mix raw values (`sdattn.value_mixing`) against 268 M to project every value."""
    dot = dict(per_head=True, scores_are_logits=True)
    assert _plan(**dot).path == plan_lib.REUSED_LOGITS and _plan(**dot).mixes_raw_values
    assert not _plan(**dot, training=True).mixes_raw_values  # the standard path then
    assert not _plan(**dot, cpu_top_k_available=False).mixes_raw_values  # JAX, XLA, a GPU, switched off
    assert not _plan(**dot, fast_paths=False).mixes_raw_values
    assert not _plan(**dot, compute_dtype="float16").mixes_raw_values
    assert not _plan(**dot, num_queries=8).mixes_raw_values  # below the budget: TF's ops
    assert not _plan(**dot, num_keys=512).mixes_raw_values  # projecting 512 tokens costs less
    assert not _plan(**dot, num_keys=None).mixes_raw_values
    assert not _plan().mixes_raw_values  # a shared selection folds instead


def test_the_plan_runs_the_folded_kernel_where_it_can():
    """A shared selection on Config P at 4,096 keys folds; its attention runs in the compiled
    kernel (`sdattn.folded_attention`) at inference, in float32, above the budget."""
    assert _plan().path == plan_lib.FOLDED and _plan().compiled_folding
    assert not _plan(training=True).compiled_folding  # dropout and the gradient stay TF's
    assert not _plan(cpu_top_k_available=False).compiled_folding  # JAX, XLA, a GPU, switched off
    assert not _plan(fast_paths=False).compiled_folding
    assert not _plan(compute_dtype="float64").compiled_folding
    assert not _plan(num_queries=8).compiled_folding  # below the budget: TF's ops
    assert not _plan(per_head=True, scores_are_logits=True).compiled_folding  # not folded


def test_overridden_compute_attention_sees_every_call_and_still_matches_keras():
    calls = []

    class Custom(SparseDenseMultiHeadAttention):
        def _compute_attention(self, query, *args, **kwargs):
            calls.append(query.shape)
            return super()._compute_attention(query, *args, **kwargs)

    rng = np.random.default_rng(25)
    query, value = random_case(rng, 2, 4, 64, 8, 8)
    mha = keras.layers.MultiHeadAttention(2, 4)
    mha(query, value)
    for selector in ("cosine", "dot"):  # would fold / reuse logits without the override
        layer = Custom(2, 4, 64, selector=selector)
        layer(tf.sparse.from_dense(query), value)
        layer.set_weights(mha.get_weights() + layer.get_weights()[8:])  # selector weights stay
        calls.clear()
        np.testing.assert_allclose(layer(tf.sparse.from_dense(query), value).numpy(),
                                   mha(query, value).numpy(), atol=1e-5)
        assert calls, selector


def test_fast_paths_must_be_a_bool():
    with pytest.raises(ValueError, match=r"`fast_paths`.*Received: fast_paths='no'"):
        SparseDenseMultiHeadAttention(2, 4, 3, fast_paths="no")


def test_selector_returning_per_head_indices_without_per_head_is_an_error():
    class Wrong(sdattn.Selector):
        def select(self, context, k):
            return tf.zeros(tf.stack([tf.shape(context.key)[0], context.num_heads, context.num_queries, k]),
                            tf.int32)

    rng = np.random.default_rng(26)
    query, value = random_case(rng, 1, 3, 8, 4, 4)
    layer = SparseDenseMultiHeadAttention(2, 4, 3, selector=Wrong())
    with pytest.raises(ValueError, match=r"`per_head = False`.*Received: shape=\(1, 2, 3, 3\)"):
        layer(query, value)


# ---- top_k as a call argument ---------------------------------------------------------------------

@pytest.mark.parametrize("selector", SELECTORS)
def test_a_call_top_k_equals_a_layer_built_with_that_top_k(selector):
    rng = np.random.default_rng(40)
    query, value = random_case(rng, 2, 5, 30, 8, 8)
    sparse = tf.sparse.from_dense(query)
    config = selector_config(selector)
    wide = SparseDenseMultiHeadAttention(2, 4, 30, selector=config)
    narrow = SparseDenseMultiHeadAttention(2, 4, 6, selector=config)
    wide(sparse, value)
    narrow(sparse, value)
    narrow.set_weights(wide.get_weights())
    expected = narrow(sparse, value, return_attention_scores=True)
    for call in (wide, tf.function(wide)):
        got = call(sparse, value, return_attention_scores=True, top_k=6)
        assert got[2].shape == (2, 2, 5, 6)
        np.testing.assert_array_equal(got[2].numpy(), expected[2].numpy())
        np.testing.assert_allclose(got[0].numpy(), expected[0].numpy(), rtol=1e-5, atol=1e-6)
    assert wide(sparse, value, return_attention_scores=True)[2].shape[-1] == 30  # the layer's own


def test_a_call_top_k_is_checked_and_shapes_symbolic_outputs():
    layer = SparseDenseMultiHeadAttention(2, 4, 8)
    query = keras.Input((5, 6), sparse=True)
    value = keras.Input((12, 6))
    _, scores, indices = layer(query, value, return_attention_scores=True, top_k=3)
    assert tuple(scores.shape) == (None, 2, 5, 3) and tuple(indices.shape) == (None, 2, 5, 3)
    with pytest.raises(ValueError, match=r"`top_k`.*top_k=0"):
        layer(tf.sparse.from_dense(np.ones((1, 5, 6), "float32")), np.ones((1, 12, 6), "float32"), top_k=0)
