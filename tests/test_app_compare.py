"""AppTest for app_pages/compare.py: the metrics table, diff map, histograms, k-sweep, head agreement
and worst queries agree with sdattn.reference and sdattn.metrics computed here, setting by setting."""

import numpy as np
import pytest

from app_cases import chart, open_app
from sdattn import comparison, inputs, metrics, reference
from ui import figures
from sdattn import weights as weights_lib
from ui import comparison_views, detail, params, runner

TIMEOUT = 90  # the first run imports TensorFlow
HEADS, KEY_DIM = params.DEFAULT_HEADS, params.DEFAULT_KEY_DIM


@pytest.fixture
def app():
    return open_app("app_pages/compare.py", timeout=TIMEOUT)


def table_with(at, column):
    """The displayed dataframe that has this column (display tables expose no key)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def exact(kind=params.DEFAULT_KIND, weights_kind=params.DEFAULT_WEIGHTS, heads=HEADS):
    """Item 0 of the default example, its weights as the app draws them, and exact attention."""
    full = inputs.generate_inputs(kind, seed=0)
    weights = weights_lib.make_weights(weights_kind, full, heads, KEY_DIM, seed=0)
    example = full.item(0)
    mask = reference.combined_mask(1, example.num_queries, example.num_keys,
                                   example.query_mask, example.value_mask)
    _, dense_weights, logits = reference.dense_attention(
        example.dense_query(), example.value, weights, attention_mask=mask)
    return example, weights, dense_weights[0], logits[0], mask[0, 0]  # [H, M, N], [M, N]


def selected_sets(indices):
    """`[H][M]` Python sets of the valid selected keys of `indices` `[H, M, k]`."""
    return [[set(row[row >= 0].tolist()) for row in head] for head in indices]


def top_mass(dense_weights, k):
    """Mean over (head, query) of the k largest dense weights: what exact top-k captures."""
    ranked = -np.sort(-dense_weights, axis=-1)  # [H, M, N]
    return ranked[..., :k].sum(axis=-1).mean()


# ----------------------------------------------------------------------------- default view


def test_compare_page_draws_every_view_with_stable_keys(app):
    assert app.title[0].value == "Compare selectors"
    assert [c.key for c in app.get("plotly_chart")] == [
        "diff_map", "metric_histograms", "k_sweep", "head_agreement", "compare_detail_ranked"]
    assert app.multiselect(key=params.SELECTORS).value == list(params.DEFAULT_SELECTORS)
    for kind in ("selectbox", "slider", "select_slider", "number_input", "radio", "multiselect"):
        for widget in getattr(app, kind):
            assert widget.key and not widget.key.startswith("$$"), (kind, widget.label)
    assert not app.error and not app.warning


def test_summary_table_matches_exact_attention(app):
    example, _, dense_weights, logits, valid = exact()
    table = table_with(app, "attention_mass")
    assert table["selector"].tolist() == list(params.DEFAULT_SELECTORS)
    k = params.DEFAULT_TOP_K
    dot = table.set_index("selector").loc["dot"]
    assert dot["recall_at_k"] == pytest.approx(1.0)  # exact per-head top-k, by construction
    assert dot["attention_mass"] == pytest.approx(top_mass(dense_weights, k), abs=1e-5)
    # random keeps k of N keys: with aligned weights it captures far less mass than dot.
    assert table.set_index("selector").loc["random", "attention_mass"] < 0.5 * dot["attention_mass"]


def test_diff_map_codes_cells_by_which_selector_picked_them(app):
    example, weights, *_ = exact()
    runs = comparison.run_selectors(example, ["cosine", "dot"], params.DEFAULT_TOP_K, HEADS,
                                    KEY_DIM, seed=0, weights=weights, repeats=0)
    picked_a, picked_b = (selected_sets(run.indices[0])[0] for run in runs)  # head 0
    z = np.asarray(chart(app, "diff_map")["data"][0]["z"], float)
    assert z.shape == (example.num_queries, example.num_keys)
    for query in range(example.num_queries):
        assert set(np.flatnonzero(z[query] == 1)) == picked_a[query] - picked_b[query]
        assert set(np.flatnonzero(z[query] == 2)) == picked_b[query] - picked_a[query]
        assert set(np.flatnonzero(z[query] == 3)) == picked_a[query] & picked_b[query]
    assert "cosine vs dot, head 0" in chart(app, "diff_map")["layout"]["title"]["text"]


def test_head_agreement_and_histograms_follow_the_selections(app):
    example, weights, *_ = exact()
    spec = chart(app, "head_agreement")
    assert [t["name"] for t in spec["data"]] == list(params.DEFAULT_SELECTORS)
    shared = np.asarray(spec["data"][0]["z"], float)  # cosine: one selection for every head
    np.testing.assert_allclose(shared, np.ones((HEADS, HEADS)))
    dot = comparison.run_selector(example, "dot", params.DEFAULT_TOP_K, HEADS, KEY_DIM,
                                  weights=weights, repeats=0)
    sets = selected_sets(dot.indices[0])
    by_hand = np.array([[np.mean([len(sets[i][m] & sets[j][m]) / len(sets[i][m] | sets[j][m])
                                  for m in range(example.num_queries)])
                         for j in range(HEADS)] for i in range(HEADS)])
    np.testing.assert_allclose(np.asarray(spec["data"][1]["z"], float), by_hand, atol=1e-6)

    histograms = chart(app, "metric_histograms")["data"]
    recall_dot = np.asarray(histograms[1]["x"], float)
    assert histograms[1]["name"] == "dot" and recall_dot.size == HEADS * example.num_queries
    assert (recall_dot == 1.0).all()


# ----------------------------------------------------------------------------- controls


def test_changing_selectors_and_pair_redraws_table_and_diff_map(app):
    app.multiselect(key=params.SELECTORS).set_value(["window", "dot"]).run()
    assert not app.exception
    assert table_with(app, "attention_mass")["selector"].tolist() == ["window", "dot"]
    example, weights, *_ = exact()
    z = np.asarray(chart(app, "diff_map")["data"][0]["z"], float)
    window = comparison.run_selector(example, "window", params.DEFAULT_TOP_K, HEADS, KEY_DIM,
                                     weights=weights, repeats=0)
    picked = selected_sets(window.indices[0])[0]
    # A (cosine) left the list, so it falls back to the first selector; B is then dot.
    assert app.selectbox(key=params.SELECTOR_A).value == "window"
    assert app.selectbox(key=params.SELECTOR_B).value == "dot"
    for query in range(example.num_queries):  # window's keys are A's: "A only" or "both"
        assert set(np.flatnonzero((z[query] == 1) | (z[query] == 3))) == picked[query]
    names = [t["name"] for t in chart(app, "diff_map")["data"][1:]]
    assert names[0].startswith("window only") and names[1].startswith("dot only")

    app.selectbox(key=params.SELECTOR_A).set_value("dot").run()  # B cannot equal A
    assert app.selectbox(key=params.SELECTOR_B).options == ["window"]
    assert app.selectbox(key=params.SELECTOR_B).value == "window"

    app.multiselect(key=params.SELECTORS).set_value(["dot"]).run()
    assert any("at least two" in i.value for i in app.info)
    assert not app.get("plotly_chart")


def test_changing_k_updates_table_and_k_sweep_consistently(app):
    app.slider(key=params.TOP_K).set_value(8).run()
    assert not app.exception
    _, _, dense_weights, _, _ = exact()
    table = table_with(app, "attention_mass").set_index("selector")
    assert table.loc["dot", "attention_mass"] == pytest.approx(top_mass(dense_weights, 8), abs=1e-5)
    sweep = chart(app, "k_sweep")
    assert [s["x0"] for s in sweep["layout"]["shapes"]] == [8, 8]
    mass_lines = [t for t in sweep["data"] if t["xaxis"] == "x2"]
    dot_mass = next(t for t in mass_lines if t["name"] == "dot")
    ks = np.asarray(dot_mass["x"], int)
    assert list(ks) == list(runner.sweep_ks(dense_weights.shape[-1], 8))
    np.testing.assert_allclose(np.asarray(dot_mass["y"], float),
                               [top_mass(dense_weights, k) for k in ks], atol=1e-5)
    recall_lines = [t for t in sweep["data"] if t["xaxis"] == "x"]
    for line in recall_lines:  # every selector finds every key at k = N
        assert np.asarray(line["y"], float)[-1] == pytest.approx(1.0)


def test_random_weights_make_every_selector_capture_about_k_over_n(app):
    app.radio(key=params.WEIGHTS).set_value("random").run()
    example, weights, dense_weights, _, _ = exact(weights_kind="random")
    table = table_with(app, "attention_mass").set_index("selector")
    share = params.DEFAULT_TOP_K / example.num_keys
    assert table["attention_mass"].between(0.7 * share, 1.3 * share).all()  # flat softmax
    expected = comparison.compare_selectors(example, list(params.DEFAULT_SELECTORS),
                                            params.DEFAULT_TOP_K, HEADS, KEY_DIM, seed=0,
                                            weights=weights, repeats=0).set_index("selector")
    np.testing.assert_allclose(table["recall_at_k"], expected["recall_at_k"], atol=1e-6)
    np.testing.assert_allclose(table["output_rel_error"], expected["output_rel_error"], atol=1e-5)


# ----------------------------------------------------------------------------- worst queries


def test_worst_queries_are_ranked_by_mass_and_open_the_detail(app):
    example, _, dense_weights, _, valid = exact()
    worst = table_with(app, "label")
    cosine = comparison.run_selector(example, "cosine", params.DEFAULT_TOP_K, HEADS, KEY_DIM,
                                     weights=exact()[1], repeats=0)
    sets = selected_sets(cosine.indices[0])  # A = cosine: its mass summed from the dense weights
    mass = np.array([np.mean([dense_weights[h, m, sorted(sets[h][m])].sum()
                              for h in range(HEADS)]) for m in range(example.num_queries)])
    assert worst["query"].tolist() == list(np.argsort(mass, kind="stable"))
    np.testing.assert_allclose(worst["cosine mass"], mass[worst["query"]], atol=1e-5)
    # B = dot's exact top-k captures the k largest weights of each query.
    k = params.DEFAULT_TOP_K
    best = (-np.sort(-dense_weights, axis=-1))[..., :k].sum(axis=-1).mean(axis=0)  # [M]
    np.testing.assert_allclose(worst["dot mass"], best[worst["query"]], atol=1e-5)
    assert worst["query"].tolist() != list(range(example.num_queries))

    app.radio(key=params.WORST_BY).set_value("output_rel_error").run()
    errors = table_with(app, "label")["cosine output error"].to_numpy()
    assert (np.diff(errors) <= 0).all()  # highest error first

    worst_query = int(table_with(app, "label")["query"].iloc[0])
    app.selectbox(key=params.QUERY).set_value(worst_query).run()
    labels = figures.axis_labels(example.query_labels, example.num_queries, "q")
    assert labels[worst_query] in chart(app, "compare_detail_ranked")["layout"]["title"]["text"]


def test_worst_table_row_selection_maps_rows_to_queries(monkeypatch):
    state = {"worst_queries": {"selection": {"rows": [1], "columns": []}}}
    monkeypatch.setattr(detail.st, "session_state", state)
    detail.select_from_table("worst_queries", [5, 2, 7])()
    assert state[params.QUERY] == 2


def test_worst_queries_frame_leaves_masked_queries_out():
    full = inputs.generate_inputs("variable_length", seed=0)
    example = full.item(0)
    runs = comparison.run_selectors(example, ["dot", "random"], 4, 2, 8, repeats=0)
    frame = comparison_views.worst_queries_frame(example, runs[0], runs[1], "attention_mass")
    valid = np.flatnonzero(example.query_mask[0])
    assert sorted(frame["query"]) == sorted(valid.tolist())[:comparison_views.MAX_WORST_ROWS]
    assert list(frame.columns[:2]) == ["query", "label"]
    mass = metrics.mean_of_defined(runs[1].mass[0], axis=0)  # [M], random's
    np.testing.assert_allclose(frame["random mass"], mass[frame["query"]], atol=1e-9)


def test_oversized_inputs_are_refused_with_a_message():
    assert comparison_views.dense_budget_problem(64, 64, 4) is None
    message = comparison_views.dense_budget_problem(1000, 4000, 8)
    assert "32,000,000" in message


def test_sweep_ks_keep_one_n_and_the_page_k():
    assert runner.sweep_ks(48, 4) == (1, 2, 4, 8, 16, 32, 48)
    assert runner.sweep_ks(48, 5) == (1, 2, 4, 5, 8, 16, 32, 48)
    many = runner.sweep_ks(4096, 100)
    assert many[0] == 1 and many[-1] == 4096 and 100 in many and len(many) <= 10
