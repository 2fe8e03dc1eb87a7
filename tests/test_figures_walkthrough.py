"""Unit tests for the walkthrough figures of sdattn/figures.py: annotated matrices per step.
No Streamlit and no TensorFlow: hand-built weights, checked against sdattn.reference."""

import numpy as np
import pytest

from sdattn import reference
from ui import figures
from sdattn.walkthrough import build_walkthrough

M, N, DQ, D, H, KD, K = 4, 12, 6, 5, 2, 3, 3


def _weights(rng):
    """MHA-ordered weights: kernels [D, H, kd], biases [H, kd], output [H, kd, Dq], bias [Dq]."""
    return [rng.normal(size=(DQ, H, KD)), rng.normal(size=(H, KD)),
            rng.normal(size=(D, H, KD)), rng.normal(size=(H, KD)),
            rng.normal(size=(D, H, KD)), rng.normal(size=(H, KD)),
            rng.normal(size=(H, KD, DQ)), rng.normal(size=(DQ,))]


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(7)
    query = rng.normal(size=(M, DQ)) * (rng.random((M, DQ)) < 0.4)
    query[:, 0] += 1.0
    value = rng.normal(size=(N, D))
    value_mask = np.ones(N, bool)
    value_mask[-2:] = False
    weights = _weights(rng)
    walk = build_walkthrough(query, value, weights, K, value_mask=value_mask)
    return dict(query=query, value=value, weights=weights, value_mask=value_mask, walk=walk)


def _value_traces(fig):
    return [t for t in fig.data if not t.name.endswith("(dropped)")]


def test_panels_print_numbers_blank_nan_and_outline_the_focus_row():
    values = np.array([[1.0, np.nan, -2.5], [0.25, 3.0, np.nan]])
    fig = figures.matrix_panels_figure(
        [figures.MatrixPanel(values, ["a", "b"], ["x", "y", "z"], "P", focus_row=1)],
        title="T", value_format=".1f")
    trace = fig.data[0]
    assert [list(row) for row in trace.text] == [["1.0", "", "-2.5"], ["0.2", "3.0", ""]]
    assert fig.layout.coloraxis.cmin == -3.0 and fig.layout.coloraxis.cmax == 3.0
    (shape,) = fig.layout.shapes
    assert (shape.y0, shape.y1, shape.xref) == (0.5, 1.5, "x domain")


def test_dropped_cells_are_grey_with_their_number_and_blank_in_the_colour_trace():
    values = np.arange(6.0).reshape(2, 3)
    dropped = np.array([[True, False, False], [False, False, True]])
    fig = figures.matrix_panels_figure(
        [figures.MatrixPanel(values, ["a", "b"], ["x", "y", "z"], "P", dropped=dropped)],
        title="T", diverging=False)
    grey, coloured = fig.data
    assert grey.name == "P (dropped)" and coloured.name == "P"
    np.testing.assert_array_equal(np.isfinite(np.asarray(grey.z, float)), dropped)
    np.testing.assert_array_equal(np.isfinite(np.asarray(coloured.z, float)), ~dropped)
    assert [list(row) for row in grey.text] == [["0.00", "", ""], ["", "", "5.00"]]
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.0, 1.0)


def test_repeated_labels_are_named_once_and_domains_stay_in_range():
    grid = np.zeros((3, 2))
    panels = [figures.MatrixPanel(grid, ["r0", "r1", "r2"], ["c0", "c1"], f"P{i}")
              for i in range(4)]
    fig = figures.matrix_panels_figure(panels, title="T", cols=2)
    layout = fig.layout
    # Facets 0, 1 above 2, 3 with the same columns: x labels only on the bottom row;
    # facets 1 and 3 right of facets with the same rows: y labels only on the left.
    assert [layout[f"xaxis{s}"].showticklabels for s in ("", "2", "3", "4")] == [
        False, False, True, True]
    assert [layout[f"yaxis{s}"].showticklabels for s in ("", "2", "3", "4")] == [
        True, False, True, False]
    for name in ("xaxis", "xaxis2", "yaxis", "yaxis3"):
        low, high = layout[name].domain
        assert 0.0 <= low < high <= 1.0


def test_every_step_draws_the_reference_numbers(case):
    walk = case["walk"]
    mask = reference.combined_mask(1, M, N, key_mask=case["value_mask"][None])
    _, _, logits = reference.dense_attention(case["query"][None], case["value"][None],
                                             case["weights"])
    indices = reference.exact_top_k(logits, K, mask)[0]  # [H, M, k]
    _, scores = reference.selected_attention(case["query"][None], case["value"][None],
                                             case["weights"], indices[None], attention_mask=mask)

    query_fig = figures.walkthrough_figure(walk, "query", focus_query=2)
    np.testing.assert_allclose(np.nan_to_num(np.asarray(query_fig.data[0].z, float)),
                               case["query"])
    assert query_fig.layout.shapes[0].y0 == 1.5

    projections = figures.walkthrough_figure(walk, "projections")
    assert [t.name for t in projections.data] == [
        f"{m} head {h}" for h in range(H) for m in "QKV"]

    drawn = np.stack([np.asarray(t.z, float)
                      for t in figures.walkthrough_figure(walk, "scores").data])
    expected = np.where(mask[0], logits[0], np.nan)  # masked keys blank
    np.testing.assert_allclose(drawn, expected, atol=1e-9)

    top_k = _value_traces(figures.walkthrough_figure(walk, "top_k"))
    softmax = figures.walkthrough_figure(walk, "softmax").data
    for head in range(H):
        kept = np.isfinite(np.asarray(top_k[head].z, float))
        weights = np.asarray(softmax[head].z, float)
        for query in range(M):
            assert set(np.flatnonzero(kept[query])) == set(indices[head, query])
            np.testing.assert_allclose(weights[query, indices[head, query]],
                                       scores[0, head, query], atol=1e-9)

    output = figures.walkthrough_figure(walk, "output").data[0]
    np.testing.assert_allclose(np.asarray(output.z, float),
                               walk.step("output").arrays["output"])
    with pytest.raises(ValueError, match="step_key"):
        figures.walkthrough_figure(walk, "nonsense")
