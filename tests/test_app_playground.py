"""AppTest for app.py and the playground page: widgets change the figures' decoded JSON as the
NumPy reference says they should, and bad uploads end in st.error, never in an exception."""

import io

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app_cases import chart, open_app
from sdattn import inputs, reference
from ui import figures
from sdattn import weights as weights_lib
from ui import detail, export, params, runner

TIMEOUT = 60  # the first run imports TensorFlow


@pytest.fixture
def app():
    return open_app(timeout=TIMEOUT)


def heatmap_grids(at):
    """`[H, M, N]` weights drawn by the per-head heatmaps (NaN where nothing is drawn)."""
    spec = chart(at, "head_heatmaps")
    return np.stack([np.asarray(t["z"], float) for t in spec["data"] if t["type"] == "heatmap"])


def reference_logits(kind, settings, item=0, weights_kind=params.DEFAULT_WEIGHTS, **gen_params):
    """The exact scores `[H, M, N]` of the app's default example, from `sdattn.reference`.

    The weights are drawn from the whole example (aligned ones calibrate on batch item 0), as
    the app draws them, by the library function the Weights control names.
    """
    full = inputs.generate_inputs(kind, seed=0, **gen_params)
    example = full.item(item)
    drawn = {"aligned": weights_lib.aligned_weights, "random": weights_lib.random_weights}
    weights = drawn[weights_kind](full, settings["heads"], settings["key_dim"], seed=0)
    mask = reference.combined_mask(1, example.num_queries, example.num_keys,
                                   example.query_mask, example.value_mask)
    _, _, logits = reference.dense_attention(example.dense_query(), example.value, weights,
                                             attention_mask=mask)
    return example, logits[0], mask[0, 0]


def assert_weights_match_reference(grid, logits, valid):
    """Each drawn row holds the softmax of the reference scores over exactly its drawn keys."""
    for head in range(grid.shape[0]):
        for query in range(grid.shape[1]):
            drawn = np.isfinite(grid[head, query])
            assert valid[query][drawn].all(), "a masked key was selected"
            if drawn.any():
                scores = logits[head, query, drawn]
                expected = np.exp(scores - scores.max())
                np.testing.assert_allclose(
                    grid[head, query, drawn], expected / expected.sum(), atol=2e-5)


# ----------------------------------------------------------------------------- app.py


def test_app_opens_the_playground_with_device_line_and_both_views(app):
    assert app.title[0].value == "Playground"
    assert any("TensorFlow device:" in c.value for c in app.sidebar.caption)
    keys = [c.key for c in app.get("plotly_chart")]
    assert keys == ["selection_view", "head_heatmaps", "detail_ranked"]
    assert [b.key for b in app.get("download_button")] == [
        "download_csv", "download_npz", "download_bundle"]
    assert not app.error


def test_every_widget_has_a_stable_key(app):
    for kind in ("selectbox", "slider", "select_slider", "number_input", "radio"):
        for widget in getattr(app, kind):
            assert widget.key and not widget.key.startswith("$$"), (kind, widget.label)


# ----------------------------------------------------------------------------- default run


def test_default_view_is_exact_dot_top_k_with_reference_weights(app):
    settings = {"heads": params.DEFAULT_HEADS, "key_dim": params.DEFAULT_KEY_DIM}
    example, logits, valid = reference_logits(params.DEFAULT_KIND, settings)
    grid = heatmap_grids(app)
    k = params.DEFAULT_TOP_K
    assert grid.shape == (settings["heads"], example.num_queries, example.num_keys)
    assert (np.isfinite(grid).sum(axis=(1, 2)) == example.num_queries * k).all()
    expected = reference.exact_top_k(logits[None], k, valid[None, None])[0]  # [H, M, k]
    for head in range(grid.shape[0]):
        for query in range(grid.shape[1]):
            assert set(np.flatnonzero(np.isfinite(grid[head, query]))) == set(expected[head, query])
    assert_weights_match_reference(grid, logits, valid)
    spec = chart(app, "head_heatmaps")
    assert spec["data"][0]["x"] == figures.axis_labels(example.key_labels, example.num_keys, "k")
    assert spec["data"][0]["y"] == figures.axis_labels(
        example.query_labels, example.num_queries, "q")


# ----------------------------------------------------------------------------- controls


