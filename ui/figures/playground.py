"""Playground figures: the top-k selection view, the per-head attention heatmaps and the ranked
scores of one query (the compare page reuses the ranked scores through ui.detail)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from ui.figures.common import *  # noqa: F403
from ui.figures.common import _axis_suffix, _category_axis, _cell_height, _facet_grid, _query_key_layout


def selection_figure(
    indices: np.ndarray,
    *,
    num_keys: int,
    query_labels: Sequence[str] | None = None,
    key_labels: Sequence[str] | None = None,
    ground_truth: np.ndarray | None = None,
    title: str | None = None,
    clickable: bool = True,
    row_factor: int = 1,
    col_factor: int = 1,
) -> go.Figure:
    """The top-k selection view: a query x key matrix with the selected cells marked.

    Cells are coloured by how many heads selected them (empty when none did). A scatter
    overlay puts one point on every selected cell; it carries the query index in
    `customdata[0]`, so a click on it can choose the query shown in the detail view (Plotly
    heatmap clicks never reach Streamlit, streamlit#8760). Ground-truth keys, when the example
    has them, are drawn as open squares, so a missed key shows as a square on an empty cell.

    Args:
        indices: int `[H, M, k]` selected key positions, `-1` for invalid slots.
        num_keys: N.
        query_labels: M axis labels, or None for `q0..`.
        key_labels: N axis labels, or None for `k0..`.
        ground_truth: int `[M, G]` relevant key positions padded with `-1`, or None.
        title: figure title.
        clickable: draw the scatter overlay of selected cells.
        row_factor, col_factor: for large inputs, draw blocks of this many queries x keys
            (each block shows the most heads that selected any cell in it, and its points carry
            the block's first query).

    Returns:
        A `go.Figure` whose first trace is the count heatmap `[M, N]` (or `[M/r, N/c]`), then
        the "selected" scatter (if clickable), then the "ground truth" scatter (if any).
    """
    indices = np.asarray(indices)
    num_heads, num_queries, _ = indices.shape
    y_labels = axis_labels(query_labels, num_queries, "q")
    x_labels = axis_labels(key_labels, num_keys, "k")
    counts = selection_counts(indices, num_keys).astype(np.float64)  # [M, N]
    counts[counts == 0] = np.nan
    blocked = row_factor > 1 or col_factor > 1
    if blocked:
        counts = aggregate_grid(counts, row_factor, col_factor)  # [M/r, N/c]
        y_labels = aggregate_labels(y_labels, row_factor)
        x_labels = aggregate_labels(x_labels, col_factor)
    cell = "queries: %{y}<br>keys: %{x}" if blocked else "query: %{y}<br>key: %{x}"
    up_to = "up to " if blocked else ""

    traces = [dict(
        type="heatmap",
        z=counts,
        x=x_labels,
        y=y_labels,
        zmin=0.5,
        zmax=num_heads + 0.5,
        colorscale=SEQUENTIAL_COLORSCALE,
        colorbar=dict(
            title=dict(text="heads<br>selecting"),
            tickmode="array",
            tickvals=list(range(1, num_heads + 1)),
            thickness=14,
        ),
        xgap=1,
        ygap=1,
        hovertemplate=f"{cell}<br>selected by {up_to}%{{z}} of {num_heads} head(s)<extra></extra>",
        name="heads selecting",
    )]
    if clickable:
        rows, cols = np.nonzero(np.isfinite(counts))
        traces.append(dict(
            type="scatter",
            x=[x_labels[c] for c in cols],
            y=[y_labels[r] for r in rows],
            mode="markers",
            marker=dict(size=5, color=SELECTED_COLOR, line=dict(width=1, color="#262730")),
            # A clicked point grows; the others stay visible (Plotly would fade them to 0.2).
            selected=dict(marker=dict(size=10)),
            unselected=dict(marker=dict(opacity=0.7)),
            # [query, key, heads]: the first query and key of a block when blocked.
            # Plain lists, not a typed array: Streamlit returns a clicked point's customdata as
            # JSON, and a typed-array row would arrive as {"0": ..., "1": ...}.
            customdata=np.stack(
                [rows * row_factor, cols * col_factor, counts[rows, cols].astype(int)], axis=-1
            ).tolist(),
            hovertemplate=(
                f"{cell}<br>selected by {up_to}%{{customdata[2]}} of {num_heads} head(s)"
                "<br>click to inspect this query<extra></extra>"
            ),
            name="selected (click a point to inspect its query)",
        ))
    if ground_truth is not None:
        truth = np.asarray(ground_truth)
        rows, slots = np.nonzero((truth >= 0) & (truth < num_keys))
        cells = np.unique(
            np.stack([rows // row_factor, truth[rows, slots] // col_factor], axis=-1), axis=0)
        rows, cols = cells[:, 0], cells[:, 1]
        hit = np.isfinite(counts[rows, cols])
        traces.append(dict(
            type="scatter",
            x=[x_labels[c] for c in cols],
            y=[y_labels[r] for r in rows],
            mode="markers",
            marker=dict(
                symbol="square-open", size=11, color=GROUND_TRUTH_COLOR, line=dict(width=2)),
            customdata=np.stack(
                [rows * row_factor, cols * col_factor, hit.astype(int)], axis=-1).tolist(),
            hovertemplate=f"ground truth<br>{cell}<br>selected: %{{customdata[2]}}<extra></extra>",
            name="ground truth",
        ))
    default_title = f"Top-k selection: {num_queries} queries × {num_keys} keys"
    if blocked:
        default_title += f" (blocks of {row_factor} × {col_factor})"
    return go.Figure(dict(data=traces, layout=_query_key_layout(title or default_title, x_labels, y_labels)))


def head_heatmaps_figure(
    weights: np.ndarray,
    *,
    query_labels: Sequence[str] | None = None,
    key_labels: Sequence[str] | None = None,
    head_names: Sequence[str] | None = None,
    title: str | None = None,
    max_cols: int = 2,
    row_factor: int = 1,
    col_factor: int = 1,
) -> go.Figure:
    """Per-head attention heatmaps: one facet per head, one shared colour axis.

    Args:
        weights: float `[H, M, N]`, NaN on unselected cells (see `scatter_to_grid`).
        query_labels: M labels, or None.
        key_labels: N labels, or None.
        head_names: H facet titles, or None for `head 0..`.
        title: figure title.
        max_cols: facets per row.
        row_factor, col_factor: for large inputs, draw the largest weight in each block of
            this many queries x keys (see `aggregate_grid`).

    Returns:
        A `go.Figure` with H heatmap traces (trace h is head h, `z` is `[M, N]`, or
        `[M/r, N/c]` when blocked) that all use `coloraxis`, so one colour bar holds for every
        head.
    """
    weights = np.asarray(weights, dtype=np.float64)
    num_heads, num_queries, num_keys = weights.shape
    y_labels = axis_labels(query_labels, num_queries, "q")
    x_labels = axis_labels(key_labels, num_keys, "k")
    blocked = row_factor > 1 or col_factor > 1
    if blocked:
        weights = aggregate_grid(weights, row_factor, col_factor)  # [H, M/r, N/c]
        y_labels = aggregate_labels(y_labels, row_factor)
        x_labels = aggregate_labels(x_labels, col_factor)
        num_queries = len(y_labels)
    cell = "queries: %{y}<br>keys: %{x}<br>max weight" if blocked else (
        "query: %{y}<br>key: %{x}<br>weight")
    names = list(head_names) if head_names is not None else [f"head {h}" for h in range(num_heads)]
    cols = min(max_cols, num_heads)
    rows = -(-num_heads // cols)

    axes, annotations = _facet_grid(
        num_heads, rows, cols, names, hgap=0.04, vgap=min(0.12, 0.3 / rows))
    traces = []
    for head in range(num_heads):
        suffix = _axis_suffix(head)
        row, col = divmod(head, cols)
        traces.append(dict(
            type="heatmap",
            z=weights[head],
            x=x_labels,
            y=y_labels,
            xaxis=f"x{suffix}",
            yaxis=f"y{suffix}",
            coloraxis="coloraxis",
            xgap=1,
            ygap=1,
            hovertemplate=f"{names[head]}<br>{cell}: %{{z:.4f}}<extra></extra>",
            name=names[head],
        ))
        # Zoom and pan move every facet together; tick labels only on the outer edges.
        axes[f"xaxis{suffix}"].update(
            _category_axis(x_labels, "key" if head + cols >= num_heads else ""),
            matches=None if head == 0 else "x",
            showticklabels=head + cols >= num_heads,
        )
        axes[f"yaxis{suffix}"].update(
            _category_axis(y_labels, "query" if col == 0 else "", reversed_=True),
            matches=None if head == 0 else "y",
            showticklabels=col == 0,
        )
    for axis in axes.values():
        if axis.get("matches") is None:
            axis.pop("matches", None)
    # The colour axis spans the selected weights only: softmax over k near-equal scores gives
    # weights within a few percent of 1/k, and a 0-based axis would paint them all one colour.
    finite = weights[np.isfinite(weights)]
    cmin = float(finite.min()) if finite.size else 0.0
    cmax = float(finite.max()) if finite.size else 1.0
    if cmax - cmin < 1e-6:
        cmin, cmax = min(cmin, 0.0), max(cmax, 1e-6)
    default_title = f"Attention weights per head ({num_heads} heads, unselected cells empty)"
    if blocked:
        default_title += f", max over blocks of {row_factor} × {col_factor}"
    layout = dict(
        title=dict(text=title or default_title),
        coloraxis=dict(
            colorscale=SEQUENTIAL_COLORSCALE,
            cmin=cmin,
            cmax=cmax,
            colorbar=dict(title=dict(text="attention<br>weight"), thickness=14),
        ),
        annotations=annotations,
        height=110 + rows * (50 + _cell_height(num_queries, lo=6, hi=20) * num_queries),
        margin=dict(l=10, r=10, t=70, b=10),
        **axes,
    )
    return go.Figure(dict(data=traces, layout=layout))


def ranked_scores_figure(
    logits: np.ndarray,
    selected: np.ndarray,
    *,
    top_k: int,
    key_labels: Sequence[str] | None = None,
    valid_keys: np.ndarray | None = None,
    query_label: str | None = None,
    max_ranks: int | None = None,
) -> go.Figure:
    """One query's attention scores over all keys, ranked, with a line at the k cut-off.

    Bars of keys the selector actually picked are highlighted, so a selector that is not exact
    top-k (random, window, approximate) shows picked bars below the cut-off line.

    Args:
        logits: float `[H, N]`, the query's scaled dot-product scores for every key, per head.
        selected: int `[H, k]`, the keys the selector picked for this query, `-1` invalid.
        top_k: where to draw the cut-off line.
        key_labels: N labels, or None.
        valid_keys: bool `[N]`; masked keys are left out of the ranking. None means all valid.
        query_label: used in the title.
        max_ranks: draw only the best this many ranks (thousands of bars are unreadable and
            heavy to send); None draws every valid key.

    Returns:
        A `go.Figure` with one facet row per head, each holding two bar traces
        ("selected", "not selected") whose x is the rank (1 = highest score).
    """
    logits = np.asarray(logits, dtype=np.float64)
    selected = np.asarray(selected)
    num_heads, num_keys = logits.shape
    x_labels = axis_labels(key_labels, num_keys, "k")
    valid = np.ones(num_keys, bool) if valid_keys is None else np.asarray(valid_keys, bool)
    axes, annotations = _facet_grid(
        num_heads, num_heads, 1, [f"head {h}" for h in range(num_heads)],
        hgap=0.0, vgap=min(0.08, 0.4 / num_heads))
    traces: list[dict] = []
    shapes: list[dict] = []
    for head in range(num_heads):
        suffix = _axis_suffix(head)
        keys = np.flatnonzero(valid)
        order = keys[np.argsort(-logits[head, keys], kind="stable")]  # ranked key positions
        num_ranked = order.size
        order = order[:max_ranks]
        ranks = np.arange(1, order.size + 1)
        picked = np.isin(order, selected[head][selected[head] >= 0])
        for is_picked, name, color in (
            (True, "selected", SEQUENTIAL_COLORS[7]),
            (False, "not selected", NOT_SELECTED_COLOR),
        ):
            mask = picked == is_picked
            traces.append(dict(
                type="bar",
                x=ranks[mask],
                y=logits[head, order[mask]],
                xaxis=f"x{suffix}",
                yaxis=f"y{suffix}",
                marker=dict(color=color),
                customdata=[x_labels[key] for key in order[mask]],
                hovertemplate=(
                    f"head {head}<br>rank %{{x}}: key %{{customdata}}<br>"
                    "score: %{y:.4f}<extra></extra>"
                ),
                name=name,
                legendgroup=name,
                showlegend=head == 0,
            ))
        shapes.append(dict(
            type="line", x0=top_k + 0.5, x1=top_k + 0.5, y0=0, y1=1,
            xref=f"x{suffix}", yref=f"y{suffix} domain",
            line=dict(dash="dash", width=2, color=GROUND_TRUTH_COLOR),
        ))
        annotations.append(dict(
            text=f"k = {top_k}", x=top_k + 0.5, y=1, xref=f"x{suffix}", yref=f"y{suffix} domain",
            xanchor="left", yanchor="top", showarrow=False, font=dict(color=GROUND_TRUTH_COLOR),
        ))
        last = head == num_heads - 1
        axes[f"xaxis{suffix}"].update(
            title=dict(text="rank among all keys (1 = highest score)" if last else ""),
            showticklabels=last,
            **({} if head == 0 else {"matches": "x"}),
        )
        axes[f"yaxis{suffix}"].update(title=dict(text="score"))
    subject = f"query {query_label}" if query_label is not None else "query"
    scope = "all keys" if order.size == num_ranked else f"keys (best {order.size} of {num_ranked})"
    layout = dict(
        title=dict(text=f"Ranked scores of {subject} over {scope}"),
        shapes=shapes,
        annotations=annotations,
        barmode="overlay",
        bargap=0.1,
        height=110 + 150 * num_heads,
        margin=dict(l=10, r=10, t=70, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1.0),
        **axes,
    )
    return go.Figure(dict(data=traces, layout=layout))


