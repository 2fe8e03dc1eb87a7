"""Shared test inputs for the layer tests: random sparse-dense cases, and an sdattn layer paired
with a keras.layers.MultiHeadAttention that holds the same attention weights."""

import keras
import tensorflow as tf

from sdattn.layer import SparseDenseMultiHeadAttention


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