def test_default_aligned_weights_are_peaked_and_random_ones_nearly_uniform(app):
    settings = {"heads": params.DEFAULT_HEADS, "key_dim": params.DEFAULT_KEY_DIM}
    k = params.DEFAULT_TOP_K
    aligned = heatmap_grids(app)
    # Aligned scores spread by about 2, so the best of the k selected keys takes clearly more
    # than its uniform share 1/k (random weights stay within a few percent of it).
    assert np.nanmean(np.nanmax(aligned, axis=-1)) > 1.3 / k
    assert not any("close to uniform" in c.value for c in app.caption)

    app.radio(key=params.WEIGHTS).set_value("random").run()
    assert not app.exception
    _, logits, valid = reference_logits(params.DEFAULT_KIND, settings, weights_kind="random")
    grid = heatmap_grids(app)
    assert_weights_match_reference(grid, logits, valid)
    assert np.nanmax(np.abs(grid - 1 / k)) < 0.05  # Glorot scores are tiny: nearly uniform
    assert any("close to uniform" in c.value for c in app.caption)


def test_changing_k_redraws_m_times_k_cells_per_head(app):
    app.slider(key=params.TOP_K).set_value(2).run()
    grid = heatmap_grids(app)
    assert (np.isfinite(grid).sum(axis=(1, 2)) == grid.shape[1] * 2).all()
    ranked = chart(app, "detail_ranked")
    assert all(line["x0"] == 2.5 for line in ranked["layout"]["shapes"])  # the k cut-off moved
    assert any(a["text"] == "k = 2" for a in ranked["layout"]["annotations"])


def test_changing_heads_changes_facets_titles_and_colour_counts(app):
    app.select_slider(key=params.HEADS).set_value(2).run()
    spec = chart(app, "head_heatmaps")
    assert len([t for t in spec["data"] if t["type"] == "heatmap"]) == 2
    assert [a["text"] for a in spec["layout"]["annotations"]] == ["head 0", "head 1"]
    assert "2 heads" in spec["layout"]["title"]["text"]
    selection = chart(app, "selection_view")
    assert selection["data"][0]["zmax"] == 2.5  # colour scale counts up to 2 heads
    example, logits, valid = reference_logits(params.DEFAULT_KIND,
                                              {"heads": 2, "key_dim": params.DEFAULT_KEY_DIM})
    assert_weights_match_reference(heatmap_grids(app), logits, valid)


def test_changing_key_dim_changes_weights_to_the_new_reference(app):
    app.select_slider(key=params.KEY_DIM).set_value(4).run()
    _, logits, valid = reference_logits(params.DEFAULT_KIND,
                                        {"heads": params.DEFAULT_HEADS, "key_dim": 4})
    assert_weights_match_reference(heatmap_grids(app), logits, valid)


def test_window_selector_picks_the_keys_nearest_each_query_position(app):
    app.selectbox(key=params.SELECTOR).set_value("window").run()
    assert any("nearest" in c.value for c in app.sidebar.caption)  # its one-line description
    grid = heatmap_grids(app)
    _, num_queries, num_keys = grid.shape
    k = params.DEFAULT_TOP_K
    for query in range(num_queries):
        centre = round(query * (num_keys - 1) / max(num_queries - 1, 1))
        distance = np.abs(np.arange(num_keys) - centre)
        nearest = set(np.argsort(distance, kind="stable")[:k])  # ties: lower index first
        for head in range(grid.shape[0]):  # shared by all heads
            assert set(np.flatnonzero(np.isfinite(grid[head, query]))) == nearest
    # Every head selects the same keys, so every selected cell is selected by all 4 heads.
    counts = np.asarray(chart(app, "selection_view")["data"][0]["z"], float)
    assert set(np.unique(counts[np.isfinite(counts)])) == {params.DEFAULT_HEADS}


def test_changing_kind_relabels_axes_and_draws_ground_truth(app):
    app.selectbox(key=params.KIND).set_value("planted").run()
    example = inputs.generate_inputs("planted", seed=0)
    spec = chart(app, "selection_view")
    assert spec["data"][0]["y"] == figures.axis_labels(
        example.query_labels, example.num_queries, "q")
    assert spec["data"][0]["x"] == figures.axis_labels(example.key_labels, example.num_keys, "k")
    size = f"{example.num_queries} queries × {example.num_keys} keys"
    assert size in spec["layout"]["title"]["text"]
    truth = next(t for t in spec["data"] if t["name"] == "ground truth")
    assert len(truth["x"]) == int((example.ground_truth[0] >= 0).sum())
    _, logits, valid = reference_logits(
        "planted", {"heads": params.DEFAULT_HEADS, "key_dim": params.DEFAULT_KEY_DIM})
    assert_weights_match_reference(heatmap_grids(app), logits, valid)


