"""The compare page's controls and views: selectors to compare, the A/B pair, metric table, diff
map, histograms, worst queries, k-sweep and head agreement (figures: ui.figures)."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pandas as pd
import streamlit as st

import sdattn
from sdattn import comparison, metrics
from ui import figures
from ui import detail, params, runner, url_state
from ui.widgets import default, show_figure

# Exact dense attention is the yardstick of every metric: H·M·N float64 logits and weights.
# Past this many cells the page refuses instead of filling the memory of a shared server.
MAX_DENSE_CELLS = 2_000_000
MAX_WORST_ROWS = 20

METRIC_TITLES = {
    "recall_at_k": "recall@k",
    "attention_mass": "attention mass captured",
    "output_rel_error": "output relative error",
}
SHORT_TITLES = {"recall_at_k": "recall@k", "attention_mass": "mass",
                "output_rel_error": "output error"}
# Worst means lowest for the shares, highest for the error.
WORST_IS_LOW = {"recall_at_k": True, "attention_mass": True, "output_rel_error": False}


# ----------------------------------------------------------------------------- controls


def selectors_control() -> tuple[str, ...]:
    """The selectors to compare (a multiselect), in the order the user picked them."""
    names = sdattn.available_selectors()
    default(params.SELECTORS, [name for name in params.DEFAULT_SELECTORS if name in names])
    chosen = st.multiselect(
        "Selectors", names, key=params.SELECTORS,
        help="Two or more strategies, run on the same input with the same weights and "
             "measured against exact dense attention.",
    )
    url_state.publish("compare", {params.SELECTORS: list(chosen) or None})
    return tuple(chosen)


def _choice(key: str, label: str, options: list, fallback, **kwargs):
    """A selectbox whose stored value falls back when it left the options."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = fallback
    return st.selectbox(label, options, key=key, **kwargs)


def pair_controls(selectors: tuple[str, ...], num_heads: int) -> tuple[str, str, int]:
    """Selector A, selector B and the head of the diff map; A and B default to the first two."""
    a_column, b_column, head_column = st.columns(3)
    options = list(selectors)
    with a_column:
        selector_a = _choice(params.SELECTOR_A, "Selector A", options, options[0],
                             help="The selector you are debugging: its keys are blue on the "
                                  "diff map, and the worst queries and the query detail are "
                                  "A's.")
    with b_column:
        others = [name for name in options if name != selector_a] or options
        selector_b = _choice(params.SELECTOR_B, "Selector B", others, others[0],
                             help="What A is compared with (e.g. `dot`, the exact top-k): its "
                                  "keys are orange on the diff map.")
    with head_column:
        head = _choice(params.DIFF_HEAD, "Head", list(range(num_heads)), 0,
                       format_func=lambda h: f"head {h}",
                       help="Selectors shared by all heads pick the same keys in every head.")
    return selector_a, selector_b, int(head)


# ----------------------------------------------------------------------------- views


def dense_budget_problem(num_queries: int, num_keys: int, num_heads: int) -> str | None:
    """A message when exact dense attention would be too big to compute here, else None."""
    cells = num_heads * num_queries * num_keys
    if cells <= MAX_DENSE_CELLS:
        return None
    return (f"Comparing measures every selector against exact dense attention, which needs "
            f"H·M·N = {cells:,} scores here (the page allows {MAX_DENSE_CELLS:,}). Use fewer "
            "queries, keys or heads, or `sdattn.compare_selectors` in a notebook.")


