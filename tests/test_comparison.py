"""Tests of compare_selectors and the selector behaviour it measures: dot is exact, random is about
k/N, raw-space similarity finds planted neighbours; every number is checked against NumPy."""

import math

import numpy as np
import pandas as pd
import pytest

from sdattn import comparison, reference
from sdattn.comparison import compare_selectors, k_sweep_table, per_query_table, run_selector, run_selectors
from cases import SELECTORS as ALL_SELECTORS, SHARED_SELECTORS
from sdattn.inputs import generate_inputs


@pytest.fixture(scope="module")
def masked_example():
    """Padded queries and keys (variable lengths), no ground truth."""
    return generate_inputs("variable_length", seed=3, batch_size=2, num_queries=6, num_keys=24,
                           query_dim=12, value_dim=8)


@pytest.fixture(scope="module")
def planted_example():
    return generate_inputs("planted", seed=4, batch_size=2, num_queries=8, num_keys=64, dim=32,
                           relevant_per_query=4, noise=0.05)


def identity_weights(dim, heads):
    """Attention weights whose per-head logits are the raw q·k / sqrt(dim)."""
    identity = np.stack([np.eye(dim, dtype="float32")] * heads, axis=1)  # [D, H, D]
    zeros = np.zeros((heads, dim), "float32")
    output_kernel = np.transpose(identity, (1, 0, 2)) / heads  # [H, D, D]
    return [identity, zeros, identity, zeros, identity, zeros, output_kernel, np.zeros(dim, "float32")]


# ---- selector behaviour (issue 5 acceptance) ---------------------------------------------------

def test_dot_recall_at_k_is_one_by_construction(masked_example):
    run = run_selector(masked_example, "dot", 5, 2, 4, seed=1, repeats=0)
    dense = comparison.dense_reference(masked_example, comparison.attention_weights(masked_example, 2, 4, seed=1))
    exact = reference.exact_top_k(dense.logits, 5, dense.mask)
    # The same sets as NumPy's exact top-k over the valid keys...
    assert [set(r[r >= 0]) for r in run.indices.reshape(-1, 5)] == [set(r[r >= 0]) for r in exact.reshape(-1, 5)]
    # ...so recall is 1 wherever a query has a valid key, and undefined (NaN) on padded queries.
    query_valid = np.broadcast_to(masked_example.query_mask[:, None, :], run.recall.shape)
    has_valid_key = query_valid & masked_example.value_mask.any(-1)[:, None, None]
    np.testing.assert_array_equal(run.recall[has_valid_key], 1.0)
    assert np.isnan(run.recall[~has_valid_key]).all()
    assert (~query_valid).any()  # the example does pad some queries


def test_random_recall_and_mass_average_about_k_over_n():
    example = generate_inputs("random", seed=5, batch_size=4, num_queries=32, num_keys=64,
                              query_dim=16, value_dim=16)
    run = run_selector(example, "random", 8, 2, 8, seed=5, repeats=0)
    # A uniform k-subset of N keys holds k/N of the exact top-k and, in expectation, of the mass.
    # Standard error here is about 0.01 (128 independent queries), so 0.04 is a wide tolerance.
    assert abs(np.nanmean(run.recall) - 8 / 64) < 0.04
    assert abs(np.nanmean(run.mass) - 8 / 64) < 0.04


def test_on_low_noise_planted_data_cosine_and_dot_beat_random_widely(planted_example):
    # dot ranks by projected q·k; with identity kernels that is the raw dot product, which is
    # what planting makes meaningful (random projections scramble it, so they are not tested).
    weights = identity_weights(32, 2)
    runs = run_selectors(planted_example, ["cosine", "dot", "random"], 4, 2, 32, seed=6,
                         weights=weights, repeats=0)
    truth = planted_example.ground_truth
    recall = {}
    for run in runs:
        # Independent ground-truth recall: the share of each query's planted keys selected.
        found = [len(set(run.indices[b, h, m]) & set(truth[b, m])) / 4
                 for b in range(2) for h in range(2) for m in range(8)]
        recall[run.label] = np.mean(found)
        np.testing.assert_allclose(np.nanmean(run.ground_truth_recall), recall[run.label])
    assert recall["cosine"] >= 0.9 and recall["dot"] >= 0.9
    assert recall["random"] <= 0.3
    assert min(recall["cosine"], recall["dot"]) - recall["random"] >= 0.6


