"""Selecting once per distinct query row, and reusing `dot`'s scores as the attention logits:
both must give exactly what the plain path gives."""

import numpy as np
import pytest
import tensorflow as tf

from cases import paired_layers, random_case
from sdattn.distinct import can_share_rows, distinct_rows
from sdattn.layer import SparseDenseMultiHeadAttention

ROW_WISE = ["dot", "cosine", "ann", "lsh", "learned"]


def repeated_rows_case(rng, batch=2, queries=12, keys=40, dim=6, distinct=(3, 5)):
    """A query whose batch items repeat a few distinct rows (a different number per item)."""
    query, value = random_case(rng, batch, queries, keys, dim, dim)
    for item, count in enumerate(distinct):
        pattern = rng.integers(0, count, size=queries)
        pattern[:count] = np.arange(count)  # every distinct row occurs
        pattern[count] = 0  # and the first one again right after
        query[item] = query[item, pattern]
    return query, value


def test_distinct_rows_finds_first_occurrences_and_inverse():
    rng = np.random.default_rng(0)
    query, _ = repeated_rows_case(rng)
    rows = distinct_rows(tf.constant(query))
    representatives, inverse = rows.representatives.numpy(), rows.inverse.numpy()
    assert representatives.shape == (2, 5)  # the widest item; the other is padded
    for item, count in enumerate((3, 5)):
        firsts = representatives[item, :count]
        _, expected_firsts = np.unique(query[item], axis=0, return_index=True)
        assert sorted(firsts) == sorted(expected_firsts)
        # Every row is a copy of its representative.
        np.testing.assert_array_equal(query[item], query[item, firsts[inverse[item]]])


def test_distinct_rows_compares_bits_exactly():
    query = np.zeros((1, 4, 3), np.float32)
    query[0, 1, 0] = -0.0  # equal as a float, different bits: kept apart (a missed merge only)
    query[0, 2, 0] = 1e-45  # a denormal: a different row
    query[0, 3] = query[0, 0]
    inverse = distinct_rows(tf.constant(query)).inverse.numpy()[0]
    assert inverse[0] == inverse[3]
    assert len({inverse[0], inverse[1], inverse[2]}) == 3


def test_rows_are_not_shared_under_causal_or_attention_masks():
    query = tf.zeros((2, 4, 3))
    assert can_share_rows(query, None, False)
    assert not can_share_rows(query, None, True)
    assert not can_share_rows(query, tf.ones((2, 1, 4, 5), tf.bool), False)
    assert not can_share_rows(tf.keras.Input((4, 3)), None, False)  # unknown batch size


def _without_sharing(layer):
    """The same layer computing every row's selection itself (the instance hides the class flag)."""
    layer.selector.row_wise = False
    return layer


@pytest.mark.parametrize("selector", ROW_WISE)
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_shared_rows_select_exactly_what_each_row_would(selector, graph):
    rng = np.random.default_rng(1)
    query, value = repeated_rows_case(rng)
    sparse = tf.sparse.from_dense(query)
    layer = SparseDenseMultiHeadAttention(2, 4, 5, selector=selector)
    call = (lambda q, v: layer(q, v, return_attention_scores=True))
    if graph:
        call = tf.function(call)
    output, scores, indices = call(sparse, value)
    _without_sharing(layer)
    call_plain = (lambda q, v: layer(q, v, return_attention_scores=True))
    if graph:
        call_plain = tf.function(call_plain)
    plain_output, plain_scores, plain_indices = call_plain(sparse, value)
    np.testing.assert_array_equal(indices.numpy(), plain_indices.numpy())
    np.testing.assert_allclose(output.numpy(), plain_output.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores.numpy(), plain_scores.numpy(), rtol=1e-5, atol=1e-6)
    # Duplicated rows really got the same selection (rows 0 and 3 of item 0 are equal).
    np.testing.assert_array_equal(indices.numpy()[0, :, 0], indices.numpy()[0, :, 3])


@pytest.mark.parametrize("selector", ROW_WISE)
def test_shared_rows_still_match_keras_mha_when_every_key_is_selected(selector):
    rng = np.random.default_rng(2)
    query, value = repeated_rows_case(rng, keys=9)
    layer, mha = paired_layers(2, 4, 9, selector, query, value)
    np.testing.assert_allclose(layer(tf.sparse.from_dense(query), value).numpy(),
                               mha(query, value).numpy(), rtol=1e-5, atol=1e-5)


