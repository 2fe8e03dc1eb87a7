"""ui.figure_cache: equal arguments (arrays by content, not identity) share one figure; any
difference, down to one element or one label, builds a new one."""

import numpy as np

from ui import figures
from ui.figure_cache import shared_figure


def test_equal_arguments_share_one_figure_and_any_difference_builds_another():
    indices = np.array([[[0, 1], [2, -1]]], dtype=np.int32)  # [H, M, k]
    first = figures.selection_figure(indices, num_keys=3, key_labels=["a", "b", "c"])
    again = figures.selection_figure(indices.copy(), num_keys=3, key_labels=["a", "b", "c"])
    assert again is first
    changed = indices.copy()
    changed[0, 1, 0] = 1
    assert figures.selection_figure(changed, num_keys=3, key_labels=["a", "b", "c"]) is not first
    assert figures.selection_figure(indices, num_keys=3, key_labels=["a", "b", "x"]) is not first
    assert figures.selection_figure(indices.astype(np.int64), num_keys=3,
                                    key_labels=["a", "b", "c"]) is not first
    # What st.plotly_chart sends is what the builder made.
    assert first.to_dict() == figures.selection_figure.uncached(
        indices, num_keys=3, key_labels=["a", "b", "c"]).to_dict()


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
