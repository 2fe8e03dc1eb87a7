"""Unit tests of the compare page's figure builders in ui.figures: the A/B diff map, metric
histograms, k-sweep curves and head-agreement heatmaps, checked on small hand-made selections."""

import math

import numpy as np
import plotly.graph_objects as go
import pytest

from sdattn import metrics
from ui import figures

# Three queries over six keys; -1 marks an empty slot.
INDICES_A = np.array([[0, 1, 2], [3, 4, -1], [5, 0, 1]])
INDICES_B = np.array([[2, 3, 4], [3, 4, 5], [-1, -1, -1]])


def decoded(fig: go.Figure) -> dict:
    return figures.decode_figure_json(fig.to_json())


def expected_codes(indices_a, indices_b, num_keys):
    """Diff codes from Python sets: 1 A only, 2 B only, 3 both, NaN neither."""
    codes = np.full((len(indices_a), num_keys), np.nan)
    for query, (row_a, row_b) in enumerate(zip(indices_a, indices_b)):
        set_a, set_b = set(row_a[row_a >= 0]), set(row_b[row_b >= 0])
        for key in set_a - set_b:
            codes[query, key] = 1
        for key in set_b - set_a:
            codes[query, key] = 2
        for key in set_a & set_b:
            codes[query, key] = 3
    return codes


# ----------------------------------------------------------------------------- diff map


def test_diff_grid_codes_each_cell_by_who_selected_it():
    np.testing.assert_array_equal(figures.selection_diff_grid(INDICES_A, INDICES_B, 6),
                                  expected_codes(INDICES_A, INDICES_B, 6))


def test_diff_grid_ignores_repeated_keys_and_empty_rows():
    codes = figures.selection_diff_grid(np.array([[1, 1, -1]]), np.array([[-1, -1, -1]]), 3)
    np.testing.assert_array_equal(codes, [[np.nan, 1, np.nan]])


def test_diff_figure_draws_the_codes_and_one_clickable_point_per_cell():
    spec = decoded(figures.selection_diff_figure(
        INDICES_A, INDICES_B, num_keys=6, names=("dot", "lsh"), head=2,
        key_labels=list("abcdef")))
    heatmap = spec["data"][0]
    assert heatmap["type"] == "heatmap"
    np.testing.assert_array_equal(np.asarray(heatmap["z"], float),
                                  expected_codes(INDICES_A, INDICES_B, 6))
    assert heatmap["x"] == list("abcdef") and heatmap["y"] == ["q0", "q1", "q2"]
    overlap = metrics.selector_overlap(INDICES_A[None, None], INDICES_B[None, None])
    totals = {"dot only": overlap["a_only"].sum(), "lsh only": overlap["b_only"].sum(),
              "both": overlap["both"].sum()}
    points = spec["data"][1:]
    for trace in points:
        name, count = trace["name"].rsplit(" (", 1)
        assert int(count.rstrip(")")) == totals[name] == len(trace["x"])
    both = next(t for t in points if t["name"].startswith("both"))
    # The clicked point's query comes back as customdata[0]: query 1 shares keys 3 and 4.
    assert sorted(map(tuple, both["customdata"])) == [(0, 2), (1, 3), (1, 4)]
    assert "dot vs lsh, head 2" in spec["layout"]["title"]["text"]
    assert spec["layout"]["clickmode"] == "event+select"


def test_diff_figure_pools_blocks_and_keeps_full_resolution_counts():
    rng = np.random.default_rng(0)
    indices_a = np.stack([rng.choice(40, 4, replace=False) for _ in range(10)])
    indices_b = np.stack([rng.choice(40, 4, replace=False) for _ in range(10)])
    spec = decoded(figures.selection_diff_figure(
        indices_a, indices_b, num_keys=40, row_factor=2, col_factor=8))
    z = np.asarray(spec["data"][0]["z"], float)
    assert z.shape == (5, 5)
    member_a = figures.membership_grid(indices_a, 40).reshape(5, 2, 5, 8).any(axis=(1, 3))
    member_b = figures.membership_grid(indices_b, 40).reshape(5, 2, 5, 8).any(axis=(1, 3))
    expected = np.where(member_a | member_b, member_a * 1.0 + member_b * 2.0, np.nan)
    np.testing.assert_array_equal(z, expected)
    a_only = next(t for t in spec["data"] if t["name"].startswith("A only"))
    full = expected_codes(indices_a, indices_b, 40)
    assert a_only["name"] == f"A only ({int((full == 1).sum())})"
    assert "blocks of 2 × 8" in spec["layout"]["title"]["text"]