# ---- compare_selectors -------------------------------------------------------------------------

def test_compare_selectors_table_shape_and_ranges(masked_example):
    table = compare_selectors(masked_example, ALL_SELECTORS + [{"name": "hybrid", "window_fraction": 0.25}],
                              top_k=5, num_heads=2, key_dim=4, seed=0, repeats=2)
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == comparison.SUMMARY_COLUMNS
    assert list(table["selector"]) == ALL_SELECTORS + ["hybrid (2)"]
    assert (table["k"] == 5).all() and (table["num_keys"] == 24).all() and (table["num_heads"] == 2).all()
    for column in ["recall_at_k", "attention_mass", "head_agreement"]:
        assert table[column].between(0, 1).all(), column
    assert table["ground_truth_recall"].isna().all()  # no ground truth in this example
    assert (table["time_ms"] > 0).all()
    shared = table.set_index("selector").loc[SHARED_SELECTORS]
    np.testing.assert_array_equal(shared["head_agreement"], 1.0)  # one selection for all heads
    assert not shared["per_head"].any()
    assert table.set_index("selector").loc["dot", "recall_at_k"] == 1.0


@pytest.mark.parametrize("selector", ALL_SELECTORS)
def test_with_top_k_at_least_n_every_selector_is_exact(selector, masked_example):
    run = run_selector(masked_example, selector, 30, 2, 4, seed=2, repeats=0)
    summary = run.summary()
    assert summary["k"] == 24
    assert summary["recall_at_k"] == 1.0
    assert summary["attention_mass"] == pytest.approx(1.0, abs=1e-9)
    assert summary["output_rel_error"] < 1e-4


@pytest.mark.parametrize("selector", ALL_SELECTORS)
def test_run_output_and_metrics_agree_with_the_numpy_reference(selector, planted_example):
    weights = comparison.attention_weights(planted_example, 2, 8, seed=7)
    run = run_selector(planted_example, selector, 6, 2, 8, seed=7, weights=weights, repeats=0)
    query, value = planted_example.dense_query(), planted_example.value
    expected_output, expected_scores = reference.selected_attention(query, value, weights, run.indices)
    np.testing.assert_allclose(run.output, expected_output, atol=1e-5)
    np.testing.assert_allclose(run.scores, expected_scores, atol=1e-5)
    dense_output, dense_weights, _ = reference.dense_attention(query, value, weights)
    error = np.linalg.norm(run.output - dense_output, axis=-1) / np.linalg.norm(dense_output, axis=-1)
    np.testing.assert_allclose(run.output_error, error, rtol=1e-4)
    mass = np.take_along_axis(dense_weights, run.indices, axis=-1).sum(-1)  # no masks, no -1 slots
    np.testing.assert_allclose(run.mass, mass, atol=1e-9)


def test_a_trained_selector_instance_is_compared_with_its_weights(planted_example):
    from sdattn.selectors.learned import LearnedSelector
    from sdattn.layer import SparseDenseMultiHeadAttention

    rng = np.random.default_rng(8)
    trained = LearnedSelector(rank=2, seed=0)
    SparseDenseMultiHeadAttention(2, 8, 4, selector=trained)(
        planted_example.to_sparse_tensor(), planted_example.value)
    query_factor, key_factor = (rng.normal(size=w.shape).astype("float32") for w in trained.get_weights())
    trained.set_weights([query_factor, key_factor])
    weights = comparison.attention_weights(planted_example, 2, 8, seed=8)
    run = run_selector(planted_example, trained, 4, 2, 8, weights=weights, repeats=0)
    _, _, logits = reference.dense_attention(planted_example.dense_query(), planted_example.value, weights)
    query = planted_example.dense_query()
    relevance = logits.mean(1) + np.einsum("bmr,bnr->bmn", query @ query_factor,
                                           planted_example.value @ key_factor)
    expected = np.sort(np.argsort(-relevance, -1)[..., :4], -1)
    np.testing.assert_array_equal(np.sort(run.indices[:, 0], -1), expected)


