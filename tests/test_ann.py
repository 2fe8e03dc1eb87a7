"""Tests of the Faiss-backed `ann` selector: oracle against Keras MHA, recall against exact cosine
in NumPy, masks, the index cache, tf.function, save/load and argument errors."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

import sdattn
from cases import (check_save_load_round_trip, check_unknown_lengths_match_eager, random_case,
                   stable_seed)
from sdattn import reference
from sdattn.selectors.ann import AnnSelector
from sdattn.inputs import generate_inputs
from sdattn.layer import SparseDenseMultiHeadAttention


def exact_cosine_top_k(query, keys, k, allowed=None):
    """NumPy reference: `[B, S, M, k]` positions of the k most cosine-similar allowed keys, -1 if none."""
    query_unit = query / np.linalg.norm(query, axis=-1, keepdims=True)
    key_unit = keys / np.linalg.norm(keys, axis=-1, keepdims=True)
    cosine = np.einsum("bmd,bnd->bmn", query_unit, key_unit)[:, None]  # [B, 1, M, N]
    if allowed is not None:
        cosine = np.broadcast_to(cosine, np.broadcast_shapes(cosine.shape, np.shape(allowed)))  # [B, S, M, N]
    return reference.exact_top_k(cosine, k, attention_mask=allowed)


def recall(selected, exact):
    """Mean over query rows of |selected ∩ exact| / |exact|, on `[..., k]` index arrays."""
    selected, exact = selected.reshape(-1, selected.shape[-1]), exact.reshape(-1, exact.shape[-1])  # [rows, k]
    hits = (selected[:, :, None] == exact[:, None, :]) & (exact[:, None, :] >= 0)
    sizes = (exact >= 0).sum(-1)
    keep = sizes > 0
    return float(np.mean(hits.any(1).sum(-1)[keep] / sizes[keep]))


def config_p_case(num_keys, num_queries, seed=0):
    example = generate_inputs("config_p", seed=seed, num_keys=num_keys, num_queries=num_queries)
    return example.dense_query(), example.value, example


def test_ann_is_registered():
    assert "ann" in sdattn.available_selectors()
    assert isinstance(SparseDenseMultiHeadAttention(2, 4, 3, selector="ann").selector, AnnSelector)


# ---- oracle -----------------------------------------------------------------------------------

ORACLE_SHAPES = [
    # (B, M, N, Dq, Dv, H, key_dim, extra MHA kwargs); Dq != Dv uses the projected fallback.
    (2, 5, 7, 6, 6, 3, 8, {}),
    (1, 9, 4, 3, 5, 2, 4, {"value_dim": 6}),
    (3, 4, 11, 8, 8, 1, 5, {"output_shape": 7}),
]


@pytest.mark.parametrize("shape", ORACLE_SHAPES, ids=lambda s: "x".join(map(str, s[:7])))
@pytest.mark.parametrize("sparse_query", [True, False], ids=["sparse", "dense"])
@pytest.mark.parametrize("masks", ["none", "value", "causal", "attention"])
def test_oracle_matches_keras_mha_when_every_key_is_selected(shape, sparse_query, masks):
    batch, queries, keys, query_dim, value_dim, heads, key_dim, kwargs = shape
    rng = np.random.default_rng(stable_seed(shape[:7], sparse_query, masks))
    query, value = random_case(rng, batch, queries, keys, query_dim, value_dim)
    mha = keras.layers.MultiHeadAttention(heads, key_dim, **kwargs)
    mha(query, value)
    layer = SparseDenseMultiHeadAttention(heads, key_dim, keys + 3, selector="ann", **kwargs)
    layer(tf.sparse.from_dense(query), value)
    layer.set_weights(mha.get_weights())
    call = {}
    if masks == "value":
        call["value_mask"] = rng.random((batch, keys)) < 0.6
        call["value_mask"][:, 0] = True
    elif masks == "causal":
        call["use_causal_mask"] = True
    elif masks == "attention":
        call["attention_mask"] = rng.random((batch, queries, keys)) < 0.6
        call["attention_mask"][..., 0] = True
    layer_query = tf.sparse.from_dense(query) if sparse_query else query
    np.testing.assert_allclose(layer(layer_query, value, **call).numpy(), mha(query, value, **call).numpy(),
                               atol=1e-5)


# ---- recall on Config P -------------------------------------------------------------------------

@pytest.mark.parametrize("num_keys,selector", [
    (16_384, {}),  # the defaults: IVF-Flat, nlist = 128, nprobe = 1
    # IVF forced below the exact threshold. There the default sqrt(N) = 64 lists mix about 4 of
    # Config P's 16-key topics each, so these cases set 256 lists; with the noisy queries the
    # default 8 probes give recall 0.89 on these 48 queries, so the flat case probes 16.
    (4_096, {"exact_threshold": 0, "nlist": 256, "nprobe": 16}),
    (4_096, {"exact_threshold": 0, "nlist": 256, "storage": "sq8"}),  # 8-bit codes, exact re-scoring
    (4_096, {"exact_threshold": 0, "index_type": "hnsw"}),
], ids=["ivf-default-16k", "ivf-4k", "ivf-sq8-4k", "hnsw-4k"])
def test_recall_against_exact_cosine_on_config_p(num_keys, selector):
    query, value, example = config_p_case(num_keys, num_queries=48)
    layer = SparseDenseMultiHeadAttention(8, 32, 32, selector={"name": "ann", **selector})
    _, _, indices = layer(example.to_sparse_tensor(), value, return_attention_scores=True)
    indices = indices.numpy()
    np.testing.assert_array_equal(indices, np.broadcast_to(indices[:, :1], indices.shape))  # shared by heads
    assert recall(indices[:, :1], exact_cosine_top_k(query, value, 32)) >= 0.9
    assert len(layer.selector._index_cache) == 2  # one index per batch item


def test_exact_mode_equals_the_numpy_cosine_top_k_in_order():
    rng = np.random.default_rng(1)
    query, value = random_case(rng, 2, 6, 40, 5, 5)
    layer = SparseDenseMultiHeadAttention(2, 4, 4, selector="ann")  # N = 40 <= exact_threshold
    _, _, indices = layer(tf.sparse.from_dense(query), value, return_attention_scores=True)
    np.testing.assert_array_equal(indices.numpy()[:, :1], exact_cosine_top_k(query, value, 4))


def test_inner_product_metric_ranks_by_raw_dot_product():
    rng = np.random.default_rng(2)
    query, value = random_case(rng, 2, 5, 30, 4, 4)
    value *= rng.uniform(0.1, 3.0, size=(2, 30, 1)).astype("float32")  # norms now matter
    layer = SparseDenseMultiHeadAttention(1, 4, 3, selector={"name": "ann", "metric": "ip"})
    _, _, indices = layer(tf.sparse.from_dense(query), value, return_attention_scores=True)
    dots = np.einsum("bmd,bnd->bmn", query, value)[:, None]
    np.testing.assert_array_equal(indices.numpy(), reference.exact_top_k(dots, 3))


# ---- masks --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["exact", "ivf", "hnsw"])
@pytest.mark.parametrize("seed", range(4))
def test_masks_are_honoured_and_slots_fill_up(mode, seed):
    rng = np.random.default_rng(seed)
    batch, queries, keys, top_k = 2, 24, 600, 8
    query, value = random_case(rng, batch, queries, keys, 6, 6, density=0.6)
    selector = {"name": "ann"}
    if mode != "exact":
        selector.update(exact_threshold=0, index_type=mode, nlist=16, nprobe=2, ef_search=8)  # a weak index
    layer = SparseDenseMultiHeadAttention(2, 4, top_k, selector=selector)
    value_mask = rng.random((batch, keys)) < 0.7
    query_mask = rng.random((batch, queries)) < 0.8
    attention_mask = rng.random((batch, queries, keys)) < rng.choice([0.01, 0.5, 1.0])
    causal = bool(seed % 2)
    _, scores, indices = layer(tf.sparse.from_dense(query), value, value_mask=value_mask, query_mask=query_mask,
                               attention_mask=attention_mask, use_causal_mask=causal,
                               return_attention_scores=True)
    allowed = reference.combined_mask(batch, queries, keys, query_mask=query_mask, key_mask=value_mask,
                                      attention_mask=attention_mask, use_causal_mask=causal)
    indices = indices.numpy()
    picked = indices >= 0
    allowed_by_head = np.broadcast_to(allowed, (batch, 2, queries, keys))
    assert np.take_along_axis(allowed_by_head, np.where(picked, indices, 0), -1)[picked].all()
    # Every slot that some allowed key could fill is filled, and no key comes twice.
    np.testing.assert_array_equal(picked.sum(-1), np.minimum(allowed_by_head.sum(-1), top_k))
    for row in indices.reshape(-1, top_k):  # [B·H·M, k]
        assert len(set(row[row >= 0])) == (row >= 0).sum()
    assert (indices[0][:, ~query_mask[0]] == -1).all()
    exact = exact_cosine_top_k(query, value, top_k, allowed=allowed)
    if mode == "exact":
        np.testing.assert_array_equal(indices[:, :1], exact)
    else:
        assert recall(indices[:, :1], exact) >= 0.5  # a weak index on unstructured keys, still useful


def test_per_head_attention_mask_gives_a_per_head_selection():
    rng = np.random.default_rng(3)
    query, value = random_case(rng, 1, 4, 9, 5, 5)
    per_head = rng.random((1, 3, 4, 9)) < 0.5
    layer = SparseDenseMultiHeadAttention(3, 4, 3, selector="ann")
    _, _, indices = layer(tf.sparse.from_dense(query), value, attention_mask=per_head,
                          return_attention_scores=True)
    expected = exact_cosine_top_k(query, value, 3, allowed=per_head)  # [B, H, M, k]
    np.testing.assert_array_equal(indices.numpy(), expected)


def test_search_numpy_without_the_layer():
    rng = np.random.default_rng(4)
    query, value = random_case(rng, 2, 3, 20, 4, 4)
    selected = AnnSelector().search_numpy(query, value, 25, key_mask=np.tile(np.arange(20) < 15, (2, 1)))
    assert selected.shape == (2, 1, 3, 25) and selected.dtype == np.int32
    assert ((selected[..., :15] >= 0) & (selected[..., :15] < 15)).all()
    assert (selected[..., 15:] == -1).all()


# ---- the index cache ------------------------------------------------------------------------------

def test_index_is_built_once_per_key_set_and_the_cache_is_bounded():
    _, value, example = config_p_case(2_048, num_queries=8)
    selector = AnnSelector(exact_threshold=0, cache_size=2)
    assert selector.index_keys(value) > 0
    assert selector.index_keys(value) == 0.0  # cached by content
    assert selector.index_keys(value.copy()) == 0.0  # same content, another buffer
    layer = SparseDenseMultiHeadAttention(2, 8, 4, selector=selector)
    layer(example.to_sparse_tensor(), value)
    assert len(selector._index_cache) == 2
    changed = value.copy()
    changed[0, 5, 3] += 1.0
    assert selector.index_keys(changed) > 0  # item 0 changed; item 1 is still cached
    assert len(selector._index_cache) == 2  # the least recently used entry was dropped
    selector.clear_cache()
    assert len(selector._index_cache) == 0


# ---- TF integration ---------------------------------------------------------------------------------

def test_tf_function_with_unknown_lengths_matches_eager():
    check_unknown_lengths_match_eager({"name": "ann", "exact_threshold": 4}, seed=5, key_counts=(3, 40))


def test_gradients_reach_every_kernel():
    rng = np.random.default_rng(6)
    query, value = random_case(rng, 2, 4, 30, 5, 5)
    layer = SparseDenseMultiHeadAttention(2, 4, 6, selector="ann")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(tf.sparse.from_dense(query), value) ** 2)
    gradients = tape.gradient(loss, layer.trainable_weights)
    assert len(gradients) == 8
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in gradients)


def test_keras_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    query, value = random_case(rng, 2, 4, 60, 5, 5)
    chosen = {"name": "ann", "metric": "ip", "nprobe": 2, "nlist": 4, "exact_threshold": 10}
    layer, restored_layer, _ = check_save_load_round_trip(chosen, query, value, tmp_path / "model.keras")
    restored_selector = restored_layer.selector
    assert type(restored_selector) is AnnSelector
    assert restored_selector.get_config() == layer.selector.get_config()


def test_get_config_keys_are_the_constructor_arguments():
    selector = AnnSelector(nprobe=3, index_type="hnsw")
    own_keys = set(selector.get_config()) - set(keras.layers.Layer().get_config())
    parameters = set(inspect.signature(AnnSelector.__init__).parameters) - {"self", "kwargs"}
    assert own_keys - {"block_size"} == parameters
    assert AnnSelector.from_config(selector.get_config()).get_config() == selector.get_config()


@pytest.mark.parametrize("kwargs,pattern", [
    ({"metric": "l2"}, r"`metric`.*'cosine', 'ip'.*metric='l2'"),
    ({"index_type": "lsh"}, r"`index_type`.*index_type='lsh'"),
    ({"nprobe": 0}, r"`nprobe`.*nprobe=0"),
    ({"nlist": 2.5}, r"`nlist`.*nlist=2.5"),
    ({"storage": "pq"}, r"`storage`.*storage='pq'"),
    ({"oversample": 0.5}, r"`oversample`.*oversample=0.5"),
    ({"cache_size": 0}, r"`cache_size`.*cache_size=0"),
])
def test_errors_name_the_argument_and_value(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        SparseDenseMultiHeadAttention(2, 4, 3, selector={"name": "ann", **kwargs})


def test_graph_hashes_the_keys_it_searches():
    """In a graph the content hash is an op of its own; a second key set of the same shape must
    find its own index, not the first one's, and masks must enter the hash."""
    rng = np.random.default_rng(12)
    query, first = random_case(rng, 2, 5, 60, 6, 6)
    second = rng.normal(size=first.shape).astype("float32")
    layer = SparseDenseMultiHeadAttention(2, 4, 4, selector={"name": "ann", "exact_threshold": 0,
                                                            "nlist": 4, "nprobe": 4})
    compiled = tf.function(lambda q, v, m: layer(q, v, value_mask=m, return_attention_scores=True))
    sparse = tf.sparse.from_dense(query)
    all_keys = np.ones((2, 60), bool)
    some_keys = all_keys.copy()
    some_keys[:, ::3] = False
    for value, value_mask in ((first, all_keys), (second, all_keys), (first, some_keys)):
        _, _, graph_indices = compiled(sparse, tf.constant(value), tf.constant(value_mask))
        _, _, eager_indices = layer(sparse, value, value_mask=value_mask, return_attention_scores=True)
        np.testing.assert_array_equal(graph_indices.numpy(), eager_indices.numpy())
        chosen = graph_indices.numpy()
        assert value_mask[np.nonzero(chosen >= 0)[0], chosen[chosen >= 0]].all()
    assert len(layer.selector._index_cache) == 6  # 3 key sets × 2 batch items


