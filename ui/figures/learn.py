"""Learn-page figures: small annotated matrices of the walkthrough, every number printed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from ui.figures.common import *  # noqa: F403
from ui.figures.common import _axis_suffix, _category_axis, _facet_grid


# Blue for negative, white at zero, red for positive (ColorBrewer RdBu): signed projections and
# scores read at a glance, and zero is neutral.
DIVERGING_COLORSCALE = [
    [0.0, "#2166ac"], [0.25, "#92c5de"], [0.5, "#f7f7f7"], [0.75, "#f4a582"], [1.0, "#b2182b"],
]
# Cells that top-k dropped stay visible (their score is part of the lesson) but greyed out.
DROPPED_COLOR = "#d0d3dc"
FOCUS_COLOR = "#ff4b4b"
_WALK_CELL_PX = 26  # a row of printed numbers at 11 px stays legible


@dataclass(frozen=True)
class MatrixPanel:
    """One labelled matrix of a walkthrough figure.

    Attributes:
        values: float `[R, C]`; NaN cells are left blank (a masked key, an unselected cell).
        row_labels: R labels (top to bottom).
        col_labels: C labels (left to right).
        title: the facet title.
        dropped: optional bool `[R, C]`: cells drawn in grey with their number, e.g. the
            scores that the top-k cut leaves out.
        focus_row: a row to outline (the query the page focuses on), or None.
    """

    values: np.ndarray
    row_labels: Sequence[str]
    col_labels: Sequence[str]
    title: str
    dropped: np.ndarray | None = None
    focus_row: int | None = None


def _cell_text(values: np.ndarray, value_format: str) -> list[list[str]]:
    """Printed numbers, blank for NaN (Plotly would print "NaN")."""
    return [[format(v, value_format) if np.isfinite(v) else "" for v in row] for row in values]


def matrix_panels_figure(
    panels: Sequence[MatrixPanel],
    *,
    title: str,
    cols: int = 1,
    diverging: bool = True,
    value_format: str = ".2f",
    colorbar_title: str = "value",
) -> go.Figure:
    """Annotated heatmaps, one facet per panel, on one shared colour axis.

    Args:
        panels: the matrices, filled into the facet grid row by row.
        title: figure title.
        cols: facets per row.
        diverging: a blue-white-red scale centred on 0 (signed values); else the app's
            sequential scale from 0 to 1 (attention weights).
        value_format: Python format spec of the printed numbers.
        colorbar_title: colour bar title.

    Returns:
        A `go.Figure`: per panel, a grey "dropped" heatmap when the panel has dropped cells,
        then the value heatmap (trace `name` = the panel title, `z` = `values` with dropped
        cells blank); one rectangle shape per focused row.
    """
    count = len(panels)
    cols = max(1, min(cols, count))
    rows = -(-count // cols)
    tallest = [max(np.shape(p.values)[0] for p in panels[row * cols:(row + 1) * cols])
               for row in range(rows)]
    height = 90 + sum(60 + _WALK_CELL_PX * n for n in tallest)
    # About 60 px between facet rows: the upper row's key labels, then the lower one's title.
    axes, annotations = _facet_grid(count, rows, cols, [p.title for p in panels], hgap=0.09,
                                    vgap=60 / max(height - 80, 1) if rows > 1 else 0.0)

    for axis in axes.values():  # float sums can end at 1.0000000000000002, which Plotly refuses
        axis["domain"] = [min(max(bound, 0.0), 1.0) for bound in axis["domain"]]

    def same_labels(index: int, other: int, attribute: str) -> bool:
        if not 0 <= other < count:
            return False
        return list(getattr(panels[index], attribute)) == list(getattr(panels[other], attribute))
    finite = [np.asarray(p.values, float)[np.isfinite(np.asarray(p.values, float))]
              for p in panels]
    finite = np.concatenate(finite) if finite else np.zeros(0)
    if diverging:
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        coloraxis = dict(colorscale=DIVERGING_COLORSCALE, cmid=0.0, cmin=-max(bound, 1e-6),
                         cmax=max(bound, 1e-6))
    else:
        coloraxis = dict(colorscale=SEQUENTIAL_COLORSCALE, cmin=0.0, cmax=1.0)
    coloraxis["colorbar"] = dict(title=dict(text=colorbar_title), thickness=12)
    traces: list[dict] = []
    shapes: list[dict] = []
    for index, panel in enumerate(panels):
        suffix = _axis_suffix(index)
        values = np.asarray(panel.values, dtype=np.float64)  # [R, C]
        y_labels = shown_labels(axis_labels(list(panel.row_labels), values.shape[0], "r"))
        x_labels = shown_labels(axis_labels(list(panel.col_labels), values.shape[1], "c"))
        on_axes = dict(x=x_labels, y=y_labels, xaxis=f"x{suffix}", yaxis=f"y{suffix}",
                       xgap=1, ygap=1)
        shown = values
        if panel.dropped is not None:
            dropped = np.asarray(panel.dropped, bool) & np.isfinite(values)
            shown = np.where(dropped, np.nan, values)
            traces.append(dict(
                type="heatmap", z=np.where(dropped, 0.0, np.nan), showscale=False,
                colorscale=[[0, DROPPED_COLOR], [1, DROPPED_COLOR]], zmin=0, zmax=1,
                text=_cell_text(np.where(dropped, values, np.nan), value_format),
                texttemplate="%{text}", textfont=dict(size=10, color="#6b6f7b"),
                hovertemplate=(f"{panel.title}<br>%{{y}}, %{{x}}: %{{text}} "
                               "(dropped)<extra></extra>"),
                name=f"{panel.title} (dropped)", **on_axes,
            ))
        traces.append(dict(
            type="heatmap", z=shown, coloraxis="coloraxis",
            text=_cell_text(shown, value_format), texttemplate="%{text}",
            textfont=dict(size=11),
            # The printed text, not %{z}: a blank cell hovers blank, never "NaN".
            hovertemplate=f"{panel.title}<br>%{{y}}, %{{x}}: %{{text}}<extra></extra>",
            name=panel.title, **on_axes,
        ))
        # Tick labels once per run of equal labels: the row below or the facet to the left
        # already names them (Q/K/V of one head, the heads of the scores).
        # Explicit ranges: a panel whose every cell is blank (all keys masked) keeps its rows
        # and columns instead of collapsing to one row.
        y_axis = _category_axis(y_labels, "", reversed_=True)
        y_axis.pop("autorange")
        axes[f"xaxis{suffix}"].update(
            _category_axis(x_labels, ""), tickangle=-30, range=[-0.5, len(x_labels) - 0.5],
            showticklabels=not same_labels(index, index + cols, "col_labels"))
        axes[f"yaxis{suffix}"].update(
            y_axis, range=[len(y_labels) - 0.5, -0.5],
            showticklabels=index % cols == 0 or not same_labels(index, index - 1, "row_labels"))
        if not np.isfinite(values).any():  # say why the panel is empty
            annotations.append(dict(
                text="every key is masked:<br>nothing to show", xref=f"x{suffix} domain",
                yref=f"y{suffix} domain", x=0.5, y=0.5, showarrow=False,
                font=dict(size=13, color="#6b6f7b")))
        if panel.focus_row is not None:
            shapes.append(dict(
                type="rect", xref=f"x{suffix} domain", yref=f"y{suffix}",
                x0=0, x1=1, y0=panel.focus_row - 0.5, y1=panel.focus_row + 0.5,
                line=dict(color=FOCUS_COLOR, width=2.5), fillcolor="rgba(0,0,0,0)",
            ))
    layout = dict(
        title=dict(text=title),
        coloraxis=coloraxis,
        annotations=annotations,
        shapes=shapes,
        height=height,
        margin=dict(l=10, r=10, t=70, b=10),
        **axes,
    )
    return go.Figure(dict(data=traces, layout=layout))


def walkthrough_figure(walkthrough, step_key: str, focus_query: int = 0) -> go.Figure:
    """The figure of one walkthrough step (see `sdattn.walkthrough.build_walkthrough`).

    Args:
        walkthrough: a `Walkthrough`.
        step_key: one of its step keys: `query`, `projections`, `scores`, `top_k`, `softmax`,
            `weighted_sum`, `output`.
        focus_query: the query row to outline.

    Returns:
        A `matrix_panels_figure`: the sparse rows X; Q, K, V per head; the scores per head
        (masked keys blank); the same scores with the dropped ones grey; the weights on the
        kept keys; the per-head context; the output.
    """
    if step_key not in [step.key for step in walkthrough.steps]:
        raise ValueError(f"Received an invalid value for argument `step_key`, expected a step of "
                         f"the walkthrough. Received: step_key={step_key!r}")
    step = walkthrough.step(step_key)
    arrays = step.arrays
    queries, keys = walkthrough.query_labels, walkthrough.key_labels
    focus = int(focus_query)

    def dims(prefix: str, count: int) -> list[str]:
        return [f"{prefix}{i}" for i in range(count)]

    if step_key == "query":
        query = np.asarray(arrays["query"], float)  # [M, Dq]
        panels = [MatrixPanel(np.where(query != 0, query, np.nan), queries,
                              dims("d", query.shape[1]), "X: sparse query rows (blank = 0)",
                              focus_row=focus)]
        return matrix_panels_figure(panels, title=step.title)
    if step_key == "projections":
        panels = []
        num_heads = arrays["query"].shape[0]
        for head in range(num_heads):
            for name, labels, focus_row in (("query", queries, focus), ("key", keys, None),
                                            ("value", keys, None)):
                matrix = np.asarray(arrays[name][head], float)  # [M or N, d]
                letter = name[0].upper()
                panels.append(MatrixPanel(matrix, labels, dims("", matrix.shape[1]),
                                          f"{letter} head {head}", focus_row=focus_row))
        return matrix_panels_figure(panels, title=step.title, cols=3)
    if step_key in ("scores", "top_k"):
        scores = np.asarray(walkthrough.step("scores").arrays["scores"], float)  # [H, M, N]
        allowed = np.asarray(walkthrough.step("scores").arrays["allowed"], bool)
        scores = np.where(allowed, scores, np.nan)  # masked keys: blank
        kept = np.asarray(walkthrough.step("top_k").arrays["kept"], bool)
        panels = [
            MatrixPanel(scores[head], queries, keys,
                        f"S head {head}" + (" (grey: dropped by top-k)" if step_key == "top_k"
                                            else ""),
                        dropped=~kept[head] if step_key == "top_k" else None, focus_row=focus)
            for head in range(scores.shape[0])
        ]
        return matrix_panels_figure(panels, title=step.title, colorbar_title="score")
    if step_key == "softmax":
        weights = np.asarray(arrays["weights"], float)  # [H, M, k]
        indices = np.asarray(walkthrough.step("top_k").arrays["indices"])
        grid = scatter_to_grid(weights, indices, len(keys))  # [H, M, N], NaN unselected
        panels = [MatrixPanel(grid[head], queries, keys, f"A head {head} (blank: not kept)",
                              focus_row=focus) for head in range(grid.shape[0])]
        return matrix_panels_figure(panels, title=step.title, diverging=False,
                                    colorbar_title="weight")
    if step_key == "weighted_sum":
        context = np.asarray(arrays["context"], float)  # [H, M, vd]
        panels = [MatrixPanel(context[head], queries, dims("", context.shape[2]),
                              f"C head {head}", focus_row=focus)
                  for head in range(context.shape[0])]
        return matrix_panels_figure(panels, title=step.title, cols=len(panels))
    if step_key == "output":
        output = np.asarray(arrays["output"], float).reshape(len(queries), -1)  # [M, Dout]
        panels = [MatrixPanel(output, queries, dims("o", output.shape[1]), "O: layer output",
                              focus_row=focus)]
        return matrix_panels_figure(panels, title=step.title)
    raise ValueError(f"Received an invalid value for argument `step_key`, expected a step this "
                     f"figure knows. Received: step_key={step_key!r}")
