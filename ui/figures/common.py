"""Figure helpers every page shares: colours, array helpers (grids, pooling, labels), the pixel
plan of a query x key grid, and layout helpers. Pure NumPy and Plotly dicts, no Streamlit."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

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