# ---- uneven lists and ties ---------------------------------------------------------------------

def test_rows_whose_probed_lists_are_short_search_more_lists_not_all_keys(monkeypatch):
    """With 1 probe of 64 lists over 600 keys, some probed lists hold fewer than k = 10 keys: those
    rows are searched again with 4× the lists (never the exact fallback), and come back full."""
    rng = np.random.default_rng(12)
    query, value = random_case(rng, 1, 40, 600, 8, 8)
    selector = AnnSelector(exact_threshold=0, nlist=64, nprobe=1)
    probes = []
    original = AnnSelector._search_ivf

    def counted(entry, row_queries, fetch, nprobe):
        probes.append((len(row_queries), nprobe))
        return original(entry, row_queries, fetch, nprobe)

    monkeypatch.setattr(AnnSelector, "_search_ivf", staticmethod(counted))
    monkeypatch.setattr(AnnSelector, "_exact_rows", lambda *args: pytest.fail("exact fallback used"))
    selected = selector.search_numpy(query, value, 10)
    assert (selected >= 0).all()
    assert probes[0] == (40, 1) and len(probes) >= 2 and probes[1][1] == 4
    assert probes[1][0] < 40  # only the short rows are searched again
    for row in selected.reshape(-1, 10):
        assert len(set(row)) == 10
    assert recall(selected, exact_cosine_top_k(query, value, 10)) >= 0.5


