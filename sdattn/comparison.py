"""Side-by-side runs of selectors on one example, with shared attention weights, against exact attention.
`compare_selectors` gives a tidy table for a notebook; `SelectorRun` keeps the per-query arrays a page draws."""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import statistics
import time

import numpy as np
import tensorflow as tf

# hashing, hybrid and learned are imported so that their selectors are registered by name.
from sdattn.arguments import positive_int
from sdattn import metrics, reference
from sdattn import selectors as selectors_lib
from sdattn import weights as weights_lib
from sdattn.layer import SparseDenseMultiHeadAttention

# A float32 layer and float64 logits disagree in about the 7th digit, so keys within this of the
# k-th exact logit count as hits: a tie is not a miss.
_TIE_TOLERANCE = 1e-5

SUMMARY_COLUMNS = [
    "selector", "recall_at_k", "attention_mass", "output_rel_error", "ground_truth_recall",
    "head_agreement", "time_ms", "k", "top_k", "num_heads", "key_dim", "num_keys", "per_head",
]


@dataclasses.dataclass
class DenseReference:
    """Exact dense attention on one example with given weights (NumPy, float64).

    Attributes:
        output: `[B, M, *out]` dense attention output.
        weights: `[B, H, M, N]` dense softmax weights (0 on masked keys and masked query rows).
        logits: `[B, H, M, N]` scaled logits q·k/sqrt(key_dim), before masking.
        mask: bool `[B, 1, M, N]`, the combined query and value mask (True = may attend).
    """

    output: np.ndarray
    weights: np.ndarray
    logits: np.ndarray
    mask: np.ndarray


@dataclasses.dataclass
class SelectorRun:
    """One selector's run on one example, with its per-query metrics against exact attention.

    Attributes:
        label: the selector's name in tables (unique within a comparison).
        selector: the selector's Keras-serialized config, enough to rebuild it.
        per_head: whether the selector picks keys separately for each head.
        top_k: the `top_k` asked for; `k = indices.shape[-1] = min(top_k, N)`.
        key_dim: size of each query/key head.
        indices: int32 `[B, H, M, k]` selected key positions, -1 for an invalid slot.
        scores: float32 `[B, H, M, k]` attention weights over the slots.
        output: float32 `[B, M, *out]` the sparse layer's output.
        recall: `[B, H, M]` recall@k against the exact top-k (NaN: no valid key).
        mass: `[B, H, M]` share of the dense attention weight on the selected keys.
        output_error: `[B, M]` ‖o_sparse − o_dense‖ / ‖o_dense‖ (NaN on masked query rows).
        ground_truth_recall: `[B, H, M]`, or None when the example has no ground truth.
        head_agreement: `[H, H]` mean Jaccard index of the heads' selected sets.
        time_ms: median wall time of one eager layer call, in milliseconds (NaN if not timed).
        dense: the exact attention this run is measured against.
    """

    label: str
    selector: dict
    per_head: bool
    top_k: int
    key_dim: int
    indices: np.ndarray
    scores: np.ndarray
    output: np.ndarray
    recall: np.ndarray
    mass: np.ndarray
    output_error: np.ndarray
    ground_truth_recall: np.ndarray | None
    head_agreement: np.ndarray
    time_ms: float
    dense: DenseReference

    @property
    def k(self):
        """The number of slots, `min(top_k, N)`."""
        return int(self.indices.shape[-1])

    def summary(self):
        """One row of the comparison table: means over the defined queries (and heads).

        Returns:
            dict with the keys of `SUMMARY_COLUMNS`.
        """
        _, heads, _, num_keys = self.dense.logits.shape
        off_diagonal = self.head_agreement[~np.eye(heads, dtype=bool)]
        return {
            "selector": self.label,
            "recall_at_k": metrics.mean_of_defined(self.recall),
            "attention_mass": metrics.mean_of_defined(self.mass),
            "output_rel_error": metrics.mean_of_defined(self.output_error),
            "ground_truth_recall": (math.nan if self.ground_truth_recall is None
                                    else metrics.mean_of_defined(self.ground_truth_recall)),
            "head_agreement": metrics.mean_of_defined(off_diagonal) if off_diagonal.size else math.nan,
            "time_ms": self.time_ms,
            "k": self.k,
            "top_k": self.top_k,
            "num_heads": heads,
            "key_dim": self.key_dim,
            "num_keys": num_keys,
            "per_head": self.per_head,
        }


