"""The views a run feeds: size summary with the budget guard, selection view, per-head heatmaps,
downloads. Shared by the playground and, later, the compare page (figures: ui.figures)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

import sdattn
from ui import figures
from ui import export
from ui.runner import InputSpec, ModelSettings, RunResult
from ui.widgets import show_figure

# About 50k drawn cells keep a rerun well under the 300 ms target and the browser responsive;
# past that, views are max-pooled into blocks (the downloads keep every cell).
MAX_DRAWN_CELLS = 50_000
MAX_DRAWN_ROWS = 64


@dataclass(frozen=True)
class ViewPlan:
    """How big the views are, and how much they are pooled to stay within the budget."""

    num_queries: int
    num_keys: int
    num_heads: int
    row_factor: int = 1
    col_factor: int = 1

    @property
    def cells(self) -> int:
        """Cells the full-resolution views would draw: the selection view plus one per head."""
        return (self.num_heads + 1) * self.num_queries * self.num_keys

    @property
    def drawn_cells(self) -> int:
        rows = -(-self.num_queries // self.row_factor)
        cols = -(-self.num_keys // self.col_factor)
        return (self.num_heads + 1) * rows * cols

    @property
    def downsampled(self) -> bool:
        return self.row_factor > 1 or self.col_factor > 1


def plan_views(num_queries: int, num_keys: int, num_heads: int,
               max_cells: int = MAX_DRAWN_CELLS) -> ViewPlan:
    """Chooses block sizes so the views draw at most about `max_cells` cells."""
    plan = ViewPlan(num_queries, num_keys, num_heads)
    if plan.cells <= max_cells:
        return plan
    per_view = max_cells // (num_heads + 1)
    max_rows = min(num_queries, MAX_DRAWN_ROWS)
    row_factor, col_factor = figures.block_factors(
        num_queries, num_keys, max_rows, max(8, per_view // max_rows))
    return ViewPlan(num_queries, num_keys, num_heads, row_factor, col_factor)


def size_summary(plan: ViewPlan, settings: ModelSettings) -> None:
    """What is about to run and be drawn; the budget guard's note when views are pooled."""
    k = min(settings.top_k, plan.num_keys)
    columns = st.columns(4)
    columns[0].metric("queries × keys (M × N)", f"{plan.num_queries} × {plan.num_keys}")
    columns[1].metric("heads × k", f"{plan.num_heads} × {k}")
    columns[2].metric(
        "attended pairs", f"{plan.num_heads * plan.num_queries * k:,}",
        help=f"H·M·k, instead of H·M·N = {plan.num_heads * plan.num_queries * plan.num_keys:,} "
             "for dense attention.")
    columns[3].metric("cells to draw", f"{plan.drawn_cells:,}",
                      help=f"Budget: {MAX_DRAWN_CELLS:,} cells across the views.")
    if plan.downsampled:
        st.info(
            f"**Large input:** {plan.cells:,} cells would be drawn, over the budget of "
            f"{MAX_DRAWN_CELLS:,}. The views show the maximum over blocks of "
            f"{plan.row_factor} queries × {plan.col_factor} keys; clicking a block selects its "
            "first query. The query detail and the downloads keep full resolution.",
            icon=":material/grid_view:",
        )


def selection_view(example, input_spec: InputSpec, item: int, result: RunResult,
                   plan: ViewPlan, *, key: str, on_select) -> None:
    """The top-k selection matrix; clicking a point calls `on_select` (see `ui.detail`)."""
    truth = None
    if example.ground_truth is not None:
        truth = np.asarray(example.ground_truth)[item]  # [M, G]
    fig = figures.selection_figure(
        result.indices,
        num_keys=plan.num_keys,
        query_labels=example.query_labels,
        key_labels=example.key_labels,
        ground_truth=truth,
        row_factor=plan.row_factor,
        col_factor=plan.col_factor,
    )
    show_figure(fig, key=key, filename=f"sdattn_selection_{_stem(input_spec)}",
                on_select=on_select)


def head_heatmaps(example, input_spec: InputSpec, result: RunResult, plan: ViewPlan,
                  *, key: str) -> None:
    """One heatmap per head, weights scattered back to `[M, N]`, unselected cells empty."""
    grid = figures.scatter_to_grid(result.scores, result.indices, plan.num_keys)  # [H, M, N]
    fig = figures.head_heatmaps_figure(
        grid,
        query_labels=example.query_labels,
        key_labels=example.key_labels,
        row_factor=plan.row_factor,
        col_factor=plan.col_factor,
    )
    show_figure(fig, key=key, filename=f"sdattn_heads_{_stem(input_spec)}")
    selected = result.scores[result.indices >= 0]
    if selected.size:
        low, high, uniform = float(selected.min()), float(selected.max()), 1 / result.k
        note = (f"Colour spans the selected weights, {low:.3f} to {high:.3f} "
                f"(uniform over k keys would be 1/k = {uniform:.3f}).")
        if high - low < 0.2 * uniform:
            note += (" The weights are close to uniform: random (Glorot) projections give tiny "
                     "scores. Choose **Weights: Aligned** for scores that follow query–key "
                     "similarity.")
        st.caption(note)


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