def test_runs_are_reproducible_for_seedable_selectors(masked_example):
    first = compare_selectors(masked_example, ["random", "lsh", "learned"], 4, 2, 4, seed=3, repeats=0)
    again = compare_selectors(masked_example, ["random", "lsh", "learned"], 4, 2, 4, seed=3, repeats=0)
    pd.testing.assert_frame_equal(first, again)


def test_k_sweep_table_reruns_every_k(masked_example):
    table = k_sweep_table(masked_example, ["dot", "hybrid"], [1, 4, 40], 2, 4, seed=0)
    assert len(table) == 6 and "time_ms" not in table.columns
    dot = table[table["selector"] == "dot"]
    np.testing.assert_array_equal(dot["k"], [1, 4, 24])
    np.testing.assert_array_equal(dot["recall_at_k"], 1.0)
    assert dot["attention_mass"].is_monotonic_increasing
    hybrid = table[table["selector"] == "hybrid"]
    assert hybrid["attention_mass"].iloc[-1] == pytest.approx(1.0)


def test_k_sweep_table_with_one_layer_per_selector_equals_a_layer_built_for_each_k(masked_example):
    """The sweep builds each selector's layer once and passes each k to its calls; every row is
    what a layer built with that k measures."""
    ks = [1, 3, 24]
    table = k_sweep_table(masked_example, ALL_SELECTORS, ks, 2, 4, seed=0)
    metrics = ["recall_at_k", "attention_mass", "output_rel_error", "head_agreement"]
    for selector in ALL_SELECTORS:
        swept = table[table["selector"] == selector].reset_index(drop=True)
        fresh = pd.DataFrame([run_selector(masked_example, selector, k, 2, 4, seed=0, repeats=0).summary()
                              for k in ks])
        np.testing.assert_array_equal(swept["k"], fresh["k"])
        np.testing.assert_allclose(swept[metrics].to_numpy(float), fresh[metrics].to_numpy(float),
                                   rtol=1e-5, atol=1e-6, err_msg=selector)


def test_per_query_table_has_one_row_per_query(planted_example):
    run = run_selector(planted_example, "cosine", 4, 2, 8, repeats=0)
    table = per_query_table(run, planted_example.query_labels)
    assert len(table) == 2 * 8
    assert list(table["query_label"][:8]) == list(planted_example.query_labels)
    np.testing.assert_allclose(table["recall_at_k"], run.recall.mean(1).ravel())
    np.testing.assert_allclose(table["ground_truth_recall"], run.ground_truth_recall.mean(1).ravel())
    worst = table.nsmallest(3, "attention_mass")
    assert (worst["attention_mass"].values <= table["attention_mass"].median()).all()


@pytest.mark.parametrize("kwargs,pattern", [
    ({"top_k": 0}, r"`top_k`.*top_k=0"),
    ({"num_heads": 0}, r"`num_heads`.*num_heads=0"),
    ({"selectors": []}, r"`selectors`.*selectors=\[\]"),
    ({"selectors": ["nearest"]}, r"`selector`.*selector='nearest'"),
])
def test_errors_name_the_argument_and_value(kwargs, pattern, masked_example):
    arguments = {"selectors": ["dot"], "top_k": 3, "num_heads": 2, "key_dim": 4, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        compare_selectors(masked_example, **arguments)


def test_missing_ground_truth_is_nan_not_an_error(masked_example):
    run = run_selector(masked_example, "window", 3, 1, 4, repeats=0)
    assert run.ground_truth_recall is None
    assert math.isnan(run.summary()["ground_truth_recall"])
    assert math.isnan(run.summary()["head_agreement"])  # one head: nothing to agree with