def summary_table(runs: list[comparison.SelectorRun], *, key: str) -> pd.DataFrame:
    """The per-selector metrics (`sdattn.comparison.summary_table`), shown and returned."""
    table = comparison.summary_table(runs)
    shown = table[["selector", "recall_at_k", "attention_mass", "output_rel_error",
                   "ground_truth_recall", "head_agreement", "time_ms", "per_head"]]
    if shown["ground_truth_recall"].isna().all():
        shown = shown.drop(columns="ground_truth_recall")
    share = dict(min_value=0.0, max_value=1.0, format="%.3f")
    st.dataframe(
        shown,
        key=key,
        hide_index=True,
        width="stretch",
        column_config={
            "selector": st.column_config.TextColumn("selector"),
            "recall_at_k": st.column_config.ProgressColumn(
                "recall@k", help="Share of the exact top-k keys (by q·k) found.", **share),
            "attention_mass": st.column_config.ProgressColumn(
                "attention mass", help="Share of the dense softmax weight on the selected keys.",
                **share),
            "output_rel_error": st.column_config.NumberColumn(
                "output error", format="%.3f", help="‖o_sparse − o_dense‖ / ‖o_dense‖."),
            "ground_truth_recall": st.column_config.ProgressColumn(
                "ground-truth recall", help="Share of the planted relevant keys found.", **share),
            "head_agreement": st.column_config.NumberColumn(
                "head agreement", format="%.2f",
                help="Mean Jaccard index of two heads' selections (1: shared by all heads)."),
            "time_ms": st.column_config.NumberColumn(
                "time (ms)", format="%.1f", help="Median eager layer call on this machine."),
            "per_head": st.column_config.CheckboxColumn("per head"),
        },
    )
    return table


def diff_map(example, run_a: comparison.SelectorRun, run_b: comparison.SelectorRun, head: int,
             *, key: str, on_select) -> None:
    """The A/B diff map of one head; clicking a cell chooses its query (see `ui.detail`)."""
    num_queries, num_keys = example.num_queries, example.num_keys
    # Planned from the pixels a cell gets, as the playground's views (no cell lost to a gap).
    plan = figures.plan_grid(num_queries, num_keys, max_height_px=1040)
    heads_a, heads_b = run_a.indices.shape[1], run_b.indices.shape[1]
    fig = figures.selection_diff_figure(
        run_a.indices[0, min(head, heads_a - 1)],
        run_b.indices[0, min(head, heads_b - 1)],
        num_keys=num_keys,
        names=(run_a.label, run_b.label),
        head=head,
        query_labels=example.query_labels,
        key_labels=example.key_labels,
        plan=plan,
    )
    show_figure(fig, key=key, filename=f"sdattn_diff_{run_a.label}_{run_b.label}_head{head}",
                on_select=on_select)
    overlap = metrics.selector_overlap(run_a.indices, run_b.indices)  # [B, H, M] each
    jaccard = metrics.mean_of_defined(overlap["jaccard"][0, head])
    st.caption(
        f"Mean Jaccard index of the two selections in head {head}: **{jaccard:.2f}** "
        f"(1: the same keys). Blue: only {run_a.label}; orange: only {run_b.label}; grey: both. "
        "Click a cell to inspect its query below.")


def histograms(runs: list[comparison.SelectorRun], *, key: str) -> None:
    """Per-(query, head) recall@k and captured mass, one overlaid histogram per selector."""
    fig = figures.metric_histograms_figure(
        {run.label: {"recall_at_k": run.recall, "attention_mass": run.mass} for run in runs},
        metric_titles={"recall_at_k": METRIC_TITLES["recall_at_k"],
                       "attention_mass": METRIC_TITLES["attention_mass"]},
    )
    show_figure(fig, key=key, filename="sdattn_metric_histograms")


def worst_queries_frame(example, run_a: comparison.SelectorRun, run_b: comparison.SelectorRun,
                        metric: str, max_rows: int = MAX_WORST_ROWS) -> pd.DataFrame:
    """A's worst queries by `metric` (head-averaged), with B's values beside them.

    Args:
        example: the single-item example the runs were made on.
        run_a, run_b: the pair's runs (B's columns are left out when it is A itself).
        metric: a `WORST_METRICS` name.
        max_rows: rows kept, worst first.

    Returns:
        `pandas.DataFrame` with `query` (the row of the example), `label`, then per selector
        and metric a column `"<selector> <metric>"`; undefined (masked) queries are left out.
    """
    labels = figures.axis_labels(example.query_labels, example.num_queries, "q")
    frames = {run.label: comparison.per_query_table(run, labels) for run in (run_a, run_b)}
    table = pd.DataFrame({"query": frames[run_a.label]["query"], "label": labels})
    for name in WORST_IS_LOW:
        for label, frame in frames.items():
            table[f"{label} {SHORT_TITLES[name]}"] = frame[name].to_numpy()
    ranked = table[f"{run_a.label} {SHORT_TITLES[metric]}"]
    table = table[ranked.notna()].sort_values(
        f"{run_a.label} {SHORT_TITLES[metric]}", ascending=WORST_IS_LOW[metric], kind="stable")
    return table.head(max_rows).reset_index(drop=True)


