"""Unit tests for sdattn/figures.py: shapes, selected-cell counts and labels of every builder.
No Streamlit and no TensorFlow: the figures are checked against hand-built index arrays."""

import json

import numpy as np
import pytest

from ui import figures

H, M, N, K = 3, 5, 9, 4


def _random_selection(seed=0, heads=H, queries=M, keys=N, k=K, invalid=()):
    """Distinct key positions per (head, query) row, with `-1` in the listed (h, m, slot)s."""
    rng = np.random.default_rng(seed)
    indices = np.stack([
        np.stack([rng.choice(keys, size=k, replace=False) for _ in range(queries)])
        for _ in range(heads)
    ]).astype(np.int32)  # [H, M, k]
    scores = rng.random((heads, queries, k))
    scores /= scores.sum(-1, keepdims=True)
    for h, m, slot in invalid:
        indices[h, m, slot] = -1
        scores[h, m, slot] = 0.0
    return scores, indices


def _decoded(fig):
    """The figure as the browser receives it (typed arrays, NaN kept), decoded to NumPy."""
    spec = figures.decode_figure_json(fig.to_json())
    for trace in spec["data"]:
        if trace.get("z") is not None:
            trace["z"] = np.asarray(trace["z"], dtype=float)
    return spec


# ----------------------------------------------------------------------------- array helpers


def test_scatter_to_grid_places_each_slot_and_leaves_the_rest_empty():
    scores, indices = _random_selection(invalid=[(0, 1, 2), (2, 4, 0)])
    grid = figures.scatter_to_grid(scores, indices, N)
    assert grid.shape == (H, M, N)
    for h in range(H):
        for m in range(M):
            expected = np.full(N, np.nan)
            for slot in range(K):
                if indices[h, m, slot] >= 0:
                    expected[indices[h, m, slot]] = scores[h, m, slot]
            np.testing.assert_array_equal(grid[h, m], expected)
    # M·k cells per head, minus one invalid slot in heads 0 and 2.
    assert np.isfinite(grid).sum(axis=(1, 2)).tolist() == [M * K - 1, M * K, M * K - 1]


def test_scatter_to_grid_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        figures.scatter_to_grid(np.zeros((2, 3)), np.zeros((2, 4), int), 5)


def test_selection_counts_counts_heads_not_slots():
    indices = np.array([[[0, 1]], [[1, 2]], [[1, -1]]])  # [H=3, M=1, k=2]
    np.testing.assert_array_equal(figures.selection_counts(indices, 4), [[1, 3, 1, 0]])


def test_axis_labels_defaults_and_deduplicates():
    assert figures.axis_labels(None, 3, "k") == ["k0", "k1", "k2"]
    assert figures.axis_labels(["the", "cat", "the"], 3, "k") == ["the", "cat", "the #2"]
    with pytest.raises(ValueError, match="exactly 2"):
        figures.axis_labels(["a"], 2, "q")


def test_aggregate_grid_max_pools_and_keeps_empty_blocks_empty():
    grid = np.full((1, 4, 6), np.nan)
    grid[0, 0, 1] = 0.2
    grid[0, 1, 0] = 0.7
    grid[0, 3, 5] = 0.1
    pooled = figures.aggregate_grid(grid, 2, 4)  # uneven: 6 keys in blocks of 4
    assert pooled.shape == (1, 2, 2)
    np.testing.assert_array_equal(pooled[0], [[0.7, np.nan], [np.nan, 0.1]])
    assert figures.block_factors(100, 1000, 50, 256) == (2, 4)
    assert figures.aggregate_labels(["a", "b", "c", "d", "e"], 2) == ["a…b", "c…d", "e"]


# ----------------------------------------------------------------------------- head heatmaps