def test_equal_scores_are_ordered_by_position():
    scores = np.array([[0.9, 0.5, 0.5, 0.5, 0.1], [0.9, 0.8, 0.7, 0.6, 0.5]], np.float32)
    candidates = np.array([[4, 9, 2, 7, 0], [5, 3, 1, 8, 2]])
    ordered = AnnSelector._ties_by_position(scores, candidates)
    np.testing.assert_array_equal(ordered, [[4, 2, 7, 9, 0], [5, 3, 1, 8, 2]])
    np.testing.assert_array_equal(candidates[0], [4, 9, 2, 7, 0])  # the input is left alone


def test_batch_items_searched_in_parallel_equal_items_searched_alone():
    import faiss

    rng = np.random.default_rng(13)
    query, value = random_case(rng, 3, 20, 500, 8, 8)
    query_mask = rng.random((3, 20)) < 0.8
    selector = AnnSelector(exact_threshold=0, nlist=16, nprobe=3)
    threads = faiss.omp_get_max_threads()
    together = selector.search_numpy(query, value, 6, query_mask=query_mask)
    assert faiss.omp_get_max_threads() == threads  # the caller's OpenMP threads are left alone
    for item in range(3):
        alone = selector.search_numpy(query[item:item + 1], value[item:item + 1], 6,
                                      query_mask=query_mask[item:item + 1])
        np.testing.assert_array_equal(together[item], alone[0])