# ----------------------------------------------------------------------------- histograms


def test_histograms_drop_undefined_values_and_share_bins():
    recall = {"dot": np.array([[1.0, 1.0, np.nan]]), "random": np.array([[0.25, 0.0, 0.5]])}
    mass = {"dot": np.array([[0.6, 0.7, np.nan]]), "random": np.array([[0.1, 0.2, 0.05]])}
    fig = figures.metric_histograms_figure(
        {name: {"recall": recall[name], "mass": mass[name]} for name in recall},
        metric_titles={"recall": "recall@k", "mass": "attention mass captured"})
    spec = decoded(fig)
    traces = spec["data"]
    assert [(t["name"], t["xaxis"]) for t in traces] == [
        ("dot", "x"), ("random", "x"), ("dot", "x2"), ("random", "x2")]
    np.testing.assert_array_equal(np.asarray(traces[0]["x"], float), [1.0, 1.0])
    np.testing.assert_array_equal(np.asarray(traces[3]["x"], float), [0.1, 0.2, 0.05])
    assert all(t["xbins"]["size"] == 0.05 and t["xbins"]["start"] == -0.025 for t in traces)
    assert traces[0]["marker"]["color"] == traces[2]["marker"]["color"] == figures.selector_color(0)
    assert [t["showlegend"] for t in traces] == [True, True, False, False]
    assert [a["text"] for a in spec["layout"]["annotations"]] == [
        "recall@k", "attention mass captured"]


# ----------------------------------------------------------------------------- k-sweep


def test_k_sweep_draws_one_line_per_selector_and_metric_with_the_k_marker():
    ks = [1, 2, 4, 8]
    recall = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 0.5, 0.5, 0.75]])
    mass = np.array([[0.3, 0.5, 0.7, 0.9], [0.1, 0.2, 0.4, 0.6]])
    spec = decoded(figures.k_sweep_figure(
        ["dot", "random"], ks, {"recall": recall, "mass": mass},
        metric_titles={"recall": "recall@k", "mass": "mass"}, current_k=4))
    lines = spec["data"]
    assert len(lines) == 4
    np.testing.assert_array_equal(np.asarray(lines[1]["x"], int), ks)
    np.testing.assert_allclose(np.asarray(lines[1]["y"], float), recall[1])
    np.testing.assert_allclose(np.asarray(lines[2]["y"], float), mass[0])
    assert spec["layout"]["xaxis"]["type"] == "log" and spec["layout"]["xaxis2"]["type"] == "log"
    assert [s["x0"] for s in spec["layout"]["shapes"]] == [4, 4]
    # Annotations on a log axis are placed in log10 units (plotly.js#1258).
    marks = [a for a in spec["layout"]["annotations"] if a["text"] == "k = 4"]
    assert len(marks) == 2 and marks[0]["x"] == pytest.approx(math.log10(4))


def test_k_sweep_tick_labels_never_print_over_each_other():
    """256 and N = 400 (the real-text input's sweep) printed as one "25400" in a narrow facet:
    labelled ticks stay at least 0.8 octave apart, N is always labelled, gridlines stay."""
    ks = [1, 4, 5, 16, 64, 256, 400]
    spec = decoded(figures.k_sweep_figure(
        ["dot"], ks, {"recall": np.ones((1, len(ks)))}, metric_titles={"recall": "recall@k"},
        current_k=5))
    axis = spec["layout"]["xaxis"]
    assert list(axis["tickvals"]) == ks
    assert axis["ticktext"] == ["1", "", "5", "16", "64", "", "400"]
    labelled = [k for k, text in zip(ks, axis["ticktext"]) if text]
    assert min(np.diff(np.log2(labelled))) >= 0.8


# ----------------------------------------------------------------------------- head agreement