def test_head_heatmaps_have_one_facet_per_head_with_selected_cells_only():
    scores, indices = _random_selection(invalid=[(1, 0, 3)])
    grid = figures.scatter_to_grid(scores, indices, N)
    spec = _decoded(figures.head_heatmaps_figure(grid))
    heatmaps = [t for t in spec["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) == H
    for h, trace in enumerate(heatmaps):
        assert trace["z"].shape == (M, N)
        assert trace["coloraxis"] == "coloraxis"  # one shared colour bar
        # Exactly the M·k selected cells are drawn (one fewer for the invalid slot)...
        assert np.isfinite(trace["z"]).sum() == M * K - (1 if h == 1 else 0)
        # ...each at its key, with its weight.
        for m in range(M):
            for slot in range(K):
                if indices[h, m, slot] >= 0:
                    assert trace["z"][m, indices[h, m, slot]] == pytest.approx(scores[h, m, slot])
    titles = [a["text"] for a in spec["layout"]["annotations"]]
    assert titles == [f"head {h}" for h in range(H)]
    assert spec["layout"]["coloraxis"]["colorbar"]["title"]["text"] == "attention<br>weight"
    finite = grid[np.isfinite(grid)]  # the colour axis spans the selected weights
    assert spec["layout"]["coloraxis"]["cmin"] == pytest.approx(finite.min())
    assert spec["layout"]["coloraxis"]["cmax"] == pytest.approx(finite.max())


def test_head_heatmaps_use_example_labels_and_show_them_on_hover():
    scores, indices = _random_selection(heads=2)
    grid = figures.scatter_to_grid(scores, indices, N)
    words = [f"w{i}" for i in range(N)]
    words[3] = "w0"  # a repeated word must stay its own column
    spec = _decoded(figures.head_heatmaps_figure(
        grid, query_labels=[f"doc{i}" for i in range(M)], key_labels=words))
    trace = spec["data"][0]
    assert trace["x"] == ["w0", "w1", "w2", "w0 #3"] + [f"w{i}" for i in range(4, N)]
    assert trace["y"] == [f"doc{i}" for i in range(M)]
    for part in ("query: %{y}", "key: %{x}", "weight: %{text}"):
        assert part in trace["hovertemplate"]
    # Hover text: the weight on a selected cell, a blank (never "NaN") on an unselected one.
    selected = np.isfinite(grid[0])
    assert all(trace["text"][m][n] == "" for m, n in zip(*np.nonzero(~selected)))
    assert all(float(trace["text"][m][n]) == pytest.approx(grid[0, m, n], abs=1e-4)
               for m, n in zip(*np.nonzero(selected)))
    assert "NaN" not in json.dumps(trace["text"])
    assert spec["layout"]["xaxis"]["type"] == "category"
    assert spec["layout"]["yaxis"]["autorange"] == "reversed"  # query 0 on top
    # One row of two facets: both x axes say "key", only the left y axis says "query".
    layout = spec["layout"]
    assert [layout[a]["title"]["text"] for a in ("xaxis", "xaxis2")] == ["key", "key"]
    assert [layout[a]["title"]["text"] for a in ("yaxis", "yaxis2")] == ["query", ""]
    assert layout["xaxis2"]["matches"] == "x" and layout["yaxis2"]["matches"] == "y"


def test_head_heatmaps_grid_layout_for_odd_head_count():
    scores, indices = _random_selection(heads=3)
    grid = figures.scatter_to_grid(scores, indices, N)
    spec = _decoded(figures.head_heatmaps_figure(grid, max_cols=2))
    axes = {t["xaxis"] for t in spec["data"]}
    assert axes == {"x", "x2", "x3"}  # 2 x 2 grid, last cell empty


# ----------------------------------------------------------------------------- selection view


def test_selection_view_marks_every_selected_cell_and_counts_heads():
    scores, indices = _random_selection(invalid=[(0, 2, 1)])
    spec = _decoded(figures.selection_figure(indices, num_keys=N))
    heatmap, selected = spec["data"][0], spec["data"][1]
    assert heatmap["z"].shape == (M, N)
    expected = np.zeros((M, N))
    for h in range(H):
        for m in range(M):
            for key in indices[h, m]:
                if key >= 0:
                    expected[m, key] += 1
    np.testing.assert_array_equal(np.nan_to_num(heatmap["z"]), expected)
    assert np.isnan(heatmap["z"][expected == 0]).all()  # unselected cells stay empty
    # The clickable overlay: one point per selected cell, carrying its query index.
    assert len(selected["x"]) == int((expected > 0).sum())
    assert {row[0] for row in selected["customdata"]} == set(range(M))
    assert spec["layout"]["clickmode"] == "event+select"


def test_selection_view_with_one_head_has_m_times_k_points():
    _, indices = _random_selection(heads=1, invalid=[(0, 0, 0), (0, 3, 2)])
    spec = _decoded(figures.selection_figure(indices, num_keys=N))
    assert len(spec["data"][1]["x"]) == M * K - 2


def test_selection_view_draws_ground_truth_and_labels():
    _, indices = _random_selection(heads=1)
    truth = np.full((M, 2), -1, dtype=np.int32)
    truth[0, 0] = indices[0, 0, 0]  # a hit
    truth[1, :] = [idx for idx in range(N) if idx not in indices[0, 1]][:2]  # two misses
    spec = _decoded(figures.selection_figure(
        indices, num_keys=N, ground_truth=truth,
        query_labels=[f"q{i}" for i in range(M)], key_labels=[f"word{i}" for i in range(N)]))
    gt = next(t for t in spec["data"] if t["name"] == "ground truth")
    assert len(gt["x"]) == 3
    assert [row[2] for row in gt["customdata"]] == [1, 0, 0]  # selected? hit, miss, miss
    assert gt["x"][0] == f"word{indices[0, 0, 0]}"
    assert spec["layout"]["xaxis"]["title"]["text"] == "key"
    assert spec["layout"]["yaxis"]["title"]["text"] == "query"
    assert spec["data"][0]["colorbar"]["title"]["text"] == "heads<br>selecting"


def test_selection_view_without_overlay_when_not_clickable():
    _, indices = _random_selection()
    spec = _decoded(figures.selection_figure(indices, num_keys=N, clickable=False))
    assert [t["type"] for t in spec["data"]] == ["heatmap"]


# ----------------------------------------------------------------------------- ranked scores


def test_ranked_scores_rank_all_valid_keys_and_cut_at_k():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, N))
    selected = np.argsort(-logits, axis=-1)[:, :K]  # exact top-k
    valid = np.ones(N, bool)
    valid[4] = False
    spec = figures.ranked_scores_figure(
        logits, selected, top_k=K, valid_keys=valid, query_label="q3")
    spec = _decoded(spec)
    bars = spec["data"]
    assert len(bars) == 4  # (selected, not selected) per head
    for head in range(2):
        picked, rest = bars[2 * head], bars[2 * head + 1]
        ranks = np.concatenate([picked["x"], rest["x"]])
        heights = np.concatenate([picked["y"], rest["y"]])[np.argsort(ranks)]
        assert sorted(ranks.tolist()) == list(range(1, N))  # the masked key is left out
        assert np.all(np.diff(heights) <= 0)  # ranked: highest score first
        expected = np.sort(np.delete(logits[head], 4))[::-1]
        np.testing.assert_allclose(heights, expected)
        # The selected bars are the top of the ranking minus the masked key if it was picked.
        picked_keys = [k for k in selected[head] if k != 4]
        assert len(picked["x"]) == len(picked_keys)
    cutoffs = spec["layout"]["shapes"]
    assert len(cutoffs) == 2 and all(line["x0"] == K + 0.5 for line in cutoffs)
    assert "q3" in spec["layout"]["title"]["text"]
    notes = [a["text"] for a in spec["layout"]["annotations"]]
    assert notes.count(f"k = {K}") == 2


