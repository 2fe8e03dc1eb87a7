"""Downloads of a run: selections and weights as a tidy CSV table and as an NPZ archive.
Pure (no Streamlit), so the formats are tested directly; the NPZ loads with `allow_pickle=False`."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ui import figures

CSV_COLUMNS = (
    "query", "query_label", "head", "slot", "key", "key_label", "weight", "ground_truth",
)


def selections_frame(
    indices: np.ndarray,
    scores: np.ndarray,
    *,
    query_labels: Sequence[str] | None = None,
    key_labels: Sequence[str] | None = None,
    ground_truth: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per valid selected slot: which key each query picked, in which head, how much.

    Args:
        indices: int `[H, M, k]`, `-1` for invalid slots (left out of the table).
        scores: float `[H, M, k]`, attention weight of each slot.
        query_labels, key_labels: axis labels, or None for `q0..`/`k0..`.
        ground_truth: int `[M, G]` padded with `-1`, or None (the column is then empty).

    Returns:
        A DataFrame with `CSV_COLUMNS`, ordered by query, head, slot.
    """
    indices = np.asarray(indices)
    scores = np.asarray(scores)
    num_heads, num_queries, _ = indices.shape
    num_keys = int(indices.max()) + 1 if key_labels is None else len(key_labels)
    q_labels = figures.axis_labels(query_labels, num_queries, "q")
    k_labels = figures.axis_labels(key_labels, max(num_keys, 0), "k")
    head, query, slot = np.nonzero(indices >= 0)
    order = np.lexsort((slot, head, query))
    head, query, slot = head[order], query[order], slot[order]
    key = indices[head, query, slot]
    truth: list = [None] * len(key)
    if ground_truth is not None:
        truth_sets = [set(row[row >= 0].tolist()) for row in np.asarray(ground_truth)]
        truth = [int(k) in truth_sets[q] for q, k in zip(query, key)]
    return pd.DataFrame({
        "query": query,
        "query_label": [q_labels[q] for q in query],
        "head": head,
        "slot": slot,
        "key": key,
        "key_label": [k_labels[k] for k in key],
        "weight": scores[head, query, slot].astype(np.float64),
        "ground_truth": pd.array(truth, dtype="boolean"),
    }, columns=list(CSV_COLUMNS))


def selections_csv(frame: pd.DataFrame) -> bytes:
    """The table as UTF-8 CSV bytes."""
    return frame.to_csv(index=False).encode("utf-8")


def selections_npz(
    indices: np.ndarray,
    scores: np.ndarray,
    *,
    query_labels: Sequence[str],
    key_labels: Sequence[str],
    config: dict,
) -> bytes:
    """An NPZ archive with the selections and weights, readable with `allow_pickle=False`.

    Arrays: `selected_indices` int32 `[H, M, k]`, `attention_weights` float32 `[H, M, k]`,
    `weights_grid` float32 `[H, M, N]` (NaN where unselected, as the heatmaps draw it),
    `query_labels`, `key_labels` (unicode) and `config` (a JSON string of the run settings).
    """
    indices = np.asarray(indices, np.int32)
    scores = np.asarray(scores, np.float32)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        selected_indices=indices,
        attention_weights=scores,
        weights_grid=figures.scatter_to_grid(scores, indices, len(key_labels)).astype(np.float32),
        query_labels=np.asarray(list(query_labels), dtype=np.str_),
        key_labels=np.asarray(list(key_labels), dtype=np.str_),
        config=np.asarray(json.dumps(config, sort_keys=True, default=str)),
    )
    return buffer.getvalue()