#: The comparison functions' default attention weights (Glorot-uniform kernels, zero biases):
#: `sdattn.weights.random_weights` under the name this module exported first. Pass
#: `weights=sdattn.weights.aligned_weights(...)` for logits that follow the raw query–key
#: similarity.
attention_weights = weights_lib.random_weights


def dense_reference(example, weights):
    """Exact dense attention on an example, with its query and value masks.

    Args:
        example: an `sdattn.inputs.Example`.
        weights: MHA-ordered weights (at least the 8 attention arrays; extra ones are ignored).

    Returns:
        A `DenseReference`.
    """
    mask = reference.combined_mask(example.batch_size, example.num_queries, example.num_keys,
                                   query_mask=example.query_mask, key_mask=example.value_mask)
    output, dense_weights, logits = reference.dense_attention(
        example.dense_query(), example.value, list(weights)[:8], attention_mask=mask)
    return DenseReference(output=output, weights=dense_weights, logits=logits, mask=mask)


def _accepts_seed(selector_class):
    return "seed" in inspect.signature(selector_class.__init__).parameters


def _resolve(identifier, seed):
    """A fresh `Selector` for `identifier`, seeded with `seed` when it takes a seed and has none.

    Returns:
        `(selector, trained_weights)`: a built instance passed in keeps its weights, which are
        copied into the new layer (so a trained `learned` selector is compared as trained).
    """
    if isinstance(identifier, selectors_lib.Selector):
        fresh = type(identifier).from_config(identifier.get_config())
        return fresh, (identifier.get_weights() if identifier.built else [])
    if isinstance(identifier, str):
        selector_class = type(selectors_lib.get(identifier))
        if _accepts_seed(selector_class):
            return selectors_lib.get({"name": identifier, "seed": seed}), []
        return selectors_lib.get(identifier), []
    if isinstance(identifier, dict) and "class_name" not in identifier and "name" in identifier:
        config = dict(identifier)
        selector_class = type(selectors_lib.get(config["name"]))
        if "seed" not in config and _accepts_seed(selector_class):
            config["seed"] = seed
        return selectors_lib.get(config), []
    return selectors_lib.get(identifier), []


def _default_label(identifier):
    if isinstance(identifier, str):
        return identifier
    if isinstance(identifier, selectors_lib.Selector):
        return identifier.selector_name
    if isinstance(identifier, dict):
        return str(identifier.get("name") or identifier.get("class_name") or "selector")
    return type(identifier).__name__


def _labelled(selectors):
    """`[(label, identifier)]` with unique labels, from a list or a `{label: selector}` dict."""
    is_config = isinstance(selectors, dict) and ("name" in selectors or "class_name" in selectors)
    if isinstance(selectors, (str, selectors_lib.Selector)) or is_config:
        selectors = [selectors]  # a single selector
    if isinstance(selectors, dict):
        pairs = [(str(label), identifier) for label, identifier in selectors.items()]
    else:
        pairs = [(_default_label(identifier), identifier) for identifier in selectors]
    if not pairs:
        raise ValueError(
            "Received an invalid value for argument `selectors`, expected at least one selector. "
            f"Received: selectors={selectors!r}")
    seen = {}
    unique = []
    for label, identifier in pairs:
        seen[label] = seen.get(label, 0) + 1
        unique.append((label if seen[label] == 1 else f"{label} ({seen[label]})", identifier))
    return unique


