"""ui.figure_cache: equal arguments (arrays by content, not identity) share one figure; any
difference, down to one element or one label, builds a new one."""

import numpy as np

from ui import figures
from ui.figure_cache import shared_figure


def test_equal_arguments_share_one_figure_and_any_difference_builds_another():
    logits = np.array([[0.5, 2.0, -1.0]], dtype=np.float32)  # [H, N]
    selected = np.array([[1, 0]], dtype=np.int32)  # [H, k]
    build = figures.ranked_scores_figure
    first = build(logits, selected, top_k=2, key_labels=["a", "b", "c"])
    again = build(logits.copy(), selected.copy(), top_k=2, key_labels=["a", "b", "c"])
    assert again is first
    changed = selected.copy()
    changed[0, 1] = 2
    assert build(logits, changed, top_k=2, key_labels=["a", "b", "c"]) is not first
    assert build(logits, selected, top_k=2, key_labels=["a", "b", "x"]) is not first
    assert build(logits, selected.astype(np.int64), top_k=2,
                 key_labels=["a", "b", "c"]) is not first
    # What st.plotly_chart sends is what the builder made.
    assert first.to_dict() == build.uncached(
        logits, selected, top_k=2, key_labels=["a", "b", "c"]).to_dict()


def test_an_argument_it_cannot_compare_builds_every_time():
    calls = []

    @shared_figure
    def build(value):
        calls.append(value)
        import plotly.graph_objects as go
        return go.Figure()

    marker = object()
    build(marker)
    build(marker)
    assert len(calls) == 2
    build([1, 2.5, "x"])
    build([1, 2.5, "x"])
    assert len(calls) == 3