def test_a_masked_duplicate_does_not_change_its_twin():
    rng = np.random.default_rng(3)
    query, value = repeated_rows_case(rng)
    query_mask = np.ones(query.shape[:2], bool)
    query_mask[:, 0] = False  # the first occurrence, the row that represents its copies
    layer = SparseDenseMultiHeadAttention(2, 4, 5, selector="cosine")
    output, _, indices = layer(tf.sparse.from_dense(query), value, query_mask=query_mask,
                               return_attention_scores=True)
    _without_sharing(layer)
    plain_output, _, plain_indices = layer(tf.sparse.from_dense(query), value, query_mask=query_mask,
                                           return_attention_scores=True)
    np.testing.assert_array_equal(indices.numpy(), plain_indices.numpy())
    np.testing.assert_allclose(output.numpy(), plain_output.numpy(), rtol=1e-5, atol=1e-6)
    assert (indices.numpy()[:, :, 0] == -1).all()
    assert (indices.numpy()[:, :, 1:] >= 0).all()


def test_dot_logits_from_selection_equal_recomputed_logits():
    """Inference reuses `dot`'s top-k scores as logits; training recomputes q·k. Same numbers."""
    rng = np.random.default_rng(4)
    query, value = repeated_rows_case(rng, keys=30)
    value_mask = rng.random(value.shape[:2]) > 0.2
    layer = SparseDenseMultiHeadAttention(2, 4, 6, selector="dot")
    sparse = tf.sparse.from_dense(query)
    inference = layer(sparse, value, value_mask=value_mask, return_attention_scores=True)
    training = layer(sparse, value, value_mask=value_mask, return_attention_scores=True, training=True)
    for reused, recomputed in zip(inference, training):
        np.testing.assert_allclose(reused.numpy(), recomputed.numpy(), rtol=1e-5, atol=1e-6)


def test_dot_gradients_are_the_same_with_and_without_reused_logits():
    rng = np.random.default_rng(5)
    query, value = repeated_rows_case(rng, keys=30)
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


