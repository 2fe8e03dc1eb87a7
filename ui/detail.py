"""The linked query detail: choose a query (table row, chart click or picker), then inspect it.
Row selections and clicks only write the `query` key, so picker, detail and URL always agree."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import streamlit as st

from ui import figures
from ui import params, url_state
from ui.text import literal
from ui.runner import RunResult
from ui.widgets import clamp, default, show_figure

# Past a few hundred bars a ranked chart is a smear (and megabytes to send); the tail is cut.
MAX_RANKED_BARS = 256


def select_from_table(table_key: str, row_queries: Sequence[int] | None = None):
    """Returns an `on_select` callback for `st.dataframe`: the selected row's query is chosen.

    Args:
        table_key: the dataframe's key.
        row_queries: the query shown in each row, for a table sorted or cut (the worst
            queries); None when row i is query i.
    """

    def callback() -> None:
        rows = st.session_state[table_key]["selection"]["rows"]
        if rows:
            row = int(rows[0])
            st.session_state[params.QUERY] = int(row if row_queries is None else row_queries[row])

    return callback


def _first_value(customdata):
    """customdata[0] of a clicked point, whether it arrives as a list, a dict or a number."""
    if isinstance(customdata, dict):  # a typed-array row serialised by index
        customdata = [customdata[key] for key in sorted(customdata, key=int)]
    if isinstance(customdata, (list, tuple)):
        return customdata[0] if customdata else None
    return customdata


def select_from_chart(chart_key: str):
    """Returns an `on_select` callback for a chart whose points carry the query in customdata[0]."""

    def callback() -> None:
        points = st.session_state[chart_key]["selection"]["points"]
        for point in points:
            query = _first_value(point.get("customdata"))
            if query is not None:
                st.session_state[params.QUERY] = int(query)
                return

    return callback


def query_summary(example, result: RunResult, item: int) -> pd.DataFrame:
    """One row per query: label, sparse non-zeros, distinct keys picked, ground truth found."""
    labels = figures.axis_labels(example.query_labels, example.num_queries, "q")
    csr = example.to_scipy(item)  # [M, Dq]
    picked = [np.unique(result.indices[:, m][result.indices[:, m] >= 0])
              for m in range(example.num_queries)]
    table = {
        "query": labels,
        "non-zeros": np.diff(csr.indptr),
        "keys picked": [len(keys) for keys in picked],
    }
    if example.ground_truth is not None:
        truth = np.asarray(example.ground_truth)[item]  # [M, G]
        table["ground truth found"] = [
            f"{np.isin(row[row >= 0], keys).sum()}/{(row >= 0).sum()}"
            for row, keys in zip(truth, picked)
        ]
    table["valid"] = np.asarray(example.query_mask)[item]
    return pd.DataFrame(table)


@st.cache_data(max_entries=16, show_spinner=False)
def _cached_summary(identity, item: int, _example, _result: RunResult) -> pd.DataFrame:
    """`query_summary` of one run (`identity` stands for the example and the result): a query
    click reruns the page but not this (138 ms at 4,096 queries)."""
    return query_summary(_example, _result, item)


def query_table(example, result: RunResult, item: int, *, key: str, identity=None) -> None:
    """The per-query table; selecting a row chooses the query shown in the detail.

    Args:
        identity: hashable stand-in for (example, result), e.g. `(spec, item, settings)`, to
            cache the table across reruns; None computes it every time.
    """
    summary = (query_summary(example, result, item) if identity is None
               else _cached_summary(identity, item, example, result))
    st.dataframe(
        summary,
        key=key,
        on_select=select_from_table(key),
        selection_mode="single-row",
        hide_index=True,
        height=min(36 + 35 * example.num_queries, 320),
        width="stretch",
    )


def query_picker(example) -> int:
    """The selected query (a selectbox the table and chart clicks also set)."""
    labels = figures.axis_labels(example.query_labels, example.num_queries, "q")
    default(params.QUERY, 0)
    clamp(params.QUERY, 0, example.num_queries - 1)
    query = int(st.selectbox(
        "Query", range(example.num_queries), key=params.QUERY,
        format_func=lambda m: f"{m}: {labels[m]}",
        help="Or select a row in the table, or click a point in the selection view.",
    ))
    url_state.publish("query", {params.QUERY: query})
    return query


def selected_keys_frame(result: RunResult, query: int, key_labels: list[str]) -> pd.DataFrame:
    """Rows are the slots #1..#k (best first), columns the heads: `key label (weight)`.

    Slots down, heads across: k can be hundreds, heads are at most a few, so every slot is a
    row of the table (it scrolls down) instead of a column hidden past its right edge.
    """
    columns = {}
    for head in range(result.indices.shape[0]):
        slots = result.indices[head, query]
        weights = result.scores[head, query]
        order = np.argsort(-weights, kind="stable")
        columns[f"head {head}"] = [
            f"{key_labels[slots[s]]} ({weights[s]:.3f})" if slots[s] >= 0 else "—"
            for s in order
        ]
    return pd.DataFrame(columns, index=[f"#{i + 1}" for i in range(result.k)])


def nonzeros_frame(example, item: int, query: int) -> pd.DataFrame:
    """The query's sparse non-zeros, largest magnitude first."""
    row = example.to_scipy(item)[query]
    order = np.argsort(-np.abs(row.data), kind="stable")
    feature_names = _feature_names(example)
    frame = pd.DataFrame({"feature": row.indices[order], "value": row.data[order]})
    if feature_names is not None:
        frame.insert(1, "name", [feature_names[i] for i in row.indices[order]])
    return frame


