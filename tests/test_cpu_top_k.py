"""The compiled CPU top-k (`sdattn.selectors.cpu_top_k`) against `tf.math.top_k`: the same positions in
the same order, ties and masked keys included, and used only where TF can run it."""

import contextlib

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdattn import SparseDenseMultiHeadAttention
from sdattn import selectors as selectors_lib
from sdattn.selectors import cpu_top_k
from tests.cases import random_case, stable_seed

_KINDS = ("normal", "few levels", "mostly masked", "increasing", "decreasing", "constant")


def _scores(rng, shape, kind, dtype):
    if kind == "normal":
        scores = rng.normal(size=shape)
    elif kind == "few levels":  # many ties
        scores = rng.integers(0, 4, size=shape).astype(float)
    elif kind == "mostly masked":  # often fewer than k finite scores
        scores = np.where(rng.random(shape) < 0.9, -np.inf, rng.normal(size=shape))
    elif kind in ("increasing", "decreasing"):  # the worst orders for a running bound
        scores = np.sort(rng.normal(size=shape), axis=-1)
        scores = scores if kind == "increasing" else scores[..., ::-1]
    else:
        scores = np.full(shape, 0.5)
    return np.ascontiguousarray(scores.astype(dtype))


def _check_equals_tf_top_k(scores, k, top_k_of=cpu_top_k.top_k_numpy):
    values, indices = top_k_of(scores, k)
    expected = tf.math.top_k(scores, k)
    np.testing.assert_array_equal(indices, expected.indices.numpy())
    np.testing.assert_array_equal(values, expected.values.numpy())
    assert values.dtype == scores.dtype and indices.dtype == np.int32


@contextlib.contextmanager
def _kernel_enabled(enabled):
    before = cpu_top_k.is_enabled()
    cpu_top_k.set_enabled(enabled)
    try:
        yield
    finally:
        cpu_top_k.set_enabled(before)


# Both ways `top_k_numpy` ranks a call's rows: the compiled kernel, and (up to 16K scores) a
# stable argsort.
_PATHS = {"compiled": cpu_top_k._compiled_top_k, "sorted": cpu_top_k._sorted_top_k}


@pytest.fixture(params=["compiled", "sorted"])
def path(request, monkeypatch):
    """Makes `top_k_numpy` take one path whatever the input size."""
    monkeypatch.setattr(cpu_top_k, "_SORT_MAX_SCORES", 0 if request.param == "compiled" else 2**62)
    return request.param