def test_batch_item_and_masks_of_variable_length_inputs(app):
    app.selectbox(key=params.KIND).set_value("variable_length").run()
    app.number_input(key=params.ITEM).set_value(2).run()
    assert not app.exception
    _, logits, valid = reference_logits(
        "variable_length", {"heads": params.DEFAULT_HEADS, "key_dim": params.DEFAULT_KEY_DIM},
        item=2)
    grid = heatmap_grids(app)
    assert_weights_match_reference(grid, logits, valid)
    masked_queries = ~valid.any(axis=-1)
    assert np.isnan(grid[:, masked_queries]).all()  # masked queries select nothing


def test_generator_parameters_change_the_size_and_the_budget_guard_pools(app):
    app.selectbox(key=params.KIND).set_value("random").run()
    app.number_input(key=params.generator_param_key("random", "num_queries")).set_value(150)
    app.number_input(key=params.generator_param_key("random", "num_keys")).set_value(400).run()
    assert not app.exception
    assert any("Pooled to stay visible" in i.value for i in app.info)
    # 400 keys in a half-width facet are under a pixel each: the per-head grid pools keys into
    # blocks of at least 2 px; the full-width selection view still gets 1.6 px a key.
    grid = heatmap_grids(app)
    assert grid.shape[1] <= 150 and grid.shape[2] < 400
    assert "blocks of" in chart(app, "head_heatmaps")["layout"]["title"]["text"]
    assert np.asarray(chart(app, "selection_view")["data"][0]["z"]).shape == (150, 400)


# ----------------------------------------------------------------------------- query detail


def test_query_picker_shows_ranked_reference_scores_and_selected_keys(app):
    app.selectbox(key=params.QUERY).set_value(3).run()
    example, logits, _ = reference_logits(
        params.DEFAULT_KIND, {"heads": params.DEFAULT_HEADS, "key_dim": params.DEFAULT_KEY_DIM})
    spec = chart(app, "detail_ranked")
    assert example.query_labels[3] in spec["layout"]["title"]["text"]
    for head in range(params.DEFAULT_HEADS):
        bars = [t for t in spec["data"] if t["xaxis"] == ("x" if head == 0 else f"x{head + 1}")]
        heights = {int(r): y for t in bars for r, y in zip(t["x"], t["y"])}
        ranked = np.sort(logits[head, 3])[::-1]
        np.testing.assert_allclose([heights[r] for r in sorted(heights)], ranked, atol=1e-5)
        picked = next(t for t in bars if t["name"] == "selected")
        assert sorted(int(r) for r in picked["x"]) == list(range(1, params.DEFAULT_TOP_K + 1))
    tables = [d.value for d in app.dataframe]  # display tables expose no key: find by columns
    # Slots down, heads across: all k slots are rows, none hidden past the table's right edge.
    keys_table = next(t for t in tables if "head 0" in t.columns)
    assert list(keys_table.columns) == [f"head {h}" for h in range(params.DEFAULT_HEADS)]
    assert list(keys_table.index) == [f"#{i + 1}" for i in range(params.DEFAULT_TOP_K)]
    nonzeros = next(t for t in tables if "feature" in t.columns)
    row = example.to_scipy(0)[3]
    assert sorted(nonzeros["feature"]) == sorted(row.indices.tolist())
    assert set(nonzeros["name"]) == {example.key_labels[i] for i in row.indices}


def test_table_row_and_chart_click_callbacks_choose_the_query(monkeypatch):
    state = {"query_table": {"selection": {"rows": [5], "columns": []}},
             "selection_view": {"selection": {"points": [{"customdata": [6, 2, 1]}]}}}
    monkeypatch.setattr(detail.st, "session_state", state)
    detail.select_from_table("query_table")()
    assert state[params.QUERY] == 5
    detail.select_from_chart("selection_view")()
    assert state[params.QUERY] == 6
    state["selection_view"] = {"selection": {"points": [{"customdata": {"0": 7, "1": 1}}]}}
    detail.select_from_chart("selection_view")()  # a typed-array row arrives keyed by index
    assert state[params.QUERY] == 7
    state["selection_view"] = {"selection": {"points": []}}  # a cleared selection keeps it
    detail.select_from_chart("selection_view")()
    assert state[params.QUERY] == 7