def run_selector(example, selector, top_k, num_heads, key_dim, seed=0, weights=None,
                 value_dim=None, dense=None, repeats=3, label=None):
    """Runs one selector on an example and measures it against exact dense attention.

    Args:
        example: an `sdattn.inputs.Example`.
        selector: a registered name, a config dict or a `Selector` (a built instance keeps its
            trained weights). A name or `{"name": ...}` dict whose selector takes a `seed` and
            has none gets `seed`, so runs are reproducible.
        top_k: keys per query.
        num_heads: H.
        key_dim: size of each query/key head.
        seed: seeds the attention weights (when `weights` is None) and seedable selectors.
        weights: MHA-ordered attention weights to use instead (the first 8 arrays are used).
        value_dim: size of each value head; defaults to `key_dim`.
        dense: a `DenseReference` for these weights, to avoid recomputing it.
        repeats: timed calls after the first one (0: no timing, `time_ms` is NaN).
        label: the name in tables; defaults to the selector's name.

    Returns:
        A `SelectorRun`.
    """
    top_k = positive_int("top_k", top_k)
    if isinstance(repeats, bool) or not isinstance(repeats, numbers.Integral) or repeats < 0:
        raise ValueError(
            "Received an invalid value for argument `repeats`, expected a non-negative integer. "
            f"Received: repeats={repeats!r}")
    if weights is None:
        weights = weights_lib.random_weights(example, num_heads, key_dim, seed=seed, value_dim=value_dim)
    weights = list(weights)
    if len(weights) < 8:
        raise ValueError(
            "Received an invalid value for argument `weights`, expected the 8 arrays of a "
            f"MultiHeadAttention with biases. Received: {len(weights)} arrays")
    if dense is None:
        dense = dense_reference(example, weights)
    layer = selector_layer(example, selector, top_k, num_heads, key_dim, weights, seed=seed,
                           value_dim=value_dim)
    return measure_layer(example, layer, dense, label=label or _default_label(selector),
                         top_k=top_k, key_dim=key_dim, repeats=repeats)


def selector_layer(example, selector, top_k, num_heads, key_dim, weights, seed=0, value_dim=None):
    """A `SparseDenseMultiHeadAttention` with this selector, built on the example, holding
    `weights` (a built `Selector` instance keeps its own trained weights).

    Args:
        example: an `sdattn.inputs.Example`, to build the layer on.
        selector, top_k, num_heads, key_dim, seed, value_dim: as for `run_selector`.
        weights: the MHA-ordered attention weights (the first 8 arrays are used).

    Returns:
        The built layer.
    """
    resolved, trained_weights = _resolve(selector, seed)
    layer = SparseDenseMultiHeadAttention(num_heads, key_dim, top_k, selector=resolved,
                                          value_dim=value_dim)
    query = example.to_sparse_tensor()
    value = tf.constant(example.value)
    masks = dict(query_mask=tf.constant(example.query_mask), value_mask=tf.constant(example.value_mask))
    layer(query, value, **masks)
    layer.set_weights(list(weights)[:8] + (trained_weights or layer.get_weights()[8:]))
    return layer