def _feature_names(example):
    """Names of the query features, when they are known.

    `bag_of_words` queries are term rows over the same vocabulary as the keys (Dq = N), so the
    key labels name the features; other examples may carry `metadata["feature_labels"]`.
    """
    metadata = example.metadata or {}
    names = metadata.get("feature_labels")
    if names is not None and len(names) == example.query_dim:
        return [str(n) for n in names]
    if (metadata.get("generator") == "bag_of_words" and example.key_labels is not None
            and example.query_dim == example.num_keys):
        return list(example.key_labels)
    return None


def query_detail(example, result: RunResult, item: int, query: int, logits: np.ndarray,
                 top_k: int, *, key: str) -> None:
    """Ranked scores with the k cut-off, selected keys per head, and the sparse non-zeros."""
    query_labels = figures.axis_labels(example.query_labels, example.num_queries, "q")
    key_labels = figures.axis_labels(example.key_labels, example.num_keys, "k")
    if not np.asarray(example.query_mask)[item][query]:
        st.warning(f"Query {literal(query_labels[query])} is masked: it selects nothing and "
                   "attends to nothing (zero output).")
    chart, tables = st.columns([5, 4])
    with chart:
        fig = figures.ranked_scores_figure(
            logits,
            result.indices[:, query],
            top_k=min(top_k, example.num_keys),
            key_labels=key_labels,
            valid_keys=np.asarray(example.value_mask)[item],
            query_label=query_labels[query],
            max_ranks=max(4 * top_k, MAX_RANKED_BARS),
        )
        show_figure(fig, key=f"{key}_ranked", filename=f"sdattn_query_{query}_scores")
    with tables:
        st.markdown(f"**Selected keys of {literal(query_labels[query])}, per head** (weight)")
        keys = selected_keys_frame(result, query, key_labels)
        st.dataframe(keys, key=f"{key}_keys", width="stretch",
                     height=min(38 + 35 * len(keys), 388))
        st.caption(f"All {len(keys)} slots of each head, best first.")
        st.markdown("**Sparse non-zeros of the query**")
        st.dataframe(nonzeros_frame(example, item, query), key=f"{key}_nonzeros",
                     hide_index=True, width="stretch", height=220)
