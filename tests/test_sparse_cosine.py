"""`cosine`'s sparse path (`sdattn.selectors.sparse_cosine`) selects exactly what its dense path does.

The dense path (a dense product, then top-k) is the reference: `fast_paths=False` forces it. Ties
are made exact on purpose (repeated key rows score exactly alike on both paths), so tie order is
checked too. (Distinct keys whose cosines are equal only in exact arithmetic are ranked by
rounding, which no two summation orders share.)
"""

import numpy as np
import pytest
import tensorflow as tf

from sdattn import budgets
from sdattn.layer import SparseDenseMultiHeadAttention
from sdattn.selectors import cpu_top_k, sparse_cosine

pytestmark = pytest.mark.skipif(not cpu_top_k.available(), reason="needs TF's CPU and Numba")


def _inputs(seed, batch=2, queries=24, keys=300, dim=32, per_row=3, repeat_keys=True):
    rng = np.random.default_rng(seed)
    value = rng.standard_normal((batch, keys, dim)).astype(np.float32)
    if repeat_keys:  # equal rows: equal cosines, so ties must go to the lower position
        value[:, 1::7] = value[:, ::7][:, :value[:, 1::7].shape[1]]
    dense = np.zeros((batch, queries, dim), np.float32)
    for b in range(batch):
        for m in range(queries - 1):  # the last row stays all zero
            features = rng.choice(dim, per_row, replace=False)
            dense[b, m, features] = rng.uniform(0.5, 2.0, per_row)
    return tf.sparse.from_dense(dense), tf.constant(value)


def _pair(query, value, top_k, seed=0):
    layers = []
    for fast in (True, False):
        layer = SparseDenseMultiHeadAttention(2, 8, top_k, selector="cosine", fast_paths=fast, seed=seed)
        layer.build(tuple(query.shape), tuple(value.shape))
        layers.append(layer)
    layers[1].set_weights(layers[0].get_weights())
    return layers


def _check(query, value, top_k, graph=False, **call):
    fast, plain = _pair(query, value, top_k)
    run_fast = (tf.function(lambda q, v: fast(q, v, return_attention_scores=True, **call))
                if graph else (lambda q, v: fast(q, v, return_attention_scores=True, **call)))
    out, scores, indices = run_fast(query, value)
    ref_out, ref_scores, ref_indices = plain(query, value, return_attention_scores=True, **call)
    np.testing.assert_array_equal(indices.numpy(), ref_indices.numpy())
    np.testing.assert_allclose(out.numpy(), ref_out.numpy(), rtol=1e-4, atol=1e-5)  # folded vs plain attention: float order
    np.testing.assert_allclose(scores.numpy(), ref_scores.numpy(), rtol=1e-4, atol=1e-5)  # folded vs plain attention: float order
    return indices.numpy()


@pytest.mark.parametrize("graph", [False, True])
def test_same_selection_ties_included(graph):
    query, value = _inputs(0)
    _check(query, value, top_k=16, graph=graph)


def test_the_sparse_path_runs(monkeypatch):
    calls = []
    fold = sparse_cosine.fold_block
    monkeypatch.setattr(sparse_cosine, "fold_block",
                        lambda *a, **kw: calls.append(1) or fold(*a, **kw))
    query, value = _inputs(1)
    _check(query, value, top_k=8)
    assert calls, "the layer never took the sparse path"


def test_several_key_blocks(monkeypatch):
    # 4·D·block = BLOCK_ELEMENTS: blocks of 37 keys, so positions cross many block bounds.
    monkeypatch.setattr(budgets, "BLOCK_ELEMENTS", 4 * 32 * 37)
    monkeypatch.setattr(sparse_cosine, "TILE_KEYS", 16)
    query, value = _inputs(2, keys=500)
    _check(query, value, top_k=12, graph=True)


def test_key_mask_and_fewer_valid_keys_than_k():
    query, value = _inputs(3, keys=60)
    key_mask = np.ones((2, 60), bool)
    key_mask[0, ::2] = False
    key_mask[1, 5:] = False  # 5 valid keys, k = 8: three slots stay empty
    indices = _check(query, value, top_k=8, key_mask=tf.constant(key_mask))
    assert (indices[1, :, :, 5:] == -1).all()
    assert (indices[1, :, :-1, :5] >= 0).all()


def test_one_batch_item_and_unordered_duplicate_indices():
    rng = np.random.default_rng(4)
    value = tf.constant(rng.standard_normal((1, 200, 16)).astype(np.float32))
    indices = np.array([[0, 0, 3], [0, 2, 1], [0, 0, 3], [0, 1, 7], [0, 0, 9], [0, 2, 15]])
    values = np.array([1.0, 2.0, 0.5, -1.0, 3.0, 1.5], np.float32)
    query = tf.SparseTensor(indices, values, [1, 3, 16])  # out of order, (0, 0, 3) twice
    _check(query, value, top_k=10)
    _check(query, value, top_k=10, graph=True)


def test_real_text_rows():
    from sdattn.inputs import generate_inputs

    example = generate_inputs("real_text")
    query = example.to_sparse_tensor()
    _check(query, tf.constant(example.value), top_k=8, graph=True)


def test_causal_mask_takes_the_dense_path(monkeypatch):
    monkeypatch.setattr(sparse_cosine, "fold_block", None)  # would fail if called
    query, value = _inputs(5, queries=20, keys=20)
    _check(query, value, top_k=4, use_causal_mask=True)


def test_dense_enough_query_takes_the_dense_path(monkeypatch):
    monkeypatch.setattr(sparse_cosine, "fold_block", None)
    query, value = _inputs(6, per_row=12)  # 12 of 32 features: above FUSED_COSINE_DENSITY
    _check(query, value, top_k=8)
    _check(query, value, top_k=8, graph=True)


def test_a_subclass_with_its_own_scores_keeps_them(monkeypatch):
    """`lsh` subclasses `cosine` with scores of its own: the sparse path must not replace them."""
    monkeypatch.setattr(sparse_cosine, "fold_block", None)  # would fail if called
    query, value = _inputs(7)
    layer = SparseDenseMultiHeadAttention(2, 8, 8, selector="lsh")
    layer(query, value)