def test_ranked_scores_show_a_non_exact_selector_below_the_cut():
    logits = np.arange(N, dtype=float)[None, ::-1]  # key 0 scores highest
    selected = np.array([[N - 1, N - 2, -1, -1]])  # picked the two lowest-scoring keys
    spec = figures.ranked_scores_figure(
        logits, selected, top_k=K, key_labels=[f"t{i}" for i in range(N)])
    spec = _decoded(spec)
    picked = spec["data"][0]
    assert sorted(picked["x"].tolist()) == [N - 1, N]
    assert sorted(picked["customdata"]) == [f"t{N - 2}", f"t{N - 1}"]


# ----------------------------------------------------------------------------- large inputs


def test_blocked_views_pool_cells_and_label_blocks():
    scores, indices = _random_selection(heads=2, queries=8, keys=12, k=3)
    grid = figures.scatter_to_grid(scores, indices, 12)
    spec = _decoded(figures.head_heatmaps_figure(grid, row_factor=4, col_factor=5))
    trace = spec["data"][0]
    assert trace["z"].shape == (2, 3)
    assert trace["y"] == ["q0…q3", "q4…q7"]
    assert trace["x"] == ["k0…k4", "k5…k9", "k10…k11"]
    for (row, col), (rows, cols) in {(0, 0): (slice(0, 4), slice(0, 5)),
                                     (1, 2): (slice(4, 8), slice(10, 12))}.items():
        block = grid[0, rows, cols]
        finite = block[np.isfinite(block)]
        expected = finite.max() if finite.size else np.nan
        np.testing.assert_allclose(trace["z"][row, col], expected, rtol=1e-6)
    assert "blocks of 4 × 5" in spec["layout"]["title"]["text"]

    truth = np.array([[11]] + [[-1]] * 7)  # query 0 -> key 11: block (0, 2)
    spec = _decoded(figures.selection_figure(
        indices, num_keys=12, ground_truth=truth, row_factor=4, col_factor=5))
    assert spec["data"][0]["z"].shape == (2, 3)
    # A block counts the heads that selected any key in it (each head once).
    heads_in_block = sum(bool(np.isin(indices[h, 4:], range(5, 10)).any()) for h in range(indices.shape[0]))
    assert np.nan_to_num(spec["data"][0]["z"])[1, 1] == heads_in_block
    points = spec["data"][1]["customdata"]
    assert {row[0] for row in points} <= {0, 4}  # a click picks the block's first query
    gt = spec["data"][2]
    assert gt["x"] == ["k10…k11"] and gt["y"] == ["q0…q3"]


