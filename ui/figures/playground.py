"""Playground figures: the top-k selection view, the per-head attention heatmaps and the ranked
scores of one query (the compare page reuses the ranked scores through ui.detail)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from ui.figure_cache import shared_figure
from ui.figures.common import *  # noqa: F403
from ui.figures.common import (_axis_suffix, _category_axis, _facet_grid, _factor_plan,
                               _query_key_layout)


# A click target per drawn cell is an SVG path in the browser: past this many, the overview has
# none and the page offers zoom instead (box-select a region, then click in it).
MAX_CLICK_POINTS = 4_000
# Ground truth is outlined on cells at least this big; on smaller ones an outline would cover
# the cell (and its neighbours), so only the missed keys are drawn, on their own empty cells.
OUTLINE_MIN_PX = 7


def _heads_text(counts: np.ndarray, num_heads: int, up_to: str) -> list[list[str]]:
    """Hover text of the selection view: "selected by 2 of 4 head(s)", blank when none."""
    words = np.array([""] + [f"selected by {up_to}{n} of {num_heads} head(s)"
                             for n in range(1, num_heads + 1)], dtype=object)
    return words[np.clip(np.nan_to_num(counts).astype(int), 0, num_heads)].tolist()


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
    plan: GridPlan | None = None,
) -> go.Figure:
    """The top-k selection view: a query x key matrix with the selected cells marked.

    Cells (or pooled blocks) are coloured by how many heads selected a key in them, empty when
    none did, drawn edge to edge once they are small (see `plan_grid`). While there are at
    most `MAX_CLICK_POINTS` of them, an invisible scatter overlay puts one point on every
    selected cell; it carries the query index in `customdata[0]`, so a click on it can choose
    the query shown in the detail view (Plotly heatmap clicks never reach Streamlit,
    streamlit#8760). Ground-truth keys, when the example has them, are outlined where cells
    are at least `OUTLINE_MIN_PX`; on smaller cells a "ground truth missed" layer paints only
    the missed keys' empty cells red. Neither ever covers a selected cell.

    Args:
        indices: int `[H, M, k]` selected key positions, `-1` for invalid slots.
        num_keys: N.
        query_labels: M axis labels, or None for `q0..`.
        key_labels: N axis labels, or None for `k0..`.
        ground_truth: int `[M, G]` relevant key positions padded with `-1`, or None.
        title: figure title.
        clickable: draw the scatter overlay of selected cells.
        row_factor, col_factor: without a `plan`, draw blocks of this many queries x keys.
        plan: the window, pooling and cell size (`plan_grid`); overrides the factors.

    Returns:
        A `go.Figure` whose first trace is the count heatmap `[R, C]` (the plan's drawn rows
        and columns), then the "selected" scatter (if clickable and small enough), then the
        "ground truth" scatter or the "ground truth missed" heatmap (if any).
    """
    indices = np.asarray(indices)
    num_heads, num_queries, _ = indices.shape
    if plan is None:
        plan = _factor_plan(num_queries, num_keys, row_factor, col_factor)
    y_labels = plan.row_labels(shown_labels(axis_labels(query_labels, num_queries, "q")))
    x_labels = plan.col_labels(shown_labels(axis_labels(key_labels, num_keys, "k")))
    counts = pooled_head_counts(indices, plan).astype(np.float32)  # [R, C]
    counts[counts == 0] = np.nan
    blocked = plan.pooled
    cell = "queries: %{y}<br>keys: %{x}" if blocked else "query: %{y}<br>key: %{x}"
    up_to = "" if not blocked else "a key here: "
    heatmap = dict(
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
        xgap=plan.xgap,
        ygap=plan.ygap,
        name="heads selecting",
    )
    if plan.drawn_cells <= MAX_HOVER_TEXT_CELLS:
        heatmap.update(text=_heads_text(counts, num_heads, up_to),
                       hovertemplate=f"{cell}<br>%{{text}}<extra></extra>")
    else:  # no text per cell: hover on drawn cells only, so an empty one never says "NaN"
        heatmap.update(hoverongaps=False, hovertemplate=(
            f"{cell}<br>selected by {up_to}%{{z}} of {num_heads} head(s)<extra></extra>"))
    traces = [heatmap]
    point_size = float(np.clip(min(plan.cell_width, plan.cell_height), 6, 14))
    rows, cols = np.nonzero(np.isfinite(counts))
    if clickable and rows.size <= MAX_CLICK_POINTS:
        traces.append(dict(
            type="scatter",
            x=[x_labels[c] for c in cols],
            y=[y_labels[r] for r in rows],
            mode="markers",
            # Invisible until clicked: the cell's own colour is the information; a clicked
            # point shows as a light dot (Plotly would otherwise fade the rest to 0.2).
            marker=dict(size=point_size, color="rgba(0,0,0,0)"),
            selected=dict(marker=dict(color=SELECTED_COLOR, size=min(point_size, 9))),
            unselected=dict(marker=dict(opacity=0)),
            # [query, key, heads]: the first query and key of a block when blocked.
            # Plain lists, not a typed array: Streamlit returns a clicked point's customdata as
            # JSON, and a typed-array row would arrive as {"0": ..., "1": ...}.
            customdata=np.stack(
                [plan.first_row(rows), plan.first_col(cols), counts[rows, cols].astype(int)],
                axis=-1).tolist(),
            hovertemplate=(
                f"{cell}<br>selected by {up_to}%{{customdata[2]}} of {num_heads} head(s)"
                "<br>click to inspect this query<extra></extra>"
            ),
            name="selected (click a cell to inspect its query)",
            showlegend=False,
        ))
    if ground_truth is not None:
        truth = np.asarray(ground_truth)
        truth_rows, slots = np.nonzero((truth >= 0) & (truth < num_keys))
        truth_keys = truth[truth_rows, slots]
        holds_truth = pooled_cells(truth_rows, truth_keys, plan)  # [R, C]
        if min(plan.cell_width, plan.cell_height) >= OUTLINE_MIN_PX:
            rows, cols = np.nonzero(holds_truth)
            hit = np.isfinite(counts[rows, cols])
            traces.append(dict(
                type="scatter",
                x=[x_labels[c] for c in cols],
                y=[y_labels[r] for r in rows],
                mode="markers",
                # An outline the size of the cell: the cell's colour stays visible inside it.
                marker=dict(symbol="square-open", size=point_size + 2, color=GROUND_TRUTH_COLOR,
                            line=dict(width=1.5)),
                customdata=np.stack(
                    [plan.first_row(rows), plan.first_col(cols), hit.astype(int)],
                    axis=-1).tolist(),
                hovertemplate=(f"ground truth<br>{cell}<br>selected: %{{customdata[2]}}"
                               "<extra></extra>"),
                name="ground truth",
            ))
        else:
            # A miss: a ground-truth key no head selected; only empty blocks are painted.
            selected_any = indices >= 0
            picked = np.zeros((num_queries, 1), bool) if truth_keys.size == 0 else (
                (indices[:, truth_rows, :] == truth_keys[None, :, None]) & selected_any[
                    :, truth_rows, :]).any(axis=(0, 2))
            missed = pooled_cells(truth_rows[~picked], truth_keys[~picked], plan)
            missed &= ~np.isfinite(counts)
            traces.append(dict(
                type="heatmap",
                z=np.where(missed, 1.0, np.nan).astype(np.float32),
                x=x_labels,
                y=y_labels,
                zmin=0, zmax=1,
                colorscale=[[0, GROUND_TRUTH_COLOR], [1, GROUND_TRUTH_COLOR]],
                showscale=False,
                xgap=plan.xgap,
                ygap=plan.ygap,
                hoverongaps=False,
                hovertemplate=f"{cell}<br>ground truth missed by every head<extra></extra>",
                name=f"ground truth missed ({int((~picked).sum())} of {truth_keys.size})",
                showlegend=True,
            ))
    default_title = f"Top-k selection: {num_queries} queries × {num_keys} keys"
    described = plan.describe()
    if described:
        default_title += f" ({described})"
    layout = _query_key_layout(title or default_title, x_labels, y_labels, plan)
    return go.Figure(dict(data=traces, layout=layout))


def plan_head_panels(num_rows: int, num_cols: int, num_heads: int, *, max_cols: int = 2,
                     width_px: float = VIEW_WIDTH_PX, rows: tuple[int, int] | None = None,
                     cols: tuple[int, int] | None = None) -> GridPlan:
    """The `GridPlan` of one facet of the per-head grid (`max_cols` facets a row)."""
    facets_per_row = max(1, min(max_cols, num_heads))
    facet_rows = -(-num_heads // facets_per_row)
    panel_width = (width_px - PANEL_GAP_PX * (facets_per_row - 1)) / facets_per_row
    panel_height = float(np.clip(560 / facet_rows, 160, 320))
    return plan_grid(num_rows, num_cols, width_px=panel_width, height_px=panel_height,
                     max_cell_height=20, rows=rows, cols=cols)


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
    plan: GridPlan | None = None,
) -> go.Figure:
    """Per-head attention heatmaps from a full `[H, M, N]` grid (see `slot_heatmaps_figure`).

    Args:
        weights: float `[H, M, N]`, NaN on unselected cells (see `scatter_to_grid`).
        query_labels: M labels, or None.
        key_labels: N labels, or None.
        head_names: H facet titles, or None for `head 0..`.
        title: figure title.
        max_cols: facets per row.
        row_factor, col_factor: without a `plan`, draw the largest weight in each block of
            this many queries x keys (see `aggregate_grid`).
        plan: window, pooling and cell size of one facet (`plan_head_panels`).

    Returns:
        A `go.Figure` with H heatmap traces (trace h is head h, `z` is `[R, C]`) that all use
        `coloraxis`, so one colour bar holds for every head.
    """
    weights = np.asarray(weights, dtype=np.float64)
    num_heads, num_queries, num_keys = weights.shape
    if plan is None:
        plan = _factor_plan(num_queries, num_keys, row_factor, col_factor)
    (r0, r1), (c0, c1) = plan.rows, plan.cols
    pooled = aggregate_grid(weights[:, r0:r1, c0:c1], plan.row_factor, plan.col_factor)
    return _heatmap_grid_figure(pooled.astype(np.float32), plan, query_labels, key_labels,
                                head_names, title, max_cols)


def slot_heatmaps_figure(
    scores: np.ndarray,
    indices: np.ndarray,
    *,
    num_keys: int,
    plan: GridPlan | None = None,
    query_labels: Sequence[str] | None = None,
    key_labels: Sequence[str] | None = None,
    head_names: Sequence[str] | None = None,
    title: str | None = None,
    max_cols: int = 2,
) -> go.Figure:
    """Per-head attention heatmaps straight from the slots: one facet per head, one colour bar.

    The weights are scattered to the plan's drawn blocks (`pooled_slot_max`) without building
    `[H, M, N]`; a pooled block shows the largest weight in it, an empty one stays empty.

    Args:
        scores: float `[H, M, k]` slot weights.
        indices: int `[H, M, k]` key positions, `-1` for invalid slots.
        num_keys: N.
        plan: window, pooling and cell size of one facet; None: `plan_head_panels`.
        query_labels, key_labels, head_names, title, max_cols: as `head_heatmaps_figure`.

    Returns:
        As `head_heatmaps_figure`.
    """
    indices = np.asarray(indices)
    num_heads, num_queries, _ = indices.shape
    if plan is None:
        plan = plan_head_panels(num_queries, num_keys, num_heads, max_cols=max_cols)
    pooled = pooled_slot_max(scores, indices, plan)  # [H, R, C]
    return _heatmap_grid_figure(pooled, plan, query_labels, key_labels, head_names, title,
                                max_cols)


def _heatmap_grid_figure(pooled, plan, query_labels, key_labels, head_names, title, max_cols):
    """The facet grid of `head_heatmaps_figure` from already pooled `[H, R, C]` weights."""
    num_heads = pooled.shape[0]
    y_labels = plan.row_labels(shown_labels(axis_labels(query_labels, plan.num_rows, "q")))
    x_labels = plan.col_labels(shown_labels(axis_labels(key_labels, plan.num_cols, "k")))
    blocked = plan.pooled
    cell = "queries: %{y}<br>keys: %{x}<br>max weight" if blocked else (
        "query: %{y}<br>key: %{x}<br>weight")
    names = list(head_names) if head_names is not None else [f"head {h}" for h in range(num_heads)]
    cols = min(max_cols, num_heads)
    rows = -(-num_heads // cols)
    with_text = pooled.size <= MAX_HOVER_TEXT_CELLS
    panel_height = plan.plot_height + 40  # the facet's title and the gap above it
    x_ticks = tick_labels(x_labels, plan.cell_width, rotate_if_crowded=True)
    y_ticks = tick_labels(y_labels, plan.cell_height)
    left, bottom = query_key_margins(x_ticks, y_ticks)
    height = 70 + rows * panel_height + bottom
    axes, annotations = _facet_grid(
        num_heads, rows, cols, names, hgap=0.04, vgap=min(0.3, 44 / max(height - 180, 1)))
    traces = []
    for head in range(num_heads):
        suffix = _axis_suffix(head)
        col = head % cols
        trace = dict(
            type="heatmap",
            z=pooled[head],
            x=x_labels,
            y=y_labels,
            xaxis=f"x{suffix}",
            yaxis=f"y{suffix}",
            coloraxis="coloraxis",
            xgap=plan.xgap,
            ygap=plan.ygap,
            name=names[head],
        )
        if with_text:  # blank, never "NaN", on an unselected cell
            trace.update(text=hover_text(pooled[head], ".4f"),
                         hovertemplate=f"{names[head]}<br>{cell}: %{{text}}<extra></extra>")
        else:
            trace.update(hoverongaps=False,
                         hovertemplate=f"{names[head]}<br>{cell}: %{{z:.4f}}<extra></extra>")
        traces.append(trace)
        # Zoom and pan move every facet together; tick labels only on the outer edges.
        axes[f"xaxis{suffix}"].update(
            _category_axis(x_labels, "key" if head + cols >= num_heads else ""),
            matches=None if head == 0 else "x",
            showticklabels=head + cols >= num_heads,
            **x_ticks,
        )
        axes[f"yaxis{suffix}"].update(
            _category_axis(y_labels, "query" if col == 0 else "", reversed_=True),
            matches=None if head == 0 else "y",
            showticklabels=col == 0,
            **y_ticks,
        )
    for axis in axes.values():
        if axis.get("matches") is None:
            axis.pop("matches", None)
    # The colour axis spans the selected weights only: softmax over k near-equal scores gives
    # weights within a few percent of 1/k, and a 0-based axis would paint them all one colour.
    finite = pooled[np.isfinite(pooled)]
    cmin = float(finite.min()) if finite.size else 0.0
    cmax = float(finite.max()) if finite.size else 1.0
    if cmax - cmin < 1e-6:
        cmin, cmax = min(cmin, 0.0), max(cmax, 1e-6)
    default_title = f"Attention weights per head ({num_heads} heads, unselected cells empty)"
    described = plan.describe()
    if described:
        default_title += f", {'max over ' if blocked else ''}{described}"
    layout = dict(
        title=dict(text=title or default_title, yref="container", y=1.0, yanchor="top",
                   pad=dict(t=12)),
        coloraxis=dict(
            colorscale=SEQUENTIAL_COLORSCALE,
            cmin=cmin,
            cmax=cmax,
            colorbar=dict(title=dict(text="max weight<br>in block" if blocked
                                     else "attention<br>weight"), thickness=14),
        ),
        annotations=annotations,
        height=height,
        **axes,
    )
    fixed_margins(layout, left=left, right=COLORBAR_PX, top=70, bottom=bottom)
    return go.Figure(dict(data=traces, layout=layout))


# Top margin of the ranked scores: a title row (about 30 px) above a legend row (about 30 px)
# above the first facet's own title.
RANKED_TOP_PX = 100
# A query label in the ranked scores' title is cut here (about half the narrow column's width).
TITLE_LABEL_CHARS = 28


@shared_figure  # equal arguments, one figure for every session (the detail of a shared URL)
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
    x_labels = shown_labels(axis_labels(key_labels, num_keys, "k"))
    valid = np.ones(num_keys, bool) if valid_keys is None else np.asarray(valid_keys, bool)
    axes, annotations = _facet_grid(
        num_heads, num_heads, 1, [f"head {h}" for h in range(num_heads)],
        hgap=0.0, vgap=min(0.08, 0.4 / num_heads))
    traces: list[dict] = []
    shapes: list[dict] = []
    num_valid = int(valid.sum())
    shown = num_valid if max_ranks is None else min(max_ranks, num_valid)
    scope = "all keys" if shown == num_valid else f"the best {shown} of {num_valid} keys"
    # The label cut to fit the title on one line (a long text label ran past the figure's
    # edge); the query picker and the detail caption show it whole.
    subject = (f"query {plotly_literal(shorten_label(query_label, TITLE_LABEL_CHARS))}"
               if query_label is not None else "query")
    for head in range(num_heads):
        suffix = _axis_suffix(head)
        keys = np.flatnonzero(valid)
        order = keys[np.argsort(-logits[head, keys], kind="stable")]  # ranked key positions
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
            title=dict(text=f"rank among {scope} (1 = highest score)" if last else ""),
            showticklabels=last,
            **({} if head == 0 else {"matches": "x"}),
        )
        axes[f"yaxis{suffix}"].update(title=dict(text="score"))
    height = RANKED_TOP_PX + 150 * num_heads + 90
    layout = dict(
        # The title pinned to the top of the figure, the legend in its own row under it and
        # above the first facet's title, both placed in pixels from the top (a paper-relative
        # legend offset grew with the heads and ran into the title).
        title=dict(text=f"Ranked scores of {subject}", yref="container", y=1.0,
                   yanchor="top", pad=dict(t=10)),
        shapes=shapes,
        annotations=annotations,
        barmode="overlay",
        bargap=0.1,
        height=height,
        legend=dict(orientation="h", yref="container", y=1.0 - 36 / height, yanchor="top",
                    xanchor="right", x=1.0),
        **axes,
    )
    # Score ticks are short numbers; the last facet's rank axis has its title under it.
    numeric_margins(layout, top=RANKED_TOP_PX)
    return go.Figure(dict(data=traces, layout=layout))