@pytest.mark.parametrize("selector", ["ann", "cosine", "dot"])
def test_attention_waits_for_a_selection_made_outside_tf(selector):
    """Faiss searches (and `cosine`'s sparse path scores) in a numpy_function; TF's threads would
    slow it down by competing for the cores, so attention ops wait for it (a control
    dependency). Selectors that select in TF ops (`dot`) need no wait."""
    rng = np.random.default_rng(14)
    query, value = random_case(rng, 2, 6, 30, 8, 8)
    chosen = {"name": selector, "exact_threshold": 0, "nlist": 4} if selector == "ann" else selector
    layer = SparseDenseMultiHeadAttention(2, 4, 5, selector=chosen)
    graph = tf.function(lambda q, v: layer(q, v)).get_concrete_function(
        tf.constant(query), tf.constant(value)).graph

    def after_search(op):  # whether a numpy_function (the search) is upstream of `op`
        seen, stack = set(), [op]
        while stack:
            node = stack.pop()
            if node.type in ("PyFunc", "PyFuncStateless", "EagerPyFunc"):
                return True
            if node.name not in seen:
                seen.add(node.name)
                stack.extend(tensor.op for tensor in node.inputs)
        return False

    waiting = [op for op in graph.get_operations()
               if op.type == "Identity" and any(after_search(control) for control in op.control_inputs)]
    assert bool(waiting) == (selector in ("ann", "cosine"))
    np.testing.assert_allclose(tf.function(lambda q, v: layer(q, v))(query, value).numpy(),
                               layer(query, value).numpy(), rtol=1e-5, atol=1e-6)