def test_ranked_scores_can_stop_after_the_best_ranks():
    logits = np.random.default_rng(5).normal(size=(2, 300))
    selected = np.argsort(-logits, axis=-1)[:, :K]
    spec = _decoded(figures.ranked_scores_figure(logits, selected, top_k=K, max_ranks=50))
    for head in range(2):
        ranks = np.concatenate([spec["data"][2 * head]["x"], spec["data"][2 * head + 1]["x"]])
        assert sorted(ranks.tolist()) == list(range(1, 51))
    # Said under the last facet's rank axis (the title keeps to one line).
    assert "best 50 of 300" in spec["layout"]["xaxis2"]["title"]["text"]


def test_ranked_scores_title_fits_a_long_query_label():
    """A 40 × 480 real-text query label ran the title past the figure's right edge."""
    logits = np.random.default_rng(6).normal(size=(2, 400))
    selected = np.argsort(-logits, axis=-1)[:, :K]
    label = "Apache-2.0 ¶1: Apache License Version 2.0, January 2004 http://www.apache.org/licenses/"
    spec = _decoded(figures.ranked_scores_figure(logits, selected, top_k=K, max_ranks=256,
                                                 query_label=label))
    title = spec["layout"]["title"]["text"]
    assert title.startswith("Ranked scores of query Apache-2.0 ¶1:") and title.endswith("…")
    assert len(title) <= len("Ranked scores of query ") + figures.TITLE_LABEL_CHARS


# ----------------------------------------------------------------------------- issue 14


def test_plan_grid_draws_gapless_below_4_px_and_pools_below_1_px_into_2_px_blocks():
    big = figures.plan_grid(8, 48)  # 640 px / 48 keys: 13 px a cell
    assert (big.row_factor, big.col_factor) == (1, 1) and big.xgap == 1 and big.ygap == 1
    edge = figures.plan_grid(40, 480)  # 1.3 px a key: full resolution, edge to edge
    assert edge.col_factor == 1 and edge.xgap == 0 and edge.cell_width >= 1
    pooled = figures.plan_grid(4096, 4096, max_height_px=1040)
    assert pooled.col_factor > 1 and pooled.row_factor > 1
    assert pooled.cell_width >= figures.MIN_CELL_PX and pooled.cell_height >= figures.MIN_CELL_PX
    assert pooled.drawn_cols * pooled.col_factor >= 4096 > (pooled.drawn_cols - 1) * pooled.col_factor
    zoom = figures.plan_grid(4096, 4096, rows=(100, 140), cols=(1000, 1200))
    assert (zoom.rows, zoom.cols, zoom.row_factor, zoom.col_factor) == (
        (100, 140), (1000, 1200), 1, 1)
    assert "queries 100–139, keys 1000–1199" in zoom.describe()


