"""Plotly figure builders for the sdattn app: NumPy arrays in, `go.Figure` out.
Pure (no Streamlit), so the pages stay short and every figure is unit-tested alone."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from ui.figure_cache import shared_figure
from ui.text import plotly_literal

# Viridis clipped to its middle: the darkest purple vanishes on the dark theme's background and
# the palest yellow on the light theme's white, and an empty (unselected) cell must stay
# distinguishable from the faintest selected one in both themes.
SEQUENTIAL_COLORS = (
    "#472d7b", "#3e4989", "#355f8d", "#2c728e", "#24868e",
    "#1f998a", "#2db27d", "#56c667", "#8fd744", "#c8e020",
)
SEQUENTIAL_COLORSCALE = [
    [i / (len(SEQUENTIAL_COLORS) - 1), color] for i, color in enumerate(SEQUENTIAL_COLORS)
]
# Ground-truth and "selected" marks sit on top of the sequential scale: a warm hue with a
# dark outline reads on every viridis cell and on both theme backgrounds.
GROUND_TRUTH_COLOR = "#ff4b4b"
SELECTED_COLOR = "#f0f2f6"
NOT_SELECTED_COLOR = "#a3a8b8"

__all__ = [
    "DIFF_COLORS",
    "SELECTOR_COLORS",
    "SEQUENTIAL_COLORS",
    "SEQUENTIAL_COLORSCALE",
    "aggregate_grid",
    "aggregate_labels",
    "axis_labels",
    "block_factors",
    "decode_figure_json",
    "head_agreement_figure",
    "head_heatmaps_figure",
    "k_sweep_figure",
    "membership_grid",
    "metric_histograms_figure",
    "ranked_scores_figure",
    "scaling_figure",
    "scatter_to_grid",
    "selection_counts",
    "selection_diff_figure",
    "selection_diff_grid",
    "selection_figure",
    "selector_color",
]


# ----------------------------------------------------------------------------- array helpers


def axis_labels(labels: Sequence[str] | None, count: int, prefix: str) -> list[str]:
    """Unique category labels for one axis.

    Plotly merges equal category names into one row, so repeated labels (a word that occurs
    twice in a document) get their position appended: `["the", "cat", "the #2"]`.

    Args:
        labels: labels from the example, or None for `prefix0, prefix1, ...`.
        count: the axis length; `labels` must have exactly this many entries.
        prefix: used when `labels` is None, e.g. `"q"` or `"k"`.

    Returns:
        A list of `count` distinct strings.
    """
    if labels is None:
        return [f"{prefix}{i}" for i in range(count)]
    if len(labels) != count:
        raise ValueError(
            f"Received {len(labels)} labels for an axis of length {count}; "
            f"expected exactly {count}."
        )
    seen: set[str] = set()
    unique = []
    for i, label in enumerate(labels):
        text = str(label)
        if text in seen:
            text = f"{text} #{i}"
        seen.add(text)
        unique.append(text)
    return unique


def scatter_to_grid(scores: np.ndarray, indices: np.ndarray, num_keys: int) -> np.ndarray:
    """Scatters per-slot weights back to a query x key grid.

    Args:
        scores: float `[..., M, k]`, the weight of each selected slot.
        indices: int `[..., M, k]`, the key position of each slot, `-1` for an invalid slot.
        num_keys: N, the number of keys.

    Returns:
        float `[..., M, N]`: the slot weight at each selected key, NaN everywhere else, so a
        heatmap leaves unselected cells empty instead of painting them as weight 0.
    """
    scores = np.asarray(scores, dtype=np.float64)
    indices = np.asarray(indices)
    if scores.shape != indices.shape:
        raise ValueError(
            f"`scores` and `indices` must have the same shape. Received: "
            f"scores.shape={scores.shape}, indices.shape={indices.shape}"
        )
    grid = np.full(indices.shape[:-1] + (num_keys,), np.nan)  # [..., M, N]
    valid = (indices >= 0) & (indices < num_keys)
    lead = np.nonzero(valid)  # a tuple of index arrays over [..., M, k]
    grid[lead[:-1] + (indices[valid],)] = scores[valid]
    return grid


def selection_counts(indices: np.ndarray, num_keys: int) -> np.ndarray:
    """How many heads selected each (query, key) cell.

    Args:
        indices: int `[H, M, k]` key positions, `-1` for invalid slots.
        num_keys: N.

    Returns:
        int `[M, N]`, in `0..H`.
    """
    indices = np.asarray(indices)
    num_heads, num_queries, _ = indices.shape
    counts = np.zeros((num_queries, num_keys), dtype=np.int64)  # [M, N]
    for head in range(num_heads):
        picked = np.zeros((num_queries, num_keys), dtype=bool)
        rows, slots = np.nonzero(indices[head] >= 0)
        picked[rows, indices[head][rows, slots]] = True  # a key counts once per head
        counts += picked
    return counts


def block_factors(num_rows: int, num_cols: int, max_rows: int, max_cols: int) -> tuple[int, int]:
    """Smallest integer block sizes that bring an `[M, N]` grid within `max_rows x max_cols`."""
    return max(1, -(-num_rows // max_rows)), max(1, -(-num_cols // max_cols))


def aggregate_grid(grid: np.ndarray, row_factor: int, col_factor: int) -> np.ndarray:
    """Max-pools the last two axes in blocks, ignoring NaN (a block of only NaN stays NaN).

    Max, not mean: the views exist to show *which* cells were picked, and a mean would fade a
    single selected key into its unselected neighbours.
    """
    grid = np.asarray(grid, dtype=np.float64)
    *lead, rows, cols = grid.shape
    out_rows, out_cols = -(-rows // row_factor), -(-cols // col_factor)
    padded = np.full(tuple(lead) + (out_rows * row_factor, out_cols * col_factor), np.nan)
    padded[..., :rows, :cols] = grid
    blocks = padded.reshape(tuple(lead) + (out_rows, row_factor, out_cols, col_factor))
    return np.fmax.reduce(np.fmax.reduce(blocks, axis=-1), axis=-2)  # [..., M/r, N/c]


def _shown(labels: list[str]) -> list[str]:
    """Labels as Plotly text: a file's `<a href=…>` or `<b>` shows as typed (see `plotly_literal`)."""
    return [plotly_literal(label) for label in labels]