def test_sq8_rescoring_in_chunks_gives_the_same_selection(monkeypatch):
    from sdattn import budgets

    query, value, example = config_p_case(4_096, num_queries=24)
    selector = {"name": "ann", "exact_threshold": 0, "nlist": 256, "storage": "sq8"}
    layer = SparseDenseMultiHeadAttention(2, 4, 8, selector=selector)
    _, _, whole = layer(example.to_sparse_tensor(), value, return_attention_scores=True)
    monkeypatch.setattr(budgets, "ANN_RESCORE_ELEMENTS", 3 * 16 * 256)  # 3 query rows per step
    _, _, chunked = layer(example.to_sparse_tensor(), value, return_attention_scores=True)
    np.testing.assert_array_equal(chunked.numpy(), whole.numpy())


# ---- the sparse IVF search ---------------------------------------------------------------------

def _flat_ivf(keys, nlist):
    import faiss

    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(keys.shape[1]), keys.shape[1], nlist,
                               faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = 1
    index.train(keys)
    index.add(keys)
    return index


def _sparse_unit_rows(rng, rows, dim, stored):
    query = np.zeros((rows, dim), np.float32)
    for row in query:
        row[rng.choice(dim, stored, replace=False)] = rng.normal(size=stored)
    return query / np.linalg.norm(query, axis=-1, keepdims=True)