def worst_queries(example, run_a: comparison.SelectorRun, run_b: comparison.SelectorRun,
                  *, key: str) -> None:
    """The worst-queries table with its ranking metric; selecting a row chooses the query."""
    default(params.WORST_BY, params.WORST_METRICS[0])
    metric = st.radio(
        "Worst by", params.WORST_METRICS, format_func=METRIC_TITLES.get, key=params.WORST_BY,
        horizontal=True,
        help=f"Ranks {run_a.label}'s queries (averaged over heads): lowest share first, or "
             "highest error first.")
    table = worst_queries_frame(example, run_a, run_b, metric)
    st.dataframe(
        table,
        key=key,
        on_select=detail.select_from_table(key, table["query"].tolist()),
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
        height=min(36 + 35 * len(table), 420),
        column_config={column: st.column_config.NumberColumn(format="%.3f")
                       for column in table.columns[2:]},
    )


def pair_detail(example, run_a: comparison.SelectorRun, run_b: comparison.SelectorRun,
                query: int, top_k: int, *, key: str) -> None:
    """The playground's query detail for A (scores against exact attention), then B's keys."""
    logits = run_a.dense.logits[0, :, query, :]  # [H, N], the exact scores A is measured against
    detail.query_detail(example, runner.run_result(run_a), 0, query, logits, top_k, key=key)
    key_labels = figures.axis_labels(example.key_labels, example.num_keys, "k")
    st.markdown(f"**Selected keys of the same query by {run_b.label}, per head** (weight)")
    st.dataframe(detail.selected_keys_frame(runner.run_result(run_b), query, key_labels),
                 key=f"{key}_keys_b", width="stretch")


@contextlib.contextmanager
def sweep_progress(num_selectors: int, num_ks: int, delay_s: float = 0.5):
    """A progress bar with counts for the k-sweep, shown once it has run for `delay_s`
    (cached points arrive at once and never show it); yields the `on_point` callback."""
    placeholder = st.empty()
    started = time.perf_counter()
    shown = {"bar": None}

    def on_point(done: int, total: int) -> None:
        if shown["bar"] is None and time.perf_counter() - started < delay_s:
            return
        text = (f"k-sweep: {done} of {total} points ({num_selectors} selectors × {num_ks} "
                "values of k)")
        if shown["bar"] is None:
            shown["bar"] = placeholder.progress(done / total, text=text)
        else:
            shown["bar"].progress(done / total, text=text)

    yield on_point
    if shown["bar"] is not None:
        shown["bar"].progress(1.0, text=f"k-sweep: {num_selectors * num_ks} points in "
                                        f"{time.perf_counter() - started:.1f} s")


def k_sweep(table: pd.DataFrame, selectors: tuple[str, ...], top_k: int, *, key: str) -> None:
    """Recall@k and captured mass against k, from `sdattn.comparison.k_sweep_table`."""
    ks = sorted(table["k"].unique())
    curves = {
        name: np.stack([
            table[table["selector"] == label].set_index("k").loc[ks, name].to_numpy()
            for label in selectors])
        for name in ("recall_at_k", "attention_mass")
    }
    fig = figures.k_sweep_figure(
        list(selectors), ks, curves,
        metric_titles={"recall_at_k": METRIC_TITLES["recall_at_k"],
                       "attention_mass": METRIC_TITLES["attention_mass"]},
        current_k=min(top_k, int(table["num_keys"].iloc[0])),
    )
    show_figure(fig, key=key, filename="sdattn_k_sweep")


def head_agreement(runs: list[comparison.SelectorRun], *, key: str) -> None:
    """The H x H head-agreement heatmap of every selector."""
    fig = figures.head_agreement_figure({run.label: run.head_agreement for run in runs})
    show_figure(fig, key=key, filename="sdattn_head_agreement")