def aggregate_labels(labels: Sequence[str], factor: int) -> list[str]:
    """Labels for max-pooled blocks: `"a…d"` for a block running from label a to label d."""
    if factor <= 1:
        return list(labels)
    out = []
    for start in range(0, len(labels), factor):
        block = labels[start : start + factor]
        out.append(block[0] if len(block) == 1 else f"{block[0]}…{block[-1]}")
    return out


def decode_figure_json(spec: str | dict) -> dict:
    """Decodes a figure's JSON (as `st.plotly_chart` sends it) with arrays back as NumPy.

    Plotly 6+ writes NumPy arrays as base64 typed arrays (`{"dtype", "bdata", "shape"}`); this
    turns them back into arrays, so tests and bundle round-trips can compare `z` and shapes.
    """

    def decode(node):
        if isinstance(node, dict):
            if "bdata" in node and "dtype" in node:
                array = np.frombuffer(base64.b64decode(node["bdata"]), dtype=node["dtype"])
                shape = node.get("shape")
                if shape:
                    array = array.reshape([int(n) for n in str(shape).split(",")])
                return array
            return {key: decode(value) for key, value in node.items()}
        if isinstance(node, list):
            return [decode(value) for value in node]
        return node

    return decode(json.loads(spec) if isinstance(spec, str) else spec)


# ----------------------------------------------------------------------------- layout helpers


