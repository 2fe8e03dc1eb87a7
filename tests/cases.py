"""Shared test inputs for the layer tests: random sparse-dense cases, and an sdattn layer paired
with a keras.layers.MultiHeadAttention that holds the same attention weights."""

import zlib

import keras
import numpy as np
import tensorflow as tf

import sdattn
from sdattn import selectors as selectors_lib
from sdattn.layer import SparseDenseMultiHeadAttention

#: Every registered selector: the generic suites run them all, so a new selector is tested by
#: registering it, with no list to edit.
SELECTORS = sdattn.available_selectors()
#: Those whose selection is shared by all heads, and those that XLA can compile (no Python).
SHARED_SELECTORS = [name for name in SELECTORS if not selectors_lib.get(name).per_head]
XLA_SELECTORS = [name for name in SELECTORS if not selectors_lib.get(name).selects_outside_tf]


def selector_config(name, seed=1):
    """`selector=` for a registered name, seeded where the selector draws randomness, so that a
    case repeats exactly (and a saved model reloads with the same hash planes)."""
    selector_class = type(selectors_lib.get(name))
    if "seed" in selector_class().get_config():
        return {"name": name, "seed": seed}
    return name


def stable_seed(*parts):
    """A seed from a test's parameters that is the same in every process (`hash()` of a string
    changes with PYTHONHASHSEED), so that a failing case can be rerun as it failed."""
    return zlib.crc32(repr(parts).encode())


def random_case(rng, batch, queries, keys, query_dim, value_dim, density=0.4):
    """A sparse-looking query `[B, M, Dq]` (dense array, mostly zeros) and Gaussian values `[B, N, Dv]`."""
    query = rng.normal(size=(batch, queries, query_dim)).astype("float32")
    query[rng.random(query.shape) > density] = 0.0
    query[:, :, 0] += 0.5  # no all-zero query row: cosine must still rank something
    value = rng.normal(size=(batch, keys, value_dim)).astype("float32")
    return query, value


def paired_layers(num_heads, key_dim, top_k, selector, query, value, **kwargs):
    """An sdattn layer and a Keras MHA sharing the attention weights; the selector keeps its own."""
    mha = keras.layers.MultiHeadAttention(num_heads, key_dim, **kwargs)
    mha(query, value)
    layer = SparseDenseMultiHeadAttention(num_heads, key_dim, top_k, selector=selector, **kwargs)
    layer(tf.sparse.from_dense(query), value)
    layer.set_weights(mha.get_weights() + layer.get_weights()[8:])
    return layer, mha


def check_oracle(selector, shape, sparse_query, masked, extra_keys):
    """With top_k = N + extra_keys every key is selected: the layer must equal Keras MHA.

    Args:
        selector: the layer's `selector=`.
        shape: `(B, M, N, Dq, Dv, H, key_dim, extra MHA kwargs)`.
        sparse_query: pass the query as a `tf.SparseTensor` (else dense).
        masked: add a random value mask (every row keeps a valid key).
        extra_keys: top_k above N.
    """
    batch, queries, keys, query_dim, value_dim, heads, key_dim, kwargs = shape
    rng = np.random.default_rng(stable_seed(str(selector), shape[:7], sparse_query, masked))
    query, value = random_case(rng, batch, queries, keys, query_dim, value_dim)
    layer, mha = paired_layers(heads, key_dim, keys + extra_keys, selector, query, value, **kwargs)
    value_mask = None
    if masked:
        value_mask = rng.random((batch, keys)) < 0.6
        value_mask[:, rng.integers(keys)] = True  # every row keeps at least one valid key
    out = layer(tf.sparse.from_dense(query) if sparse_query else query, value, value_mask=value_mask)
    expected = mha(query, value, value_mask=value_mask)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-5)
    assert out.shape == expected.shape


def check_unknown_lengths_match_eager(selector, seed, key_counts=(3, 9), top_k=5):
    """A `tf.function` with unknown B, M and N (fewer and more keys than top_k) gives the eager
    outputs and selections; graph slots past N are -1."""
    rng = np.random.default_rng(seed)
    layer = SparseDenseMultiHeadAttention(2, 4, top_k, selector=selector)
    signature = [tf.SparseTensorSpec([None, None, 6], tf.float32), tf.TensorSpec([None, None, 6]),
                 tf.TensorSpec([None, None], tf.bool)]
    compiled = tf.function(lambda q, v, m: layer(q, v, value_mask=m, return_attention_scores=True),
                           input_signature=signature)
    for keys in key_counts:
        query, value = random_case(rng, 2, 4, keys, 6, 6)
        value_mask = rng.random((2, keys)) < 0.8
        sparse_query = tf.sparse.from_dense(query)
        graph_out, _, graph_indices = compiled(sparse_query, value, value_mask)
        eager_out, _, eager_indices = layer(sparse_query, value, value_mask=value_mask,
                                            return_attention_scores=True)
        np.testing.assert_allclose(graph_out.numpy(), eager_out.numpy(), atol=1e-6)
        assert graph_indices.shape[-1] == top_k and eager_indices.shape[-1] == min(top_k, keys)
        np.testing.assert_array_equal(graph_indices.numpy()[..., : min(top_k, keys)], eager_indices.numpy())
        assert (graph_indices.numpy()[..., keys:] == -1).all()


def check_save_load_round_trip(selector, query, value, path):
    """Saves a functional model around the layer as `.keras` and loads it back: the restored model
    must give the same output. Returns `(layer, restored_layer, inputs)` for further checks.

    Args:
        selector: the layer's `selector=`.
        query, value: dense arrays `[B, M, Dq]` and `[B, N, Dv]` (the query goes in sparse).
        path: a `.keras` file path to write.
    """
    query_input = keras.Input(shape=query.shape[1:], sparse=True)
    value_input = keras.Input(shape=value.shape[1:])
    layer = SparseDenseMultiHeadAttention(2, 4, 3, selector=selector, name="sdattn")
    model = keras.Model([query_input, value_input], layer(query_input, value_input))
    inputs = [tf.sparse.from_dense(query), tf.constant(value)]
    before = model(inputs).numpy()
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_array_equal(restored(inputs).numpy(), before)
    return layer, restored.get_layer("sdattn"), inputs
