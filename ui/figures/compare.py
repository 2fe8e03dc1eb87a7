"""Compare-page figures: selector colours, the A/B diff map, metric histograms, the k-sweep and
head agreement."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from ui.figures.common import *  # noqa: F403
from ui.figures.common import _axis_suffix, _category_axis, _facet_grid, _query_key_layout

# ----------------------------------------------------------------------------- compare page

# Okabe–Ito: distinguishable with the common colour-vision deficiencies, on both themes. Sky
# blue comes last: next to the blue it read as the same selector (cosine and ann in a 5-way
# comparison); with up to seven selectors no two share a hue family.
SELECTOR_COLORS = (
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#F0E442", "#999999", "#56B4E9",
)
# Lines that coincide (two exact selectors in a k-sweep) must both stay visible: each selector
# also gets a dash pattern and a marker, and earlier ones are drawn wider, underneath.
SELECTOR_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
SELECTOR_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x", "star", "cross",
                    "triangle-down")
# The diff map: the two selectors' own keys in two strong hues, the keys they share in a
# neutral grey, so disagreement is what catches the eye.
DIFF_COLORS = {"a_only": "#0072B2", "b_only": "#E69F00", "both": "#8c8c8c"}
_DIFF_CODES = {"a_only": 1, "b_only": 2, "both": 3}


def selector_color(position: int) -> str:
    """The colour of the selector at `position` in a comparison (the same in every figure)."""
    return SELECTOR_COLORS[position % len(SELECTOR_COLORS)]


def membership_grid(indices: np.ndarray, num_keys: int) -> np.ndarray:
    """Which keys each query selected.

    Args:
        indices: int `[M, k]` key positions, `-1` for invalid slots.
        num_keys: N.

    Returns:
        bool `[M, N]`, True where the query selected the key.
    """
    indices = np.asarray(indices)
    member = np.zeros((indices.shape[0], num_keys), dtype=bool)  # [M, N]
    rows, slots = np.nonzero((indices >= 0) & (indices < num_keys))
    member[rows, indices[rows, slots]] = True
    return member


def selection_diff_grid(indices_a: np.ndarray, indices_b: np.ndarray, num_keys: int,
                        row_factor: int = 1, col_factor: int = 1) -> np.ndarray:
    """Codes each (query, key) cell by who selected it: 1 A only, 2 B only, 3 both, NaN neither.

    Args:
        indices_a: int `[M, k_a]` selector A's keys, `-1` for invalid slots.
        indices_b: int `[M, k_b]` selector B's keys.
        num_keys: N.
        row_factor, col_factor: pool blocks of this many queries x keys; a block is "both" when
            A and B each selected some cell in it (not necessarily the same one).

    Returns:
        float `[M, N]` (or `[M/r, N/c]`) of codes 1, 2, 3 and NaN.
    """
    member_a = membership_grid(indices_a, num_keys).astype(np.float64)
    member_b = membership_grid(indices_b, num_keys).astype(np.float64)
    if row_factor > 1 or col_factor > 1:
        member_a = aggregate_grid(member_a, row_factor, col_factor)
        member_b = aggregate_grid(member_b, row_factor, col_factor)
    codes = member_a + 2 * member_b  # 1: A only, 2: B only, 3: both
    codes[codes == 0] = np.nan
    return codes


def selection_diff_figure(
    indices_a: np.ndarray,
    indices_b: np.ndarray,
    *,
    num_keys: int,
    names: tuple[str, str] = ("A", "B"),
    head: int | None = None,
    query_labels: Sequence[str] | None = None,
    key_labels: Sequence[str] | None = None,
    row_factor: int = 1,
    col_factor: int = 1,
    plan: GridPlan | None = None,
) -> go.Figure:
    """The A/B diff map: which keys only A picked, only B picked, or both, for every query.

    Args:
        indices_a: int `[M, k_a]` selector A's keys for one head, `-1` for invalid slots.
        indices_b: int `[M, k_b]` selector B's keys for the same head.
        num_keys: N.
        names: the two selectors' names, for the legend and title.
        head: the head shown, for the title (None: no head in the title).
        query_labels, key_labels: axis labels, or None.
        row_factor, col_factor: pool blocks for large inputs (see `selection_diff_grid`).
        plan: a `plan_grid` of the whole input: its pooling, gaps and ticks (overrides the
            factors).

    Returns:
        A `go.Figure`: trace 0 is the code heatmap (`z` from `selection_diff_grid`, no hover),
        then one scatter per category ("<A> only", "<B> only", "both"), a point on each of its
        cells with `customdata` `[query, key]`, so hovering names the category and a click
        can choose the query (Plotly heatmap clicks never reach Streamlit).
    """
    indices_a, indices_b = np.asarray(indices_a), np.asarray(indices_b)
    num_queries = indices_a.shape[0]
    if plan is not None:
        row_factor, col_factor = plan.row_factor, plan.col_factor
    name_a, name_b = names
    y_labels = shown_labels(axis_labels(query_labels, num_queries, "q"))
    x_labels = shown_labels(axis_labels(key_labels, num_keys, "k"))
    full = selection_diff_grid(indices_a, indices_b, num_keys)  # counts use every cell
    counts = {category: int((full == code).sum()) for category, code in _DIFF_CODES.items()}
    blocked = row_factor > 1 or col_factor > 1
    codes = full
    if blocked:
        codes = selection_diff_grid(indices_a, indices_b, num_keys, row_factor, col_factor)
        y_labels = aggregate_labels(y_labels, row_factor)
        x_labels = aggregate_labels(x_labels, col_factor)
    colors = [DIFF_COLORS["a_only"], DIFF_COLORS["b_only"], DIFF_COLORS["both"]]
    traces = [dict(
        type="heatmap",
        z=codes,
        x=x_labels,
        y=y_labels,
        zmin=0.5,
        zmax=3.5,
        colorscale=[[0.0, colors[0]], [1 / 3, colors[0]], [1 / 3, colors[1]], [2 / 3, colors[1]],
                    [2 / 3, colors[2]], [1.0, colors[2]]],
        showscale=False,
        xgap=plan.xgap if plan is not None else 1,
        ygap=plan.ygap if plan is not None else 1,
        hoverinfo="skip",
        name="diff",
    )]
    cell = "queries: %{y}<br>keys: %{x}" if blocked else "query: %{y}<br>key: %{x}"
    titles = {"a_only": f"{name_a} only", "b_only": f"{name_b} only", "both": "both"}
    for category, code in _DIFF_CODES.items():
        rows, cols = np.nonzero(codes == code)
        traces.append(dict(
            type="scatter",
            x=[x_labels[c] for c in cols],
            y=[y_labels[r] for r in rows],
            mode="markers",
            marker=dict(size=4, color=DIFF_COLORS[category], symbol="square",
                        line=dict(width=1, color="#f0f2f6")),
            selected=dict(marker=dict(size=9)),
            unselected=dict(marker=dict(opacity=0.8)),
            # Plain lists: a clicked point's customdata comes back to Streamlit as JSON.
            customdata=np.stack([rows * row_factor, cols * col_factor], axis=-1).tolist(),
            hovertemplate=f"{cell}<br>{titles[category]}<br>click to inspect this query"
                          "<extra></extra>",
            name=f"{titles[category]} ({counts[category]})",
        ))
    of_head = f", head {head}" if head is not None else ""
    title = f"{name_a} vs {name_b}{of_head}: which keys each selector picked"
    if blocked:
        title += f" (blocks of {row_factor} × {col_factor})"
    return go.Figure(dict(data=traces, layout=_query_key_layout(title, x_labels, y_labels, plan,
                                                                   colorbar=False)))


def metric_histograms_figure(
    metrics_by_selector: dict[str, dict[str, np.ndarray]],
    *,
    metric_titles: dict[str, str],
    bin_size: float = 0.05,
    unit: str = "(query, head) pairs",
) -> go.Figure:
    """Overlaid histograms of per-query metrics in [0, 1], one facet per metric.

    Args:
        metrics_by_selector: `{selector: {metric: values}}`; values of any shape are flattened
            and NaN (undefined queries) left out.
        metric_titles: `{metric: facet title}`, in facet order.
        bin_size: bin width; bins are centred on multiples of it, so recall values such as
            0.25 or 1.0 fall in the middle of a bin.
        unit: what is counted, for the y axis title.

    Returns:
        A `go.Figure` with one histogram trace per (metric, selector), metric-major; the
        selector at position i has the colour `selector_color(i)`.
    """
    metric_names = list(metric_titles)
    axes, annotations = _facet_grid(
        len(metric_names), 1, len(metric_names), [metric_titles[m] for m in metric_names],
        hgap=0.08, vgap=0.0)
    traces = []
    for facet, metric in enumerate(metric_names):
        suffix = _axis_suffix(facet)
        for position, (selector, values) in enumerate(metrics_by_selector.items()):
            data = np.asarray(values[metric], dtype=np.float64).ravel()
            traces.append(dict(
                type="histogram",
                x=data[np.isfinite(data)],
                xbins=dict(start=-bin_size / 2, end=1 + bin_size / 2, size=bin_size),
                xaxis=f"x{suffix}",
                yaxis=f"y{suffix}",
                marker=dict(color=selector_color(position)),
                opacity=0.65,
                name=selector,
                legendgroup=selector,
                showlegend=facet == 0,
                hovertemplate=f"{selector}<br>{metric_titles[metric]}: %{{x}}<br>"
                              "%{y} " + unit + "<extra></extra>",
            ))
        axes[f"xaxis{suffix}"].update(range=[-bin_size, 1 + bin_size],
                                      title=dict(text=metric_titles[metric]))
        axes[f"yaxis{suffix}"].update(title=dict(text=unit if facet == 0 else ""))
    layout = dict(
        title=dict(text="Per-query metrics against exact attention"),
        barmode="overlay",
        annotations=annotations,
        height=340,
        legend=dict(orientation="h", yanchor="bottom", y=1.08, xanchor="right", x=1.0),
        **axes,
    )
    numeric_margins(layout, top=80)  # noqa: F405
    return go.Figure(dict(data=traces, layout=layout))


# Labelled ticks of the k-sweep's log axis are at least this many octaves apart: closer ones
# (256 and N = 400, or 4 and a page's k of 5) print over each other in a narrow facet.
K_TICK_MIN_OCTAVES = 0.8


def _k_tick_text(ks: Sequence[int]) -> list[str]:
    """Tick labels of the sweep's increasing `ks`: N (the last) always, then from right to left
    each k at least `K_TICK_MIN_OCTAVES` below the last labelled one; the others are blank."""
    text = [""] * len(ks)
    labelled = None
    for position in range(len(ks) - 1, -1, -1):
        if labelled is None or math.log2(labelled / ks[position]) >= K_TICK_MIN_OCTAVES:
            text[position] = str(ks[position])
            labelled = ks[position]
    return text


def k_sweep_figure(
    selectors: Sequence[str],
    ks: Sequence[int],
    curves: dict[str, np.ndarray],
    *,
    metric_titles: dict[str, str],
    current_k: int | None = None,
) -> go.Figure:
    """Metrics as functions of k, one facet per metric, one line per selector.

    Args:
        selectors: S selector names.
        ks: K values of k, increasing.
        curves: `{metric: float [S, K]}`, e.g. from `sdattn.comparison.k_sweep_table`.
        metric_titles: `{metric: facet title}`, in facet order.
        current_k: the page's k, marked by a dashed line (None: no line).

    Returns:
        A `go.Figure` with one scatter trace per (metric, selector), metric-major, whose x is
        `ks` and y the curve; k on a log2 axis, so small k (where selectors differ) is not
        squeezed.
    """
    ks = [int(k) for k in ks]
    metric_names = list(metric_titles)
    axes, annotations = _facet_grid(
        len(metric_names), 1, len(metric_names), [metric_titles[m] for m in metric_names],
        hgap=0.08, vgap=0.0)
    traces = []
    shapes = []
    for facet, metric in enumerate(metric_names):
        suffix = _axis_suffix(facet)
        values = np.asarray(curves[metric], dtype=np.float64)  # [S, K]
        for position, selector in enumerate(selectors):
            traces.append(dict(
                type="scatter",
                x=ks,
                y=values[position],
                mode="lines+markers",
                line=dict(color=selector_color(position),
                          width=2 + min(1.2 * (len(selectors) - 1 - position), 5),
                          dash=SELECTOR_DASHES[position % len(SELECTOR_DASHES)]),
                marker=dict(size=6 + min(2 * (len(selectors) - 1 - position), 6),
                            symbol=SELECTOR_SYMBOLS[position % len(SELECTOR_SYMBOLS)]),
                xaxis=f"x{suffix}",
                yaxis=f"y{suffix}",
                name=selector,
                legendgroup=selector,
                showlegend=facet == 0,
                hovertemplate=f"{selector}<br>k = %{{x}}<br>{metric_titles[metric]}: "
                              "%{y:.3f}<extra></extra>",
            ))
        axes[f"xaxis{suffix}"].update(
            type="log", tickvals=ks, ticktext=_k_tick_text(ks),
            title=dict(text="k (keys per query)"))
        axes[f"yaxis{suffix}"].update(range=[-0.02, 1.05])
        if current_k is not None:
            shapes.append(dict(
                type="line", x0=current_k, x1=current_k, y0=0, y1=1,
                xref=f"x{suffix}", yref=f"y{suffix} domain",
                line=dict(dash="dash", width=1.5, color=GROUND_TRUTH_COLOR),
            ))
            annotations.append(dict(
                text=f"k = {current_k}", x=math.log10(current_k), y=0.02,
                xref=f"x{suffix}", yref=f"y{suffix} domain", xanchor="left",
                yanchor="bottom", showarrow=False, font=dict(color=GROUND_TRUTH_COLOR),
            ))
    layout = dict(
        title=dict(text="How the metrics grow with k"),
        shapes=shapes,
        annotations=annotations,
        height=360,
        legend=dict(orientation="h", yanchor="bottom", y=1.08, xanchor="right", x=1.0),
        **axes,
    )
    numeric_margins(layout, top=80)  # noqa: F405
    return go.Figure(dict(data=traces, layout=layout))


def head_agreement_figure(agreement: dict[str, np.ndarray], *, max_cols: int = 4) -> go.Figure:
    """Head-agreement heatmaps: the H x H Jaccard index of the heads' selections, per selector.

    Args:
        agreement: `{selector: float [H, H]}` (e.g. `SelectorRun.head_agreement`), NaN where
            undefined.
        max_cols: facets per row.

    Returns:
        A `go.Figure` with one heatmap trace per selector (`z` is its `[H, H]` matrix, the
        value written in each cell), all on one colour axis from 0 to 1.
    """
    names = list(agreement)
    cols = min(max_cols, len(names))
    rows = -(-len(names) // cols)
    axes, annotations = _facet_grid(len(names), rows, cols, names, hgap=0.05,
                                    vgap=min(0.15, 0.4 / rows))
    traces = []
    for facet, name in enumerate(names):
        suffix = _axis_suffix(facet)
        matrix = np.asarray(agreement[name], dtype=np.float64)
        labels = [f"head {h}" for h in range(matrix.shape[0])]
        traces.append(dict(
            type="heatmap",
            z=matrix,
            x=labels,
            y=labels,
            xaxis=f"x{suffix}",
            yaxis=f"y{suffix}",
            coloraxis="coloraxis",
            texttemplate="%{z:.2f}",
            xgap=1,
            ygap=1,
            hovertemplate=f"{name}<br>%{{y}} vs %{{x}}<br>mean Jaccard: %{{z:.3f}}<extra></extra>",
            name=name,
        ))
        axes[f"xaxis{suffix}"].update(_category_axis(labels, ""))
        axes[f"yaxis{suffix}"].update(_category_axis(labels, "", reversed_=True),
                                      showticklabels=facet % cols == 0)
    layout = dict(
        title=dict(text="Head agreement: mean Jaccard index of the heads' selected keys"),
        coloraxis=dict(colorscale=SEQUENTIAL_COLORSCALE, cmin=0.0, cmax=1.0,
                       colorbar=dict(title=dict(text="Jaccard"), thickness=14)),
        annotations=annotations,
        height=120 + rows * 260,
        **axes,
    )
    extent = label_extent_px(labels) + 6  # noqa: F405
    fixed_margins(layout, left=extent + 8, right=COLORBAR_PX, top=80,  # noqa: F405
                  bottom=TICK_LINE_PX + 16)  # noqa: F405
    return go.Figure(dict(data=traces, layout=layout))