def test_head_agreement_facets_hold_the_jaccard_matrices():
    # Two heads over two queries: identical sets on query 0, disjoint on query 1.
    per_head = np.array([[[0, 1], [2, 3]], [[0, 1], [4, 5]]])[None]  # [1, H=2, M=2, k=2]
    matrix = metrics.mean_head_agreement(per_head)
    np.testing.assert_allclose(matrix, [[1.0, 0.5], [0.5, 1.0]])  # by hand: (1 + 0) / 2
    spec = decoded(figures.head_agreement_figure({"dot": matrix, "cosine": np.ones((2, 2))}))
    assert [t["name"] for t in spec["data"]] == ["dot", "cosine"]
    np.testing.assert_allclose(np.asarray(spec["data"][0]["z"], float), [[1.0, 0.5], [0.5, 1.0]])
    assert spec["data"][0]["x"] == ["head 0", "head 1"]
    assert all(t["coloraxis"] == "coloraxis" for t in spec["data"])
    assert (spec["layout"]["coloraxis"]["cmin"], spec["layout"]["coloraxis"]["cmax"]) == (0, 1)


def test_scaling_figure_labels_log_ticks_with_full_numbers():
    from ui.figures import scaling_figure

    figure = scaling_figure({"sdattn cosine": ([1024, 4096], [6.5, 21.8]),
                             "keras MHA": ([1024, 4096], [4.7, 58.0])},
                            y_title="time per call (ms)", title="t", reference="keras MHA")
    axis = figure.layout.yaxis
    assert list(axis.tickvals) == [5, 10, 20, 50]
    assert list(axis.ticktext) == ["5", "10", "20", "50"]
    assert figure.data[1].line.dash == "dash"


def test_scaling_figure_keeps_many_methods_apart_and_the_title_above_the_legend():
    """The stored benchmark has ten methods: past the eight colours a method is dotted (not a
    second solid line of a colour already used), and the top margin grows with the legend's
    rows while the title stays at the top."""
    from ui.figures import scaling_figure

    methods = [f"method {i}" for i in range(9)] + ["keras MHA"]
    figure = scaling_figure({name: ([1024, 4096], [1.0 + i, 2.0 + i]) for i, name in enumerate(methods)},
                            y_title="ms", title="t", reference="keras MHA")
    first, ninth = figure.data[0], figure.data[8]
    assert first.line.color == ninth.line.color
    assert (first.line.dash, ninth.line.dash) == ("solid", "dot")
    assert (first.marker.symbol, ninth.marker.symbol) == ("circle", "diamond")
    few = scaling_figure({"a": ([1024], [1.0]), "keras MHA": ([1024], [2.0])},
                         y_title="ms", title="t", reference="keras MHA")
    assert figure.layout.margin.t > few.layout.margin.t
    assert (figure.layout.title.yref, figure.layout.title.y, figure.layout.title.yanchor) == ("container", 1.0, "top")


def test_selectors_never_share_a_hue_and_coinciding_k_sweep_lines_stay_visible():
    # The five-way comparison: cosine first, ann fifth read as the same blue.
    def hue(color):
        import colorsys
        r, g, b = (int(color[i:i + 2], 16) / 255 for i in (1, 3, 5))
        return colorsys.rgb_to_hsv(r, g, b)[0] * 360

    hues = [hue(figures.selector_color(p)) for p in range(7)]
    for i in range(7):
        for j in range(i + 1, 7):
            if min(figures.SELECTOR_COLORS[i], figures.SELECTOR_COLORS[j]) == "#999999":
                continue  # grey has no hue
            gap = abs(hues[i] - hues[j]) % 360
            assert min(gap, 360 - gap) > 12, (figures.SELECTOR_COLORS[i], figures.SELECTOR_COLORS[j])
    same = np.array([0.2, 0.6, 1.0])  # dot and cosine both exact: identical curves
    spec = figures.k_sweep_figure(
        ["dot", "cosine"], [1, 2, 4], {"recall_at_k": np.stack([same, same])},
        metric_titles={"recall_at_k": "recall@k"}).to_plotly_json()
    first, second = spec["data"][0], spec["data"][1]
    assert first["line"]["width"] > second["line"]["width"]  # the first peeks out underneath
    assert first["line"]["dash"] != second["line"]["dash"]
    assert first["marker"]["symbol"] != second["marker"]["symbol"]