def _query_key_layout(title, x_labels, y_labels):
    """Layout of a clickable query × key cell map: labelled category axes, a row height per query."""
    return dict(
        title=dict(text=title),
        xaxis=_category_axis(x_labels, "key"),
        yaxis=_category_axis(y_labels, "query", reversed_=True),
        height=140 + _cell_height(len(y_labels)) * len(y_labels),
        margin=dict(l=10, r=10, t=60, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
        clickmode="event+select",
        dragmode="zoom",
    )


def _category_axis(labels: Sequence[str], title: str, reversed_: bool = False) -> dict:
    """A category axis that keeps the example's order (queries read top to bottom)."""
    axis = dict(
        type="category",
        categoryorder="array",
        categoryarray=list(labels),
        title=dict(text=title),
        showgrid=False,
        zeroline=False,
    )
    if reversed_:
        axis["autorange"] = "reversed"
    return axis


def _cell_height(num_rows: int, lo: int = 10, hi: int = 22) -> int:
    """Pixels per heatmap row: big enough to hover, small enough that 64 rows fit a screen."""
    return int(np.clip(520 // max(num_rows, 1), lo, hi))


def _axis_suffix(index: int) -> str:
    """Plotly's axis naming: x, x2, x3, ... for facet 0, 1, 2, ..."""
    return "" if index == 0 else str(index + 1)


def _facet_grid(count: int, rows: int, cols: int, titles: Sequence[str], hgap: float,
                vgap: float) -> tuple[dict, list[dict]]:
    """Axes and title annotations of a `rows x cols` facet grid, filled row by row.

    Built as plain dicts (one validated `go.Figure(...)` call later) because `make_subplots`
    plus per-facet `update_*` calls cost ~20x more, and this runs on every rerun.

    Returns:
        `(layout_axes, annotations)`: `xaxis`, `yaxis`, `xaxis2`, ... entries with domains and
        anchors, and one centred title annotation per facet.
    """
    width = (1.0 - hgap * (cols - 1)) / cols
    height = (1.0 - vgap * (rows - 1)) / rows
    axes: dict = {}
    annotations = []
    for index in range(count):
        row, col = divmod(index, cols)
        x0 = col * (width + hgap)
        y1 = 1.0 - row * (height + vgap)
        suffix = _axis_suffix(index)
        axes[f"xaxis{suffix}"] = dict(domain=[x0, x0 + width], anchor=f"y{suffix}")
        axes[f"yaxis{suffix}"] = dict(domain=[max(y1 - height, 0.0), y1], anchor=f"x{suffix}")
        annotations.append(dict(
            text=titles[index], x=x0 + width / 2, y=y1, xref="paper", yref="paper",
            xanchor="center", yanchor="bottom", showarrow=False, font=dict(size=13),
        ))
    return axes, annotations


# ----------------------------------------------------------------------------- figures


@shared_figure  # one figure per distinct input, for every session
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
    y_labels = _shown(axis_labels(query_labels, num_queries, "q"))
    x_labels = _shown(axis_labels(key_labels, num_keys, "k"))
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


@shared_figure  # one figure per distinct input, for every session
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
    y_labels = _shown(axis_labels(query_labels, num_queries, "q"))
    x_labels = _shown(axis_labels(key_labels, num_keys, "k"))
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


@shared_figure  # one figure per distinct input, for every session
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
    x_labels = _shown(axis_labels(key_labels, num_keys, "k"))
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
    subject = f"query {plotly_literal(query_label)}" if query_label is not None else "query"
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


# ----------------------------------------------------------------------------- compare page

# Okabe–Ito: distinguishable with the common colour-vision deficiencies, on both themes.
SELECTOR_COLORS = (
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999",
)
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


@shared_figure  # one figure per distinct input, for every session
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

    Returns:
        A `go.Figure`: trace 0 is the code heatmap (`z` from `selection_diff_grid`, no hover),
        then one scatter per category ("<A> only", "<B> only", "both"), a point on each of its
        cells with `customdata` `[query, key]`, so hovering names the category and a click
        can choose the query (Plotly heatmap clicks never reach Streamlit).
    """
    indices_a, indices_b = np.asarray(indices_a), np.asarray(indices_b)
    num_queries = indices_a.shape[0]
    name_a, name_b = names
    y_labels = _shown(axis_labels(query_labels, num_queries, "q"))
    x_labels = _shown(axis_labels(key_labels, num_keys, "k"))
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
        xgap=1,
        ygap=1,
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
    return go.Figure(dict(data=traces, layout=_query_key_layout(title, x_labels, y_labels)))


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
        margin=dict(l=10, r=10, t=80, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.08, xanchor="right", x=1.0),
        **axes,
    )
    return go.Figure(dict(data=traces, layout=layout))


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
                line=dict(color=selector_color(position), width=2),
                marker=dict(size=6),
                xaxis=f"x{suffix}",
                yaxis=f"y{suffix}",
                name=selector,
                legendgroup=selector,
                showlegend=facet == 0,
                hovertemplate=f"{selector}<br>k = %{{x}}<br>{metric_titles[metric]}: "
                              "%{y:.3f}<extra></extra>",
            ))
        axes[f"xaxis{suffix}"].update(
            type="log", tickvals=ks, ticktext=[str(k) for k in ks],
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
        margin=dict(l=10, r=10, t=80, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.08, xanchor="right", x=1.0),
        **axes,
    )
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
        margin=dict(l=10, r=10, t=80, b=10),
        **axes,
    )
    return go.Figure(dict(data=traces, layout=layout))


# ----------------------------------------------------------------------------- walkthrough
# Small annotated matrices for the learn page: every cell of the tiny example prints its number.

__all__ += ["DIVERGING_COLORSCALE", "MatrixPanel", "matrix_panels_figure", "walkthrough_figure"]

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
        y_labels = _shown(axis_labels(list(panel.row_labels), values.shape[0], "r"))
        x_labels = _shown(axis_labels(list(panel.col_labels), values.shape[1], "c"))
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
            hovertemplate=f"{panel.title}<br>%{{y}}, %{{x}}: %{{z:.4f}}<extra></extra>",
            name=panel.title, **on_axes,
        ))
        # Tick labels once per run of equal labels: the row below or the facet to the left
        # already names them (Q/K/V of one head, the heads of the scores).
        axes[f"xaxis{suffix}"].update(
            _category_axis(x_labels, ""), tickangle=-30,
            showticklabels=not same_labels(index, index + cols, "col_labels"))
        axes[f"yaxis{suffix}"].update(
            _category_axis(y_labels, "", reversed_=True),
            showticklabels=index % cols == 0 or not same_labels(index, index - 1, "row_labels"))
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


# ----------------------------------------------------------------------------- performance page

REFERENCE_COLOR = "#7f7f7f"  # the dense baseline every sdattn line is read against


def _one_two_five_ticks(low, high):
    """Tick values 1, 2, 5, 10, 20, … covering `[low, high]` (both positive)."""
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.floor(math.log10(high)) + 1):
        for digit in (1, 2, 5):
            value = digit * 10.0 ** exponent
            if low / 1.5 <= value <= high * 1.5:
                ticks.append(value)
    return ticks


# Height of one row of a horizontal legend, in pixels.
_LEGEND_ROW_PX = 22


def scaling_figure(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    y_title: str,
    title: str,
    reference: str | None = None,
) -> go.Figure:
    """A measured quantity against N on log-log axes, one line per method.

    Args:
        series: `{method: (N values, measured values)}`, in legend order; values that are not
            positive (a log axis cannot show them) or not finite are left out.
        y_title: the quantity and its unit, e.g. `"time per call (ms)"`.
        title: figure title.
        reference: the method drawn as the baseline (dashed, grey), e.g. Keras MHA; None: none.

    Returns:
        A `go.Figure` with one scatter trace per method (x: N, y: the values, both log axes);
        the other methods take `selector_color(i)` in order, dotted with diamond markers once
        the colours repeat.
    """
    traces = []
    position = 0
    for method, (sizes, values) in series.items():
        sizes = np.asarray(sizes, dtype=np.float64)
        values = np.asarray(values, dtype=np.float64)
        shown = np.isfinite(values) & (values > 0)
        is_reference = method == reference
        color = REFERENCE_COLOR if is_reference else selector_color(position)
        # Past the palette, colours repeat: the second round of methods is dotted, with diamonds.
        second_round = not is_reference and position >= len(SELECTOR_COLORS)
        position += 0 if is_reference else 1
        traces.append(dict(
            type="scatter",
            x=sizes[shown],
            y=values[shown],
            mode="lines+markers",
            line=dict(color=color, width=2,
                      dash="dash" if is_reference else "dot" if second_round else "solid"),
            marker=dict(size=7, symbol="square" if is_reference else "diamond" if second_round else "circle"),
            name=method,
            hovertemplate=f"{method}<br>N = %{{x:,}}<br>{y_title}: %{{y:.3g}}<extra></extra>",
        ))
    all_sizes = sorted({float(n) for sizes, _ in series.values() for n in sizes})
    legend_rows = max(1, math.ceil(len(traces) / 3))
    shown_values = [v for trace in traces for v in trace["y"]]
    y_ticks = _one_two_five_ticks(min(shown_values), max(shown_values)) if shown_values else []
    layout = dict(
        # At the very top, above however many legend rows the top margin holds.
        title=dict(text=title, yref="container", y=1.0, yanchor="top", pad=dict(t=10)),
        xaxis=dict(type="log", title=dict(text="N (dense key tokens)"), tickvals=all_sizes,
                   ticktext=[f"{int(n):,}" for n in all_sizes]),
        # Labels at 1, 2 and 5 of each decade, written out in full (Plotly's "D2" shorthand
        # labels 20 and 50 as small "2" and "5", which reads as 2 and 5).
        yaxis=dict(type="log", title=dict(text=y_title), tickvals=y_ticks,
                   ticktext=[f"{v:,.3g}" for v in y_ticks]),
        # The legend grows upwards from the plot, one row per about three methods in a half-page
        # column: the top margin keeps every row below the title.
        height=330 + _LEGEND_ROW_PX * legend_rows,
        margin=dict(l=10, r=10, t=45 + _LEGEND_ROW_PX * legend_rows, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1.0),
    )
    return go.Figure(dict(data=traces, layout=layout))
