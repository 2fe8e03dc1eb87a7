"""Figure helpers every page shares: colours, array helpers (grids, pooling, labels), the pixel
plan of a query x key grid, and layout helpers. Pure NumPy and Plotly dicts, no Streamlit."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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

def shown_labels(labels: Sequence[str]) -> list[str]:
    """Labels as Plotly text: a file's `<a href=…>` or `<b>` shows as typed (see `plotly_literal`).

    Every label a figure receives goes through this; exports and tables keep the raw labels."""
    return [plotly_literal(label) for label in labels]



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


def _query_key_layout(title, x_labels, y_labels, plan: "GridPlan | None" = None, *,
                      colorbar: bool = True):
    """Layout of a clickable query × key cell map: labelled category axes, a row height per query.

    With a `plan`, the plot is as tall as its drawn rows and the ticks label every row and
    column that fits (`tick_labels`); without, rows take `_cell_height` and Plotly picks ticks.
    Margins are sized from the labels (`fixed_margins`), with room for a colour bar on the right.
    """
    xaxis = _category_axis(x_labels, "key")
    yaxis = _category_axis(y_labels, "query", reversed_=True)
    if plan is not None:
        x_ticks = tick_labels(x_labels, plan.cell_width, rotate_if_crowded=True)
        y_ticks = tick_labels(y_labels, plan.cell_height)
        xaxis.update(x_ticks)
        yaxis.update(y_ticks)
        plot_height = plan.plot_height
    else:
        step = max(1, math.ceil(len(x_labels) / 40))
        x_ticks = dict(ticktext=[shorten_label(s) for s in list(x_labels)[::step]], tickangle=-90)
        y_ticks = dict(ticktext=[shorten_label(s) for s in y_labels])
        xaxis.update(tickangle=-90)
        plot_height = _cell_height(len(y_labels)) * len(y_labels)
    left, bottom = query_key_margins(x_ticks, y_ticks)
    layout = dict(
        # The title at the very top, the legend in its own row under it: they never overlap.
        title=dict(text=title, yref="container", y=1.0, yanchor="top", pad=dict(t=12)),
        xaxis=xaxis,
        yaxis=yaxis,
        height=76 + plot_height + bottom,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
        clickmode="event+select",
        dragmode="zoom",
    )
    return fixed_margins(layout, left=left, right=COLORBAR_PX if colorbar else 16, top=76,
                         bottom=bottom)


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



# ----------------------------------------------------------------------------- pixel plan
# The drawing of a query x key grid is chosen from the pixels a cell gets, not from a cell count:
# the server cannot measure the browser, so it plans for a conservative plot width (the app's
# wide layout at a 1280 px window leaves a full-width view about 800 px of plot area; a wider
# window only makes every cell bigger).

VIEW_WIDTH_PX = 640  # plot area of a full-width query x key view
PANEL_GAP_PX = 24  # between two facets of the per-head grid
GAP_CELL_PX = 4  # from this cell size on, cells are drawn with a 1 px gap
MIN_CELL_PX = 2  # a pooled block is at least this big, so one selected key stays visible
LABEL_PX = 13  # a tick label needs this much room along its axis (11 px font, rotated)
MAX_LABEL_CHARS = 16  # tick labels are cut here; hover shows the whole label
# Margins are sized here, from the labels (`fixed_margins`): an 11 px label's glyphs average
# under 6.6 px, a horizontal label is one 16 px line, an axis title takes 28 px, a vertical
# colour bar with its title and tick labels about 110 px.
TICK_CHAR_PX = 6.6
TICK_LINE_PX = 16
AXIS_TITLE_PX = 28
COLORBAR_PX = 110
# Hover text per cell costs about 4 bytes a cell; past this many cells a figure hovers on drawn
# cells only (no hover label on an empty cell rather than one saying "NaN").
MAX_HOVER_TEXT_CELLS = 60_000


@dataclass(frozen=True)
class GridPlan:
    """How a query x key grid is drawn: which window, pooled how much, how many pixels a cell.

    Attributes:
        num_rows: M of the whole input.
        num_cols: N of the whole input.
        row_start, row_stop: the query window drawn, `[row_start, row_stop)` (a zoom).
        col_start, col_stop: the key window drawn.
        row_factor, col_factor: queries x keys pooled into one drawn block (1: full resolution).
        cell_width, cell_height: pixels of one drawn cell or block, at the planned width.
    """

    num_rows: int
    num_cols: int
    row_start: int = 0
    row_stop: int | None = None
    col_start: int = 0
    col_stop: int | None = None
    row_factor: int = 1
    col_factor: int = 1
    cell_width: float = 14.0
    cell_height: float = 14.0

    @property
    def rows(self) -> tuple[int, int]:
        return self.row_start, self.num_rows if self.row_stop is None else self.row_stop

    @property
    def cols(self) -> tuple[int, int]:
        return self.col_start, self.num_cols if self.col_stop is None else self.col_stop

    @property
    def drawn_rows(self) -> int:
        start, stop = self.rows
        return -(-(stop - start) // self.row_factor)

    @property
    def drawn_cols(self) -> int:
        start, stop = self.cols
        return -(-(stop - start) // self.col_factor)

    @property
    def drawn_cells(self) -> int:
        return self.drawn_rows * self.drawn_cols

    @property
    def pooled(self) -> bool:
        return self.row_factor > 1 or self.col_factor > 1

    @property
    def zoomed(self) -> bool:
        return self.rows != (0, self.num_rows) or self.cols != (0, self.num_cols)

    @property
    def xgap(self) -> int:
        return 1 if self.cell_width >= GAP_CELL_PX else 0

    @property
    def ygap(self) -> int:
        return 1 if self.cell_height >= GAP_CELL_PX else 0

    @property
    def plot_height(self) -> int:
        return int(math.ceil(self.drawn_rows * self.cell_height))

    def row_labels(self, labels: Sequence[str]) -> list[str]:
        """The drawn rows' labels: the window's, pooled (`"a…d"`) when blocked."""
        start, stop = self.rows
        return aggregate_labels(list(labels[start:stop]), self.row_factor)

    def col_labels(self, labels: Sequence[str]) -> list[str]:
        start, stop = self.cols
        return aggregate_labels(list(labels[start:stop]), self.col_factor)

    def first_row(self, drawn_row):
        """The first query of a drawn row (block), as an index of the whole input."""
        return self.row_start + np.asarray(drawn_row) * self.row_factor

    def first_col(self, drawn_col):
        return self.col_start + np.asarray(drawn_col) * self.col_factor

    def describe(self) -> str:
        """One line for a title: the window and the pooling, or "" at full resolution."""
        parts = []
        if self.zoomed:
            (r0, r1), (c0, c1) = self.rows, self.cols
            parts.append(f"queries {r0}–{r1 - 1}, keys {c0}–{c1 - 1}")
        if self.pooled:
            parts.append(f"blocks of {self.row_factor} × {self.col_factor}")
        return ", ".join(parts)


def _axis_plan(count: int, pixels: float, max_cell: float) -> tuple[int, float]:
    """(factor, cell pixels) of a column axis of fixed width: full resolution down to 1 px a
    cell, else pooled blocks of at least MIN_CELL_PX."""
    count = max(count, 1)
    if pixels / count >= 1.0:
        return 1, min(max_cell, pixels / count)
    factor = math.ceil(count * MIN_CELL_PX / pixels)
    return factor, min(max_cell, pixels / -(-count // factor))


def _row_plan(count: int, target_px: float, max_px: float, max_cell: float) -> tuple[int, float]:
    """(factor, cell pixels) of the row axis, whose height the figure chooses: rows share
    `target_px`, but never shrink under MIN_CELL_PX while the plot can grow up to `max_px`;
    past that they are pooled into blocks of at least MIN_CELL_PX."""
    count = max(count, 1)
    cell = min(max_cell, target_px / count)
    if cell >= MIN_CELL_PX:
        return 1, cell
    if count * MIN_CELL_PX <= max_px:
        return 1, float(MIN_CELL_PX)
    factor = math.ceil(count * MIN_CELL_PX / max_px)
    drawn = -(-count // factor)
    return factor, min(max_cell, max(float(MIN_CELL_PX), target_px / drawn))


def plan_grid(num_rows: int, num_cols: int, *, width_px: float = VIEW_WIDTH_PX,
              height_px: float = 560, max_height_px: float | None = None,
              max_cell_height: float = 22.0,
              rows: tuple[int, int] | None = None,
              cols: tuple[int, int] | None = None) -> GridPlan:
    """Plans the drawing of an `[M, N]` grid (or of the window `rows x cols` of it).

    Below 1 px a column (2 px a row: rows are the figure's to size), an axis is pooled into
    blocks of at least `MIN_CELL_PX`; from
    `GAP_CELL_PX` on, cells get a 1 px gap (`GridPlan.xgap`); in between they are drawn edge
    to edge, so no cell is lost to its gap.

    Args:
        num_rows, num_cols: M and N of the whole input.
        width_px: plot width available to the grid.
        height_px: the plot height the rows share.
        max_height_px: how tall the plot may grow so that rows keep MIN_CELL_PX before they
            are pooled; None: `height_px`.
        max_cell_height: rows never grow taller than this (a few queries stay compact).
        rows, cols: `(start, stop)` windows (a zoom), clipped to the input; None: all.

    Returns:
        A `GridPlan`.
    """
    r0, r1 = (0, num_rows) if rows is None else (max(0, int(rows[0])), min(num_rows, int(rows[1])))
    c0, c1 = (0, num_cols) if cols is None else (max(0, int(cols[0])), min(num_cols, int(cols[1])))
    r1, c1 = max(r1, r0 + 1), max(c1, c0 + 1)
    row_factor, cell_height = _row_plan(r1 - r0, height_px,
                                        max(height_px, max_height_px or 0), max_cell_height)
    col_factor, cell_width = _axis_plan(c1 - c0, width_px, float("inf"))
    return GridPlan(num_rows, num_cols, r0, r1, c0, c1, row_factor, col_factor,
                    cell_width, cell_height)


def _factor_plan(num_rows: int, num_cols: int, row_factor: int, col_factor: int) -> GridPlan:
    """A plan from explicit block sizes (callers that pool themselves), cells sized by plan_grid."""
    drawn = plan_grid(-(-num_rows // row_factor), -(-num_cols // col_factor))
    return GridPlan(num_rows, num_cols, 0, num_rows, 0, num_cols, row_factor, col_factor,
                    drawn.cell_width, drawn.cell_height)


def shorten_label(label: str, limit: int = MAX_LABEL_CHARS) -> str:
    """A tick label cut to `limit` characters with an ellipsis (hover shows the whole label)."""
    label = str(label)
    return label if len(label) <= limit else label[: limit - 1] + "…"


def tick_labels(labels: Sequence[str], cell_px: float, *, rotate_if_crowded: bool = False
                ) -> dict:
    """Tick settings of a category axis: every label when they fit, else every n-th; cut labels.

    Args:
        labels: the axis's category names.
        cell_px: pixels per category along the axis.
        rotate_if_crowded: an x axis: labels wider than their room are drawn vertically. The
            angle is set here, not left to Plotly, so the margins can be too (`fixed_margins`).

    Returns:
        `tickmode="array"` with `tickvals` (category names), `ticktext` (shortened) and
        `tickangle`.
    """
    step = max(1, math.ceil(LABEL_PX / max(cell_px, 1e-6)))
    shown = list(labels)[::step]
    text = [shorten_label(s) for s in shown]
    crowded = rotate_if_crowded and label_extent_px(text) + 4 > cell_px * step
    return dict(tickmode="array", tickvals=shown, ticktext=text, tickfont=dict(size=11),
                tickangle=-90 if crowded else 0)


def tick_extent_px(ticks: dict, across: bool) -> int:
    """Pixels the tick labels of `tick_labels` take from the plot's edge into the margin.

    Args:
        ticks: what `tick_labels` returned.
        across: whether the labels run across the margin (a y axis, or a rotated x axis)
            rather than along it (an x axis with horizontal labels: one text line).
    """
    if across or ticks.get("tickangle"):
        return label_extent_px(ticks["ticktext"]) + 6
    return TICK_LINE_PX


def query_key_margins(x_ticks: dict, y_ticks: dict) -> tuple[int, int]:
    """`(left, bottom)` margins in pixels of a query × key map: the query axis's title and tick
    labels on the left, the key axis's below (`x_ticks`, `y_ticks`: from `tick_labels`)."""
    return (AXIS_TITLE_PX + tick_extent_px(y_ticks, across=True) + 4,
            AXIS_TITLE_PX + tick_extent_px(x_ticks, across=False) + 8)


def label_extent_px(labels: Sequence[str]) -> int:
    """Estimated width in pixels of the longest 11 px tick label."""
    return math.ceil(max((len(str(label)) for label in labels), default=1) * TICK_CHAR_PX)


def fixed_margins(layout: dict, *, left: float, right: float, top: float, bottom: float) -> dict:
    """Sets the margins in pixels and turns Plotly's own margin fitting off, in place.

    With `automargin` (on in Plotly's default template) Plotly measures every tick label, and
    draws the whole figure again whenever a label, legend or colour bar needs more room: two to
    three times the drawing time of this app's figures, on every rerun (benchmarks/NOTES.md,
    "Browser time"). The figures know their labels, so they size their margins themselves.

    Args:
        layout: a figure's layout dict (its `xaxis…` / `yaxis…` entries are updated).
        left, right, top, bottom: margins in pixels.

    Returns:
        `layout`.
    """
    for name, axis in layout.items():
        if name.startswith(("xaxis", "yaxis")) and isinstance(axis, dict):
            axis["automargin"] = False
    layout["margin"] = dict(l=math.ceil(left), r=math.ceil(right), t=math.ceil(top),
                            b=math.ceil(bottom), autoexpand=False)
    return layout


def numeric_margins(layout: dict, *, top: float, right: float = 16) -> dict:
    """`fixed_margins` for a figure whose axes are numeric: an axis title and tick labels of up
    to six characters on the left, one line of tick labels and a title below."""
    return fixed_margins(layout, left=AXIS_TITLE_PX + 46, right=right, top=top,
                         bottom=AXIS_TITLE_PX + TICK_LINE_PX + 12)


def _block_index(indices: np.ndarray, plan: GridPlan) -> tuple[np.ndarray, int]:
    """Flat index `[H * M' * k]` of each slot's drawn block in `[H, R, C]`; slots outside the
    window (or invalid) go to one extra bin at the end, whose position is returned too."""
    (r0, r1), (c0, c1) = plan.rows, plan.cols
    window_idx = np.asarray(indices)[:, r0:r1]  # [H, M', k]
    heads, rows = window_idx.shape[:2]
    head = np.arange(heads)[:, None, None]
    block_row = (np.arange(rows) // plan.row_factor)[None, :, None]
    flat = (head * plan.drawn_rows + block_row) * plan.drawn_cols + (
        (window_idx - c0) // plan.col_factor)  # [H, M', k]
    dump = heads * plan.drawn_rows * plan.drawn_cols
    flat = np.where((window_idx >= c0) & (window_idx < c1), flat, dump)
    return flat.ravel(), dump


def pooled_slot_max(scores: np.ndarray, indices: np.ndarray, plan: GridPlan) -> np.ndarray:
    """The largest slot weight in every drawn block of `plan`, straight from the slots.

    Never builds the `[H, M, N]` grid (at M = N = 4,096 that is half a gigabyte of float64).

    Args:
        scores: float `[H, M, k]` slot weights.
        indices: int `[H, M, k]` key positions, `-1` for invalid slots.
        plan: the window and block sizes.

    Returns:
        float32 `[H, R, C]` (R, C: the plan's drawn rows and columns), NaN where no slot falls.
    """
    flat, dump = _block_index(indices, plan)
    r0, r1 = plan.rows
    values = np.asarray(scores, dtype=np.float32)[:, r0:r1].ravel()
    out = np.full(dump + 1, -np.inf, np.float32)
    np.maximum.at(out, flat, values)
    out = out[:dump].reshape(-1, plan.drawn_rows, plan.drawn_cols)  # [H, R, C]
    out[np.isneginf(out)] = np.nan
    return out


def pooled_head_counts(indices: np.ndarray, plan: GridPlan) -> np.ndarray:
    """How many heads selected some key in every drawn block (a key counts once per head).

    At full resolution this is `selection_counts` on the window.

    Returns:
        int `[R, C]` in `0..H`.
    """
    flat, dump = _block_index(indices, plan)
    present = np.zeros(dump + 1, bool)
    present[flat] = True
    return present[:dump].reshape(-1, plan.drawn_rows, plan.drawn_cols).sum(axis=0)


def pooled_cells(cells_rows: np.ndarray, cells_cols: np.ndarray, plan: GridPlan) -> np.ndarray:
    """bool `[R, C]`: the drawn blocks holding any of the given (query, key) cells."""
    (r0, r1), (c0, c1) = plan.rows, plan.cols
    rows, cols = np.asarray(cells_rows), np.asarray(cells_cols)
    inside = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
    out = np.zeros((plan.drawn_rows, plan.drawn_cols), bool)
    out[(rows[inside] - r0) // plan.row_factor, (cols[inside] - c0) // plan.col_factor] = True
    return out


def hover_text(values: np.ndarray, value_format: str) -> list[list[str]]:
    """Per-cell hover text: the formatted value, blank for NaN (Plotly itself would say "NaN")."""
    values = np.asarray(values, dtype=np.float64)
    formatted = np.char.mod(f"%{value_format}", np.nan_to_num(values))
    return np.where(np.isfinite(values), formatted, "").tolist()