@pytest.mark.parametrize("nprobe", [1, 3, 32])
def test_sparse_search_returns_what_faiss_returns(nprobe):
    import faiss
    from sdattn.selectors.ann import sparse_search

    rng = np.random.default_rng(20)
    keys = rng.normal(size=(2_000, 32)).astype(np.float32)
    index = _flat_ivf(keys, nlist=32)
    query = _sparse_unit_rows(rng, 50, 32, stored=3)
    faiss.omp_set_num_threads(1)
    expected_scores, expected_ids = index.search(query, 12, params=faiss.SearchParametersIVF(nprobe=nprobe))
    rows = sparse_search.sparse_rows(query)
    assert rows is not None and rows[1].size == 150
    scores, ids = sparse_search.search(sparse_search.inverted_lists(index), rows, 12, nprobe)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)
    if nprobe == 32:  # every list: the exact inner-product top-k
        np.testing.assert_array_equal(ids, np.argsort(-(query @ keys.T), axis=-1, kind="stable")[:, :12])


def test_sparse_search_leaves_slots_empty_as_faiss_does_when_probed_lists_are_short():
    import faiss
    from sdattn.selectors.ann import sparse_search

    rng = np.random.default_rng(21)
    keys = rng.normal(size=(600, 16)).astype(np.float32)
    index = _flat_ivf(keys, nlist=64)  # about 9 keys a list, fewer than the 12 fetched
    query = _sparse_unit_rows(rng, 40, 16, stored=2)
    _, expected_ids = index.search(query, 12, params=faiss.SearchParametersIVF(nprobe=1))
    scores, ids = sparse_search.search(sparse_search.inverted_lists(index),
                                       sparse_search.sparse_rows(query), 12, 1)
    assert (expected_ids < 0).any()
    np.testing.assert_array_equal(ids, expected_ids)
    assert np.isneginf(scores[ids < 0]).all() and np.isfinite(scores[ids >= 0]).all()


def test_sparse_rows_are_csr_and_dense_rows_are_refused():
    from sdattn.selectors.ann import sparse_search

    query = np.array([[0, 2, 0, 0], [0, 0, 0, 0], [1, 0, 0, 3]], np.float32)
    row_ptr, cols, vals = sparse_search.sparse_rows(query, density=0.5)
    np.testing.assert_array_equal(row_ptr, [0, 1, 1, 3])
    np.testing.assert_array_equal(cols, [1, 0, 3])
    np.testing.assert_array_equal(vals, [2, 1, 3])
    assert sparse_search.sparse_rows(query, density=0.2) is None  # 3 of 12 entries stored


def test_layer_selects_the_same_keys_with_the_sparse_search_as_with_faiss(monkeypatch):
    """Config P's 8-of-256-feature queries take the sparse search; with the density bound at 0
    every row goes to Faiss. Both give the same selection, and only the first copies the lists."""
    from sdattn import budgets
    from sdattn.selectors.ann import sparse_search

    _, value, example = config_p_case(4_096, num_queries=64)
    calls = []
    original = sparse_search.search
    monkeypatch.setattr(sparse_search, "search", lambda *args: calls.append(1) or original(*args))
    selector = {"name": "ann", "exact_threshold": 0, "nlist": 64, "nprobe": 2}
    layer = SparseDenseMultiHeadAttention(2, 8, 16, selector=selector)
    _, _, sparse_indices = layer(example.to_sparse_tensor(), value, return_attention_scores=True)
    assert len(calls) == 2  # one search per batch item
    monkeypatch.setattr(budgets, "ANN_SPARSE_SEARCH_DENSITY", 0.0)
    _, _, faiss_indices = layer(example.to_sparse_tensor(), value, return_attention_scores=True)
    assert len(calls) == 2
    np.testing.assert_array_equal(sparse_indices.numpy(), faiss_indices.numpy())