def test_pooled_slot_max_and_head_counts_match_a_dense_reference():
    scores, indices = _random_selection(heads=3, queries=20, keys=50, k=5, invalid=[(0, 2, 1)])
    plan = figures.plan_grid(20, 50, width_px=20, height_px=10, rows=(3, 17), cols=(5, 40))
    assert plan.row_factor > 1 and plan.col_factor > 1
    dense = figures.scatter_to_grid(scores, indices, 50)[:, 3:17, 5:40]
    reference = figures.aggregate_grid(dense, plan.row_factor, plan.col_factor)
    np.testing.assert_allclose(figures.pooled_slot_max(scores, indices, plan), reference,
                               rtol=1e-6)
    heads = np.isfinite(reference).sum(0)  # heads holding some selected key in the block
    np.testing.assert_array_equal(figures.pooled_head_counts(indices, plan), heads)


def test_hover_never_says_nan_and_every_key_is_labelled_when_labels_fit():
    _, indices = _random_selection(heads=2, queries=8, keys=48, k=4)
    keys = [f"word{i}" for i in range(48)]
    spec = _decoded(figures.selection_figure(
        indices, num_keys=48, key_labels=keys, plan=figures.plan_grid(8, 48)))
    heatmap = spec["data"][0]
    assert "%{z}" not in heatmap["hovertemplate"] and "%{text}" in heatmap["hovertemplate"]
    empty = ~np.isfinite(heatmap["z"])
    assert all(heatmap["text"][m][n] == "" for m, n in zip(*np.nonzero(empty)))
    assert "NaN" not in json.dumps(heatmap["text"])
    assert spec["layout"]["xaxis"]["tickvals"] == keys  # 13 px a key: every word labelled
    # Long labels are cut on the axis, whole in the data that hover shows.
    long = [f"a rather long query label number {m}" for m in range(8)]
    spec = _decoded(figures.selection_figure(indices, num_keys=48, query_labels=long,
                                             plan=figures.plan_grid(8, 48)))
    assert spec["data"][0]["y"] == long
    assert all(len(t) <= figures.MAX_LABEL_CHARS for t in spec["layout"]["yaxis"]["ticktext"])


def test_ground_truth_never_covers_a_selected_cell():
    _, indices = _random_selection(heads=1, queries=40, keys=480, k=4)
    truth = np.stack([indices[0, :, 0], (indices[0, :, 0] + 1) % 480], 1)  # a hit and a miss
    truth[truth[:, 1] == indices[0, :, 1], 1] = -1
    spec = _decoded(figures.selection_figure(indices, num_keys=480, ground_truth=truth,
                                             plan=figures.plan_grid(40, 480)))
    missed = next(t for t in spec["data"] if t["name"].startswith("ground truth missed"))
    drawn_missed = np.isfinite(np.asarray(missed["z"], float))
    assert drawn_missed.any()
    assert not (drawn_missed & np.isfinite(spec["data"][0]["z"])).any()  # disjoint from data
    assert "ground truth" not in [t["name"] for t in spec["data"]]  # no outline on 1 px cells


def test_ranked_scores_title_and_legend_never_overlap_at_eight_heads():
    logits = np.random.default_rng(1).normal(size=(8, 60))
    selected = np.argsort(-logits, axis=-1)[:, :4]
    layout = _decoded(figures.ranked_scores_figure(logits, selected, top_k=4))["layout"]
    height, top = layout["height"], layout["margin"]["t"]
    title, legend = layout["title"], layout["legend"]
    assert title["yref"] == "container" and title["y"] == 1.0 and title["yanchor"] == "top"
    assert legend["yref"] == "container" and legend["yanchor"] == "top"
    legend_top_px = (1 - legend["y"]) * height
    assert 30 <= legend_top_px and legend_top_px + 30 <= top - 20  # below the title, above
    # the first facet's title, which sits just above the plot