# ----------------------------------------------------------------------------- uploads


def _switch_to_upload(at):
    at.radio(key=params.SOURCE).set_value("upload").run()
    return at.get("file_uploader")[0]


def test_bad_upload_shows_an_error_and_keeps_running(app):
    uploader = _switch_to_upload(app)
    assert sorted(uploader.proto.type) == [".csv", ".mtx", ".npy", ".npz"]
    uploader.upload("broken.npz", b"this is not a zip archive").run()
    assert not app.exception
    assert len(app.error) == 1 and "broken.npz" in app.error[0].value.replace("\\", "")
    assert not app.get("plotly_chart")
    app.radio(key=params.SOURCE).set_value("generate").run()  # and the app carries on
    assert len(app.get("plotly_chart")) == 3 and not app.error


def test_valid_upload_is_drawn_with_its_own_labels(app):
    example = inputs.generate_inputs("needle", seed=3)
    buffer = io.BytesIO()
    inputs.save_inputs(example, buffer)
    uploader = _switch_to_upload(app)
    uploader.upload("needle.npz", buffer.getvalue()).run()
    assert not app.exception and not app.error
    spec = chart(app, "selection_view")
    assert spec["data"][0]["x"] == figures.axis_labels(example.key_labels, example.num_keys, "k")


def test_unreadable_files_become_messages_naming_them():
    from ui import sources

    empty = sources.Blob("empty.csv", "0" * 64, b"")
    with pytest.raises(sources.SourceError, match=r"empty\\.csv"):
        sources.compose({sources.QUERY: empty})


# ----------------------------------------------------------------------------- downloads


def test_download_table_and_npz_hold_every_valid_slot():
    example = inputs.generate_inputs("planted", seed=0)
    rng = np.random.default_rng(0)
    indices = np.stack([np.stack([rng.choice(example.num_keys, 3, replace=False)
                                  for _ in range(example.num_queries)]) for _ in range(2)])
    indices[1, 0, 2] = -1
    scores = rng.random(indices.shape)
    frame = export.selections_frame(indices, scores, query_labels=example.query_labels,
                                    key_labels=example.key_labels,
                                    ground_truth=example.ground_truth[0])
    assert list(frame.columns) == list(export.CSV_COLUMNS)
    assert len(frame) == 2 * example.num_queries * 3 - 1
    row = frame[(frame["head"] == 1) & (frame["query"] == 0)]
    assert row["key"].tolist() == indices[1, 0, :2].tolist()
    truth = set(example.ground_truth[0, 2][example.ground_truth[0, 2] >= 0].tolist())
    first = frame[frame["query"] == 2]
    assert first["ground_truth"].tolist() == [k in truth for k in first["key"]]
    csv = pd.read_csv(io.BytesIO(export.selections_csv(frame)))
    np.testing.assert_allclose(csv["weight"], frame["weight"])

    labels = figures.axis_labels(example.key_labels, example.num_keys, "k")
    archive = np.load(io.BytesIO(export.selections_npz(
        indices, scores, query_labels=example.query_labels, key_labels=labels,
        config={"k": 3})), allow_pickle=False)
    np.testing.assert_array_equal(archive["selected_indices"], indices)
    assert archive["weights_grid"].shape == (2, example.num_queries, example.num_keys)
    assert np.isfinite(archive["weights_grid"]).sum() == len(frame)
    assert '"k": 3' in str(archive["config"])


# ----------------------------------------------------------------------------- run status


def test_run_status_appears_only_for_slow_runs():
    script = """
import time
import streamlit as st
from ui.widgets import run_status

with run_status("Slow step", delay_s=0.1):
    time.sleep(0.5)
with run_status("Fast step", delay_s=5):
    pass
st.write("done")
"""
    at = AppTest.from_string(script, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert len(at.status) == 1
    assert at.status[0].label.startswith("Slow step done in")
    assert at.status[0].state == "complete"