def test_inverted_lists_are_copied_once_when_threads_search_together(monkeypatch):
    import threading

    from sdattn.selectors.ann import sparse_search

    copies = []
    monkeypatch.setattr(sparse_search, "inverted_lists", lambda index: copies.append(index) or "lists")
    lazy = sparse_search.LazyLists("index")
    start = threading.Barrier(4)
    results = []

    def search():
        start.wait()
        results.append(lazy.get())

    threads = [threading.Thread(target=search) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert copies == ["index"] and results == ["lists"] * 4


def test_inverted_lists_only_of_a_flat_ivf_index():
    import faiss
    from sdattn.selectors.ann import sparse_search

    keys = np.random.default_rng(22).normal(size=(300, 8)).astype(np.float32)
    assert sparse_search.inverted_lists(faiss.IndexFlatIP(8)) is None
    sq8 = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(8), 8, 4, faiss.ScalarQuantizer.QT_8bit,
                                        faiss.METRIC_INNER_PRODUCT)
    sq8.train(keys)
    assert sparse_search.inverted_lists(sq8) is None
    lists = sparse_search.inverted_lists(_flat_ivf(keys, nlist=4))
    assert lists.offsets[-1] == 300 and sorted(lists.ids) == list(range(300))
    # Each list is stored transposed: row i of a list of s keys is column i of its [D, s] block.
    first = int(np.argmax(np.diff(lists.offsets) > 0))
    start, size = int(lists.offsets[first]), int(lists.offsets[first + 1] - lists.offsets[first])
    block = lists.keys_t[8 * start:8 * (start + size)].reshape(8, size)
    np.testing.assert_array_equal(block.T, keys[lists.ids[start:start + size]])


@pytest.mark.parametrize("storage", ["flat", "sq8"])
def test_exactly_sized_lists_hold_what_faiss_add_would(storage, monkeypatch):
    """`_add_to_exact_lists` sizes each inverted list once; the index must search exactly as one
    built by Faiss's own chunked `add` (same lists, ids, codes and order), with uneven chunks
    and masked keys."""
    import faiss

    from sdattn import budgets
    from sdattn.selectors.ann import index as index_module

    monkeypatch.setattr(budgets, "ANN_ADD_CHUNK_ROWS", 700)
    rng = np.random.default_rng(11)
    keys = rng.normal(size=(3000, 16)).astype("float32")
    key_ids = np.flatnonzero(rng.random(3000) > 0.1).astype(np.int64)
    selector = AnnSelector(storage=storage, nlist=20)
    built = selector._build_index(keys, key_ids, key_ids.size, "ivf", storage)
    monkeypatch.setattr(index_module, "_add_to_exact_lists",
                        lambda index, rows_of, chunks: [index.add(rows_of(*chunk)) for chunk in chunks])
    expected = selector._build_index(keys, key_ids, key_ids.size, "ivf", storage)  # same training sample
    assert built.ntotal == expected.ntotal == key_ids.size
    queries = selector._rows(rng.normal(size=(40, 16)).astype("float32"), None, 0, 40)
    for index in (built, expected):
        faiss.extract_index_ivf(index).nprobe = 3
    for got, want in zip(built.search(queries, 25), expected.search(queries, 25)):
        np.testing.assert_array_equal(got, want)
    lists, want_lists = faiss.extract_index_ivf(built).invlists, faiss.extract_index_ivf(expected).invlists
    assert [lists.list_size(i) for i in range(20)] == [want_lists.list_size(i) for i in range(20)]