@pytest.mark.parametrize("path_name", sorted(_PATHS))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_both_paths_equal_tf_top_k(path_name, data):
    num_keys = data.draw(st.integers(4, 700), label="n")
    k = data.draw(st.integers(1, num_keys // 4), label="k")
    rows = data.draw(st.integers(1, 160), label="rows")  # from 128 rows, split over threads
    kind = data.draw(st.sampled_from(_KINDS), label="kind")
    dtype = data.draw(st.sampled_from(["float32", "float64"]), label="dtype")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    scores = _scores(rng, (rows, num_keys), kind, dtype)
    _check_equals_tf_top_k(scores, k, _PATHS[path_name])


@pytest.mark.parametrize("shape,k", [((2, 8, 215, 4096), 32), ((1, 1, 3, 16384), 128), ((2, 1, 70, 1001), 250),
                                     ((2, 4, 64, 1024), 8)])
def test_kernel_equals_tf_top_k_at_selection_sizes(shape, k):
    """The shapes `dot` and `cosine` select over (N = 4,096 per head; a shared 16K block), a row
    length no group count divides, and a small k (fewer than 64 super groups: every group is
    looked at for candidates): all above 16K scores, so compiled."""
    rng = np.random.default_rng(stable_seed(shape, k))
    scores = _scores(rng, shape, "normal", "float32")
    scores[..., rng.random(shape[-1]) < 0.1] = -np.inf
    _check_equals_tf_top_k(scores, k)


def test_nan_scores_still_give_distinct_valid_positions(path):
    """NaN has no order (nor has it in `tf.math.top_k`), but the positions must stay usable."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(6, 200)).astype("float32")
    scores[0, 3] = np.nan
    scores[1] = np.nan
    scores[2, ::2] = np.nan
    values, indices = cpu_top_k.top_k_numpy(scores, 16)
    assert indices.min() >= 0 and indices.max() < 200
    assert all(len(set(row)) == 16 for row in indices)
    np.testing.assert_array_equal(values, np.take_along_axis(scores, indices, -1))


def _uses_kernel(function, *args):
    graph = function.get_concrete_function(*args).graph
    return any(op.type in ("PyFunc", "PyFuncStateless", "EagerPyFunc") for op in graph.get_operations())


def test_masked_top_k_equals_tf_in_graph_and_eager_with_the_same_gradient(path):
    rng = np.random.default_rng(1)
    scores = tf.constant(_scores(rng, (2, 3, 5, 256), "few levels", "float32"))
    weights = tf.constant(rng.normal(size=(2, 3, 5, 8)).astype("float32"))

    def loss_and_indices(top_k, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            values, indices = top_k(x)
            loss = tf.reduce_sum(values * weights)
        return loss, indices, tape.gradient(loss, x)

    expected = loss_and_indices(lambda x: tf.math.top_k(x, 8), scores)
    graph = tf.function(lambda x: loss_and_indices(lambda y: selectors_lib.masked_top_k(y, 8), x))
    assert _uses_kernel(graph, scores)
    for got in (loss_and_indices(lambda x: selectors_lib.masked_top_k(x, 8), scores), graph(scores)):
        for got_part, expected_part in zip(got, expected):
            np.testing.assert_array_equal(got_part.numpy(), expected_part.numpy())


def test_kernel_is_used_only_where_tf_can_run_it():
    """Not for short rows, half precision, inside XLA, or when turned off; XLA still works."""
    def applies(shape, dtype="float32", k=8):
        return cpu_top_k.applies(tf.zeros(shape, dtype), k)

    assert applies((2, 32)) and applies((2, 32), "float64")
    assert not applies((2, 31))  # n < 4·k: TF's top_k is cheap there
    assert not applies((2, 64), "float16")
    with _kernel_enabled(False):
        assert not applies((2, 64))
    scores = tf.constant(np.random.default_rng(2).normal(size=(4, 256)).astype("float32"))
    xla = tf.function(lambda x: selectors_lib.masked_top_k(x, 8), jit_compile=True)
    assert not _uses_kernel(xla, scores)
    np.testing.assert_array_equal(xla(scores)[1].numpy(), tf.math.top_k(scores, 8).indices.numpy())


def test_dot_layer_is_the_same_with_and_without_the_kernel(path):
    """Exact per-head selection over 64 keys with top_k = 8 goes through the kernel; turned off,
    the layer must give the same output, scores and indices, with and without `tf.function`."""
    rng = np.random.default_rng(3)
    query, value = random_case(rng, 2, 6, 64, 12, 10)
    layer = SparseDenseMultiHeadAttention(4, 8, 8, selector="dot")
    sparse = tf.sparse.from_dense(query)
    graph_call = tf.function(lambda q, v: layer(q, v, return_attention_scores=True))
    with _kernel_enabled(True):
        with_kernel = [layer(sparse, value, return_attention_scores=True), graph_call(sparse, value)]
    graph_call = tf.function(lambda q, v: layer(q, v, return_attention_scores=True))
    with _kernel_enabled(False):
        without = [layer(sparse, value, return_attention_scores=True), graph_call(sparse, value)]
    for got, expected in zip(with_kernel, without):
        for got_part, expected_part in zip(got, expected):
            np.testing.assert_array_equal(got_part.numpy(), expected_part.numpy())
