"""The views a run feeds: size summary with the budget guard, selection view, per-head heatmaps,
downloads. Shared by the playground and, later, the compare page (figures: ui.figures)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

import sdattn
from ui import figures
from ui import detail, export, params
from ui.runner import InputSpec, ModelSettings, RunResult
from ui.widgets import plotly_config, show_figure

# The selection view may grow this tall so that up to ~500 queries keep a 2 px row each.
SELECTION_MAX_HEIGHT_PX = 1040


@dataclass(frozen=True)
class ViewPlan:
    """How the playground's two views are drawn: the window (zoom) and each view's pixel plan.

    Attributes:
        num_queries, num_keys, num_heads: M, N, H of the input shown.
        selection: the selection view's `figures.GridPlan`.
        heads: the plan of one facet of the per-head grid.
    """

    num_queries: int
    num_keys: int
    num_heads: int
    selection: figures.GridPlan
    heads: figures.GridPlan

    @property
    def cells(self) -> int:
        """Cells of the window at full resolution: the selection view plus one per head."""
        (r0, r1), (c0, c1) = self.selection.rows, self.selection.cols
        return (self.num_heads + 1) * (r1 - r0) * (c1 - c0)

    @property
    def drawn_cells(self) -> int:
        return self.selection.drawn_cells + self.num_heads * self.heads.drawn_cells

    @property
    def downsampled(self) -> bool:
        return self.selection.pooled or self.heads.pooled

    @property
    def zoomed(self) -> bool:
        return self.selection.zoomed


def plan_views(num_queries: int, num_keys: int, num_heads: int,
               rows: tuple[int, int] | None = None,
               cols: tuple[int, int] | None = None) -> ViewPlan:
    """Plans both views from the pixels a cell gets (`figures.plan_grid`), for a window.

    Args:
        num_queries, num_keys, num_heads: the input's M, N and H.
        rows, cols: `(start, stop)` of the query and key window (a zoom); None: everything.
    """
    selection = figures.plan_grid(num_queries, num_keys, height_px=560,
                                  max_height_px=SELECTION_MAX_HEIGHT_PX, rows=rows, cols=cols)
    heads = figures.plan_head_panels(num_queries, num_keys, num_heads, rows=rows, cols=cols)
    return ViewPlan(num_queries, num_keys, num_heads, selection, heads)


def size_summary(plan: ViewPlan, settings: ModelSettings) -> None:
    """What is about to run and be drawn; a note when the views pool cells into blocks."""
    k = min(settings.top_k, plan.num_keys)
    columns = st.columns(4)
    columns[0].metric("queries × keys (M × N)", f"{plan.num_queries:,} × {plan.num_keys:,}")
    columns[1].metric("heads × k", f"{plan.num_heads} × {k}")
    columns[2].metric(
        "attended pairs", f"{plan.num_heads * plan.num_queries * k:,}",
        help=f"H·M·k, instead of H·M·N = {plan.num_heads * plan.num_queries * plan.num_keys:,} "
             "for dense attention.")
    columns[3].metric("cells to draw", f"{plan.drawn_cells:,}",
                      help=f"Of {plan.cells:,} at full resolution: a view pools cells into "
                           f"blocks once a cell would be under 1 px wide or tall.")
    if plan.downsampled:
        parts = []
        for name, grid in (("selection view", plan.selection), ("per-head grid", plan.heads)):
            if grid.pooled:
                parts.append(f"the {name} in blocks of {grid.row_factor} queries × "
                             f"{grid.col_factor} keys")
        st.info(
            "**Pooled to stay visible:** at full resolution a cell would be under a pixel, so "
            f"the views show {' and '.join(parts)}, each block at least "
            f"{figures.MIN_CELL_PX} px. A block is coloured by what it holds: the heads that "
            "selected a key in it, or its largest weight. **Box-select** a region of the "
            "selection view (or set the ranges under *Zoom*) to redraw it at full resolution; "
            "the query detail and the downloads always keep full resolution.",
            icon=":material/grid_view:",
        )


# ----------------------------------------------------------------------------- zoom


def _window_values(key: str, count: int) -> tuple[int, int]:
    """The stored `(first, last)` of a range slider, reset to everything when it left `count`."""
    value = st.session_state.get(key)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not 0 <= int(value[0]) <= int(value[1]) <= count - 1):
        value = (0, count - 1)
    st.session_state[key] = (int(value[0]), int(value[1]))
    return st.session_state[key]


_ZOOM_INPUT = "_view_zoom_input"  # the input the stored zoom belongs to


def _reset_zoom() -> None:
    st.session_state.pop(params.VIEW_QUERIES, None)
    st.session_state.pop(params.VIEW_KEYS, None)


def zoom_controls(num_queries: int, num_keys: int, *, pooled: bool, identity=None
                  ) -> tuple[tuple[int, int], tuple[int, int]]:
    """Query and key range of both views (box-selecting the selection view sets them too).

    Args:
        num_queries, num_keys: M and N of the input shown.
        pooled: whether the whole input is pooled (the controls then start open).
        identity: what identifies the input (spec and batch item): another input shows
            everything again.

    Returns:
        `(rows, cols)`: half-open `(start, stop)` windows.
    """
    if st.session_state.get(_ZOOM_INPUT) != identity:
        _reset_zoom()
        st.session_state[_ZOOM_INPUT] = identity
    queries = _window_values(params.VIEW_QUERIES, num_queries)
    keys = _window_values(params.VIEW_KEYS, num_keys)
    zoomed = queries != (0, num_queries - 1) or keys != (0, num_keys - 1)
    with st.expander("Zoom: query and key range" + (" (zoomed)" if zoomed else ""),
                     expanded=zoomed or pooled, icon=":material/zoom_in:"):
        st.caption("Box-select a region of the selection view (drag on a pooled view; on a "
                   "full-resolution one pick **Box Select** in its toolbar first), or set the "
                   "ranges: both views redraw that region, at full resolution once a cell gets "
                   "a pixel.")
        query_column, key_column, reset_column = st.columns([5, 5, 2],
                                                            vertical_alignment="bottom")
        if num_queries > 1:
            queries = query_column.slider("Queries shown", 0, num_queries - 1,
                                          key=params.VIEW_QUERIES)
        if num_keys > 1:
            keys = key_column.slider("Keys shown", 0, num_keys - 1, key=params.VIEW_KEYS)
        reset_column.button("Show all", key="view_reset", on_click=_reset_zoom,
                            disabled=not zoomed, icon=":material/zoom_out_map:")
    return (queries[0], queries[1] + 1), (keys[0], keys[1] + 1)


def _drawn_span(low: float, high: float, labels: list[str], count: int) -> tuple[int, int]:
    """The drawn cells `[first, last]` a box range covers (category positions or names)."""
    def position(value):
        if isinstance(value, str):
            return float(labels.index(value)) if value in labels else 0.0
        return float(value)

    low, high = sorted((position(low), position(high)))
    first = int(np.clip(np.floor(low + 0.5), 0, count - 1))
    last = int(np.clip(np.ceil(high - 0.5), first, count - 1))
    return first, last


def select_or_zoom(chart_key: str, plan: figures.GridPlan, x_labels: list[str],
                   y_labels: list[str]):
    """`on_select` of the selection view: a box zooms both views to it, a click picks a query."""
    point_callback = detail.select_from_chart(chart_key)

    def callback() -> None:
        selection = st.session_state[chart_key]["selection"]
        boxes = selection.get("box") or []
        if not boxes:
            point_callback()
            return
        box = boxes[0]
        first_col, last_col = _drawn_span(*box["x"][:2], x_labels, plan.drawn_cols)
        first_row, last_row = _drawn_span(*box["y"][:2], y_labels, plan.drawn_rows)
        r1, c1 = plan.rows[1], plan.cols[1]  # the drawn window's ends
        queries = (int(plan.first_row(first_row)),
                   min(int(plan.first_row(last_row)) + plan.row_factor, r1) - 1)
        keys = (int(plan.first_col(first_col)),
                min(int(plan.first_col(last_col)) + plan.col_factor, c1) - 1)
        st.session_state[params.VIEW_QUERIES] = queries
        st.session_state[params.VIEW_KEYS] = keys
        query = st.session_state.get(params.QUERY, 0)
        if not queries[0] <= query <= queries[1]:  # the detail follows the zoom
            st.session_state[params.QUERY] = queries[0]

    return callback


# ----------------------------------------------------------------------------- views


@st.cache_resource(max_entries=8, show_spinner=False)
def _selection_figure(spec: InputSpec, item: int, settings: ModelSettings,
                      plan: figures.GridPlan, _example, _result: RunResult):
    """The selection view of one run and plan; reruns that change neither reuse it."""
    truth = None
    if _example.ground_truth is not None:
        truth = np.asarray(_example.ground_truth)[0]  # [M, G] of the single item
    fig = figures.selection_figure(
        _result.indices, num_keys=_example.num_keys, query_labels=_example.query_labels,
        key_labels=_example.key_labels, ground_truth=truth, plan=plan)
    clickable = any(trace.name.startswith("selected") for trace in fig.data)
    if plan.pooled or not clickable:
        # A drag box-selects, which zooms both views to full resolution; Plotly's own zoom
        # would only enlarge the pooled blocks. (In select mode a click clears the selection
        # instead of picking its point, so full-resolution views keep zoom and their clicks;
        # the toolbar's Box Select zooms them.)
        fig.update_layout(dragmode="select", selectdirection="any")
    return fig


@st.cache_resource(max_entries=8, show_spinner=False)
def _heads_figure(spec: InputSpec, item: int, settings: ModelSettings, plan: figures.GridPlan,
                  _example, _result: RunResult):
    """The per-head grid of one run and plan, built from the slots (never `[H, M, N]`)."""
    return figures.slot_heatmaps_figure(
        _result.scores, _result.indices, num_keys=_example.num_keys, plan=plan,
        query_labels=_example.query_labels, key_labels=_example.key_labels)


def selection_view(example, input_spec: InputSpec, item: int, settings: ModelSettings,
                   result: RunResult, plan: ViewPlan, *, key: str) -> None:
    """The top-k selection matrix: a click picks the query of the detail, a box zooms in.

    `example` is the single batch item shown (`Example.item(item)`).
    """
    fig = _selection_figure(input_spec, item, settings, plan.selection, example, result)
    grid = plan.selection
    # The labels exactly as the figure holds them: a click or a box reports those.
    x_labels = grid.col_labels(figures.shown_labels(
        figures.axis_labels(example.key_labels, example.num_keys, "k")))
    y_labels = grid.row_labels(figures.shown_labels(
        figures.axis_labels(example.query_labels, example.num_queries, "q")))
    st.plotly_chart(
        fig, key=key, width="stretch", on_select=select_or_zoom(key, grid, x_labels, y_labels),
        selection_mode=("points", "box"),
        config=plotly_config(f"sdattn_selection_{_stem(input_spec)}", _image_format()))
    if not any(trace.name.startswith("selected") for trace in fig.data):
        st.caption(f"{grid.drawn_cells:,} blocks are too many to click one by one: box-select "
                   "a region to zoom in, then click a cell to inspect its query.")


def head_heatmaps(example, input_spec: InputSpec, item: int, settings: ModelSettings,
                  result: RunResult, plan: ViewPlan, *, key: str) -> None:
    """One heatmap per head, weights scattered to the drawn cells, unselected cells empty."""
    fig = _heads_figure(input_spec, item, settings, plan.heads, example, result)
    show_figure(fig, key=key, filename=f"sdattn_heads_{_stem(input_spec)}")
    selected = result.scores[result.indices >= 0]
    if selected.size:
        low, high, uniform = float(selected.min()), float(selected.max()), 1 / result.k
        note = (f"Colour spans the selected weights, {low:.3f} to {high:.3f} "
                f"(uniform over k keys would be 1/k = {uniform:.3f}).")
        if plan.heads.pooled:
            note += " A block shows the largest weight in it."
        if high - low < 0.2 * uniform:
            note += (" The weights are close to uniform: random (Glorot) projections give tiny "
                     "scores. Choose **Weights: Aligned** for scores that follow query–key "
                     "similarity.")
        st.caption(note)


def _image_format() -> str:
    return st.session_state.get(params.IMAGE_FORMAT) or params.IMAGE_FORMATS[0]


def _stem(input_spec: InputSpec) -> str:
    """A file-name-safe stem for exports."""
    name = input_spec.kind if input_spec.source == "generate" else (input_spec.name or "upload")
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(name))



def download_buttons(example, result: RunResult, input_spec: InputSpec,
                     settings: ModelSettings, item: int, *, key_prefix: str = "download") -> None:
    """CSV and NPZ downloads of the selections and weights, built only when clicked."""
    query_labels = figures.axis_labels(example.query_labels, example.num_queries, "q")
    key_labels = figures.axis_labels(example.key_labels, example.num_keys, "k")
    truth = None if example.ground_truth is None else np.asarray(example.ground_truth)[0]
    stem = f"sdattn_{_stem(input_spec)}_{settings.selector}_k{result.k}"

    def csv_bytes() -> bytes:
        return export.selections_csv(export.selections_frame(
            result.indices, result.scores, query_labels=query_labels, key_labels=key_labels,
            ground_truth=truth))

    def npz_bytes() -> bytes:
        config = {"input": input_spec.description, "batch_item": item, **settings.as_dict(),
                  "sdattn_version": sdattn.__version__}
        return export.selections_npz(result.indices, result.scores, query_labels=query_labels,
                                     key_labels=key_labels, config=config)

    csv_column, npz_column, _ = st.columns([1, 1, 2])
    csv_column.download_button(
        "Selections and weights (CSV)", data=csv_bytes, file_name=f"{stem}.csv",
        mime="text/csv", key=f"{key_prefix}_csv", on_click="ignore",
        icon=":material/download:", help="One row per (query, head, slot): key and weight.")
    npz_column.download_button(
        "Selections and weights (NPZ)", data=npz_bytes, file_name=f"{stem}.npz",
        mime="application/octet-stream", key=f"{key_prefix}_npz", on_click="ignore",
        icon=":material/download:",
        help="selected_indices [H,M,k], attention_weights [H,M,k], weights_grid [H,M,N], labels, "
             "config; loads with allow_pickle=False.")