def measure_layer(example, layer, dense, *, label, top_k, key_dim, repeats=3):
    """Calls a built layer on an example and measures it against exact dense attention.

    `run_selector` builds its layer from a selector and weights; a caller holding a trained
    layer (the app's "From your layer") passes that layer instead.

    Args:
        example: an `sdattn.inputs.Example`.
        layer: a built `SparseDenseMultiHeadAttention` whose attention weights `dense` used.
        dense: the `DenseReference` of the same example and weights.
        label: the run's name in tables and figures.
        top_k: the run's k; a k other than the layer's `top_k` is passed to its calls.
        key_dim: the key_dim reported for the run.
        repeats: timed calls after the measured one (0: no timing, `time_ms` is NaN).

    Returns:
        A `SelectorRun`.
    """
    query = example.to_sparse_tensor()
    value = tf.constant(example.value)
    call_args = dict(query_mask=tf.constant(example.query_mask),
                     value_mask=tf.constant(example.value_mask))
    if top_k != layer.top_k:
        call_args["top_k"] = top_k
    output, scores, indices = layer(query, value, return_attention_scores=True, **call_args)
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        layer(query, value, **call_args)
        durations.append((time.perf_counter() - start) * 1e3)

    indices = indices.numpy().astype(np.int32)
    output = output.numpy()
    query_valid = np.asarray(example.query_mask, bool)  # [B, M]
    output_error = metrics.output_relative_error(output, dense.output)
    output_error = np.where(query_valid, output_error, np.nan)  # a masked query has no output to judge
    truth_recall = None
    if example.ground_truth is not None:
        truth_recall = metrics.ground_truth_recall(indices, example.ground_truth)
        truth_recall = np.where(query_valid[:, None, :], truth_recall, np.nan)
    return SelectorRun(
        label=label,
        selector=selectors_lib.serialize(layer.selector),
        per_head=bool(type(layer.selector).per_head),
        top_k=top_k,
        key_dim=int(key_dim),
        indices=indices,
        scores=scores.numpy(),
        output=output,
        recall=metrics.recall_at_k(indices, dense.logits, mask=dense.mask, tie_tolerance=_TIE_TOLERANCE),
        mass=metrics.attention_mass_captured(indices, dense.weights, mask=dense.mask),
        output_error=output_error,
        ground_truth_recall=truth_recall,
        head_agreement=metrics.mean_head_agreement(indices),
        time_ms=statistics.median(durations) if durations else math.nan,
        dense=dense,
    )


def run_selectors(example, selectors, top_k, num_heads, key_dim, seed=0, value_dim=None,
                  weights=None, repeats=3):
    """Runs several selectors on one example with the same attention weights.

    Args:
        example: an `sdattn.inputs.Example`.
        selectors: a list of selectors (names, config dicts, `Selector`s), or a
            `{label: selector}` dict; repeated labels get a " (2)" suffix.
        top_k, num_heads, key_dim, seed, value_dim, weights, repeats: as for `run_selector`;
            the weights and the exact dense attention are computed once and shared.

    Returns:
        list of `SelectorRun`, in the order given.
    """
    labelled = _labelled(selectors)
    if weights is None:
        weights = weights_lib.random_weights(example, num_heads, key_dim, seed=seed, value_dim=value_dim)
    weights = list(weights)[:8]
    dense = dense_reference(example, weights)
    return [run_selector(example, identifier, top_k, num_heads, key_dim, seed=seed, weights=weights,
                         value_dim=value_dim, dense=dense, repeats=repeats, label=label)
            for label, identifier in labelled]


def summary_table(runs):
    """The comparison table of some runs: one row per selector.

    Args:
        runs: `SelectorRun`s.

    Returns:
        `pandas.DataFrame` with the columns `SUMMARY_COLUMNS`.
    """
    import pandas as pd  # imported here: `import sdattn` stays free of pandas

    return pd.DataFrame([run.summary() for run in runs], columns=SUMMARY_COLUMNS)