@pytest.mark.parametrize("selector", ["dot", "cosine", "hybrid"])
def test_xla_compiles_the_layer_without_sharing_rows(selector):
    """Under jit_compile the distinct-row count is not static: the layer selects per row there,
    and still gives the eager result. hybrid streams several blocks (block_size=7) here."""
    rng = np.random.default_rng(6)
    query, value = repeated_rows_case(rng, keys=40)
    chosen = {"name": selector, "block_size": 7}
    layer = SparseDenseMultiHeadAttention(2, 4, 6, selector=chosen)
    eager_output, _, eager_indices = layer(query, value, return_attention_scores=True)
    compiled = tf.function(lambda q, v: layer(q, v, return_attention_scores=True), jit_compile=True)
    output, _, indices = compiled(tf.constant(query), tf.constant(value))
    np.testing.assert_array_equal(indices.numpy(), eager_indices.numpy())
    np.testing.assert_allclose(output.numpy(), eager_output.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_distinct_rows_for_every_float_width(dtype):
    query = np.array([[[1, 2, 3], [4, 5, 6], [1, 2, 3]]], np.float32)  # odd D: no 64-bit pairing
    rows = distinct_rows(tf.cast(tf.constant(query), dtype))
    np.testing.assert_array_equal(rows.inverse.numpy(), [[0, 1, 0]])
    np.testing.assert_array_equal(rows.representatives.numpy(), [[0, 1]])


@pytest.mark.parametrize("block_size", [None, 7], ids=["one-block", "streamed"])
def test_hybrid_shares_its_dot_part_between_equal_rows(block_size, monkeypatch):
    """hybrid is not row-wise (its window depends on the row's position), but its dot
    candidates are: they are found once per distinct row, and must equal per-row selection."""
    from sdattn.selectors import SelectionContext

    rng = np.random.default_rng(7)
    query, value = repeated_rows_case(rng, keys=40)
    value_mask = rng.random(value.shape[:2]) > 0.2
    layer = SparseDenseMultiHeadAttention(2, 4, 8, selector={"name": "hybrid", "block_size": block_size})
    sparse = tf.sparse.from_dense(query)
    calls = []
    original = SelectionContext.distinct

    def counted(context):
        shared = original(context)
        calls.append(shared is not None)
        return shared

    monkeypatch.setattr(SelectionContext, "distinct", counted)
    output, _, indices = layer(sparse, value, value_mask=value_mask, return_attention_scores=True)
    assert any(calls), "the dot part should have asked for the distinct rows"
    monkeypatch.setattr(SelectionContext, "distinct", lambda context: None)
    plain_output, _, plain_indices = layer(sparse, value, value_mask=value_mask, return_attention_scores=True)
    np.testing.assert_array_equal(indices.numpy(), plain_indices.numpy())
    np.testing.assert_allclose(output.numpy(), plain_output.numpy(), rtol=1e-5, atol=1e-6)


def _attended_rows(monkeypatch):
    """Records the number of rows attended per batch item each time rows are shared."""
    attended = []
    original = SparseDenseMultiHeadAttention._output_copied_to_rows

    def spy(layer, rows, query_mask, attention_output, *rest):
        attended.append(attention_output.shape[1])
        return original(layer, rows, query_mask, attention_output, *rest)

    monkeypatch.setattr(SparseDenseMultiHeadAttention, "_output_copied_to_rows", spy)
    return attended


@pytest.mark.parametrize("selector", ["cosine", "dot"])
def test_equal_rows_are_attended_once(selector, monkeypatch):
    attended = _attended_rows(monkeypatch)
    rng = np.random.default_rng(8)
    query, value = repeated_rows_case(rng, distinct=(3, 5))
    layer = SparseDenseMultiHeadAttention(2, 4, 5, selector=selector)
    layer(tf.sparse.from_dense(query), value)
    assert attended == [5]  # the most distinct rows of any item, not the 12 rows


@pytest.mark.parametrize("selector", ["cosine", "learned"])
def test_shared_attention_keeps_masked_rows_and_output_shape(selector):
    """A masked row gets the unshared path's answer (the output bias alone, -1 indices) even
    when its twin is unmasked, with a multi-axis output and a value mask as well."""
    rng = np.random.default_rng(9)
    query, value = repeated_rows_case(rng)
    query_mask = np.ones(query.shape[:2], bool)
    query_mask[0, [0, 5]] = False
    query_mask[1, 7:] = False
    value_mask = rng.random(value.shape[:2]) > 0.3
    layer = SparseDenseMultiHeadAttention(2, 4, 5, selector=selector, output_shape=(2, 3),
                                          bias_initializer="random_normal")
    kwargs = dict(query_mask=query_mask, value_mask=value_mask, return_attention_scores=True)
    shared = layer(tf.sparse.from_dense(query), value, **kwargs)
    _without_sharing(layer)
    plain = layer(tf.sparse.from_dense(query), value, **kwargs)
    assert shared[0].shape == (2, 12, 2, 3)
    np.testing.assert_array_equal(shared[2].numpy(), plain[2].numpy())
    for got, expected in zip(shared[:2], plain[:2]):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    output_bias = layer.get_weights()[7]
    np.testing.assert_allclose(shared[0].numpy()[0, 0], output_bias, rtol=1e-6)


@pytest.mark.parametrize("selector", ["dot", "learned"])
def test_shared_attention_trains_like_per_row_attention(selector):
    rng = np.random.default_rng(10)
    query, value = repeated_rows_case(rng, keys=30)
    sparse = tf.sparse.from_dense(query)
    layer = SparseDenseMultiHeadAttention(2, 4, 6, selector=selector)
    layer(sparse, value)
    gradients = []
    for share in (True, False):
        if not share:
            _without_sharing(layer)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(sparse, value, training=True) ** 2)
        gradients.append(tape.gradient(loss, layer.trainable_weights))
    for shared, plain in zip(*gradients):
        assert shared is not None and plain is not None
        np.testing.assert_allclose(shared.numpy(), plain.numpy(), rtol=1e-4, atol=1e-5)


def test_rows_are_attended_each_under_training_dropout_or_a_custom_attention(monkeypatch):
    attended = _attended_rows(monkeypatch)
    rng = np.random.default_rng(11)
    query, value = repeated_rows_case(rng)
    dropout_layer = SparseDenseMultiHeadAttention(2, 4, 5, selector="cosine", dropout=0.5)
    dropout_layer(query, value, training=True)  # every row draws its own dropout mask
    assert attended == []
    dropout_layer(query, value)  # inference: dropout is off, rows are shared
    assert attended == [5]

    class Custom(SparseDenseMultiHeadAttention):
        def _compute_attention(self, query, *args, **kwargs):
            return super()._compute_attention(query, *args, **kwargs)

    Custom(2, 4, 5, selector="cosine")(query, value)
    assert attended == [5]