def compare_selectors(example, selectors, top_k, num_heads, key_dim, seed=0, value_dim=None,
                      weights=None, repeats=3):
    """Compares selectors on one example against exact dense attention with the same weights.

    Every selector runs in its own `SparseDenseMultiHeadAttention` with the same attention
    weights (seeded from `seed`, or `weights`), and is measured against exact dense attention
    with those weights and the example's query and value masks.

    Args:
        example: an `sdattn.inputs.Example` (e.g. from `sdattn.inputs.generate_inputs`).
        selectors: a list of names, config dicts or `Selector`s, or a `{label: selector}` dict.
        top_k: keys per query.
        num_heads: H.
        key_dim: size of each query/key head.
        seed: seeds the attention weights and seedable selectors (`random`, `lsh`, `learned`).
        value_dim: size of each value head; defaults to `key_dim`.
        weights: MHA-ordered attention weights to use instead of seeded ones.
        repeats: timed calls per selector after a warm-up call.

    Returns:
        A tidy `pandas.DataFrame`, one row per selector, with the columns `SUMMARY_COLUMNS`:
        means over the valid queries (and heads) of recall@k against the exact top-k, attention
        mass captured, output relative error and ground-truth recall (NaN without ground truth);
        the mean off-diagonal head agreement (NaN with one head); the median call time in ms;
        and the settings.
    """
    return summary_table(run_selectors(example, selectors, top_k, num_heads, key_dim, seed=seed,
                                       value_dim=value_dim, weights=weights, repeats=repeats))


def per_query_table(run, query_labels=None):
    """The per-query metrics of one run, averaged over the heads: one row per (batch, query).

    Sort it to find the worst queries, e.g. `per_query_table(run).nsmallest(10, "recall_at_k")`.

    Args:
        run: a `SelectorRun`.
        query_labels: optional M names of the query rows (`example.query_labels`).

    Returns:
        `pandas.DataFrame` with columns batch, query, query_label, recall_at_k, attention_mass,
        output_rel_error, ground_truth_recall (NaN where undefined).
    """
    batch, _, queries = run.recall.shape
    batch_index, query_index = np.meshgrid(np.arange(batch), np.arange(queries), indexing="ij")  # [B, M] each
    truth = (np.full((batch, queries), np.nan) if run.ground_truth_recall is None
             else metrics.mean_of_defined(run.ground_truth_recall, axis=1))
    labels = [str(query_labels[m]) if query_labels is not None else f"q{m}" for m in query_index.ravel()]
    import pandas as pd

    return pd.DataFrame({
        "batch": batch_index.ravel(),
        "query": query_index.ravel(),
        "query_label": labels,
        "recall_at_k": np.ravel(metrics.mean_of_defined(run.recall, axis=1)),
        "attention_mass": np.ravel(metrics.mean_of_defined(run.mass, axis=1)),
        "output_rel_error": run.output_error.ravel(),
        "ground_truth_recall": np.ravel(truth),
    })


def k_sweep_table(example, selectors, ks, num_heads, key_dim, seed=0, value_dim=None, weights=None):
    """Recall, mass, output error and ground-truth recall as functions of k, per selector.

    Unlike `metrics.k_sweep` (one sort of a selector's scores), this reruns the layer at every k,
    so it is exact for selectors whose choice depends on k (`hybrid` splits k) or that override
    `select` (`lsh` falls back to farther buckets as k grows). Each selector's layer is built
    once and called with each k (the layer's `top_k` call argument).

    Args:
        example: an `sdattn.inputs.Example`.
        selectors: as for `compare_selectors`.
        ks: positive ints.
        num_heads, key_dim, seed, value_dim, weights: as for `compare_selectors`.

    Returns:
        Tidy `pandas.DataFrame`, one row per (selector, k), with the columns of `SUMMARY_COLUMNS`
        except the time.
    """
    ks = [positive_int("ks", k) for k in ks]
    labelled = _labelled(selectors)
    if weights is None:
        weights = weights_lib.random_weights(example, num_heads, key_dim, seed=seed, value_dim=value_dim)
    weights = list(weights)[:8]
    dense = dense_reference(example, weights)
    rows = []
    for label, identifier in labelled:
        layer = selector_layer(example, identifier, max(ks, default=1), num_heads, key_dim,
                               weights, seed=seed, value_dim=value_dim)
        rows.extend(measure_layer(example, layer, dense, label=label, top_k=k, key_dim=key_dim,
                                  repeats=0).summary() for k in ks)
    columns = [column for column in SUMMARY_COLUMNS if column != "time_ms"]
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)
