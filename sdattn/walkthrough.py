"""The teaching walkthrough: sparse-dense top-k attention computed one step at a time, in NumPy.
Each step carries its formula, a paragraph and the actual numbers; the last step equals the layer's output."""

import dataclasses

import numpy as np

from sdattn import reference


@dataclasses.dataclass
class Step:
    """One step of the walkthrough.

    Attributes:
        key: stable identifier (`"query"`, `"projections"`, `"scores"`, `"top_k"`, `"softmax"`,
            `"weighted_sum"`, `"output"`).
        title: short heading.
        explanation: one paragraph, in plain words.
        formula: the step's maths, in LaTeX.
        arrays: the step's numbers by name (head-major where there are heads).
    """

    key: str
    title: str
    explanation: str
    formula: str
    arrays: dict


@dataclasses.dataclass
class Walkthrough:
    """All steps for one batch item, plus what the figures need to label them."""

    steps: list
    query_labels: list
    key_labels: list
    top_k: int

    def step(self, key):
        """Returns the step with this key."""
        return next(s for s in self.steps if s.key == key)


def _selected_indices(logits, allowed, top_k):
    """Exact per-head top-k of the logits among allowed keys: `[H, M, k]`, -1 for empty slots."""
    return reference.exact_top_k(logits[None], top_k, allowed[None])[0]


def _per_row_counts(rows: np.ndarray, num_queries: int) -> str:
    """How many non-zeros the rows hold: "3" when all alike, else "from 1 to 4"."""
    counts = np.bincount(rows, minlength=num_queries)
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"from {low} to {high}"


def build_walkthrough(query, value, weights, top_k, value_mask=None, query_mask=None,
                      indices=None, query_labels=None, key_labels=None):
    """Computes every step of top-k attention for one batch item.

    Args:
        query: dense float array `[M, Dq]` (one item; most entries zero).
        value: float array `[N, D]`, also used as the key.
        weights: the layer's weights in `keras.layers.MultiHeadAttention` order.
        top_k: keys kept per query.
        value_mask: bool `[N]`, False for padded keys; None = all valid.
        query_mask: bool `[M]`, False for padded queries; None = all valid.
        indices: `[H, M, k]` selection to explain (e.g. the layer's, for another selector);
            None = the exact per-head top-k of the scores (the `dot` selector).
        query_labels, key_labels: axis labels; default `q0…`, `k0…`.

    Returns:
        A `Walkthrough` whose `step("output").arrays["output"]` equals the layer's output.
    """
    query = np.asarray(query, np.float64)
    value = np.asarray(value, np.float64)
    num_queries, num_keys = query.shape[0], value.shape[0]
    named = reference.split_weights(weights)
    num_heads, key_dim = named["query_kernel"].shape[1:]
    slots = min(top_k, num_keys)
    allowed = reference.combined_mask(1, num_queries, num_keys, query_mask=None if query_mask is None else [query_mask],
                                      key_mask=None if value_mask is None else [value_mask])[0]  # [1, M, N]
    allowed = np.broadcast_to(allowed, (num_heads, num_queries, num_keys))
    query_labels = list(query_labels) if query_labels is not None else [f"q{i}" for i in range(num_queries)]
    key_labels = list(key_labels) if key_labels is not None else [f"k{j}" for j in range(num_keys)]

    rows, cols = np.nonzero(query)
    steps = [Step(
        "query", "1 · The sparse query rows",
        f"Each query is a sparse row: the {num_queries} rows hold {len(rows)} non-zeros among their "
        f"{query.size} entries ({100 * len(rows) / max(query.size, 1):.0f}%; "
        f"{_per_row_counts(rows, num_queries)} per row). The layer keeps them as a tf.SparseTensor "
        "and never builds the dense matrix shown here.",
        r"X \in \mathbb{R}^{M \times D_q},\quad \text{nnz}(X) \ll M \cdot D_q",
        {"query": query, "nonzero_rows": rows, "nonzero_cols": cols, "nonzero_values": query[rows, cols]})]

    projected_query = reference.project(query, named["query_kernel"], named["query_bias"])  # [M, H, kd]
    projected_key = reference.project(value, named["key_kernel"], named["key_bias"])  # [N, H, kd]
    projected_value = reference.project(value, named["value_kernel"], named["value_bias"])  # [N, H, vd]
    steps.append(Step(
        "projections", "2 · Projections into heads",
        f"Every head h has its own matrices. The sparse rows are multiplied by W_Q (a sparse × dense "
        f"matmul), the dense tokens by W_K and W_V, giving {num_heads} heads of size {key_dim}.",
        r"Q_h = X W^Q_h + b^Q_h,\quad K_h = T W^K_h + b^K_h,\quad V_h = T W^V_h + b^V_h",
        {"query": np.transpose(projected_query, (1, 0, 2)), "key": np.transpose(projected_key, (1, 0, 2)),
         "value": np.transpose(projected_value, (1, 0, 2))}))

    logits = np.einsum("mhd,nhd->hmn", projected_query, projected_key) / np.sqrt(key_dim)  # [H, M, N]
    steps.append(Step(
        "scores", "3 · Scores for all keys",
        "Each query is compared with every key by a scaled dot product. Dense attention would use all "
        "of these; top-k attention only needs them to choose (and the `dot` selector is exactly this).",
        r"S_h = \frac{Q_h K_h^\top}{\sqrt{d_k}} \in \mathbb{R}^{M \times N}",
        {"scores": logits, "allowed": allowed}))

    if indices is None:
        indices = _selected_indices(logits, allowed, slots)
    indices = np.asarray(indices)
    valid = indices >= 0
    safe = np.where(valid, indices, 0)
    valid &= np.take_along_axis(allowed, safe, axis=-1)
    indices = np.where(valid, indices, -1)
    kept = np.zeros_like(allowed)
    for h, m, j in zip(*np.nonzero(valid)):
        kept[h, m, indices[h, m, j]] = True
    steps.append(Step(
        "top_k", f"4 · The top-{slots} cut",
        f"Each query keeps only its {slots} highest-scoring allowed keys; the other "
        f"{num_keys - slots} are never looked at again. Masked keys can never be kept; if fewer "
        "than k keys are allowed, the empty slots are marked -1.",
        r"\mathcal{K}_{h,i} = \operatorname{top\text{-}k}_j\, S_{h,ij},\quad |\mathcal{K}_{h,i}| = k",
        {"indices": indices, "kept": kept, "slot_valid": valid}))

    slot_logits = np.take_along_axis(logits, safe, axis=-1)  # [H, M, k]
    slot_weights = reference.masked_softmax(slot_logits, valid)
    steps.append(Step(
        "softmax", "5 · Softmax over the selected keys",
        "The softmax runs over the k kept scores only, so each row of weights sums to 1 over its "
        "kept keys (0 for a query with no allowed key, never NaN).",
        r"A_{h,ij} = \frac{\exp S_{h,ij}}{\sum_{l \in \mathcal{K}_{h,i}} \exp S_{h,il}},\ j \in \mathcal{K}_{h,i}",
        {"weights": slot_weights, "slot_scores": np.where(valid, slot_logits, np.nan)}))

    context = np.zeros((num_queries, num_heads, projected_value.shape[-1]))
    for h in range(num_heads):
        context[:, h] = np.einsum("mk,mkd->md", slot_weights[h], projected_value[safe[h], h])
    steps.append(Step(
        "weighted_sum", "6 · Weighted sum of the kept values",
        "Each head mixes the value vectors of its kept keys with those weights: k vectors per "
        "query instead of N.",
        r"C_{h,i} = \sum_{j \in \mathcal{K}_{h,i}} A_{h,ij}\, V_{h,j}",
        {"context": np.transpose(context, (1, 0, 2))}))

    output = reference.output_projection(context[None], named["output_kernel"], named["output_bias"])[0]
    steps.append(Step(
        "output", "7 · Output projection",
        "The heads are concatenated and projected back to the output size; this is the layer's output.",
        r"O_i = \sum_h C_{h,i} W^O_h + b^O",
        {"output": output}))
    return Walkthrough(steps=steps, query_labels=query_labels, key_labels=key_labels, top_k=slots)


# The "break it" row: each preset sets the inputs and k to show one failure mode.
BREAK_IT_PRESETS = {
    "needle": {
        "label": "A needle",
        "generator": "needle",
        "top_k": 3,
        "what": "Each query has one key that should win, hidden among near-miss decoys.",
        "why": "With random projection weights the needle is not always on top: the scores are "
               "computed after W_Q and W_K, which mix the features. If the needle falls outside the "
               "top-k it gets exactly zero weight, and the output can change a lot.",
    },
    "ties": {
        "label": "Ties",
        "generator": "ties",
        "top_k": 3,
        "what": "Many keys score exactly the same.",
        "why": "Top-k must break the tie somehow: here the lower key index wins, so two equally good "
               "keys are treated differently and the choice is an artefact of their order.",
    },
    "all_masked": {
        "label": "All keys masked",
        "generator": "random",
        "top_k": 3,
        "mask_all_keys": True,
        "what": "Every key is padding (value_mask all False).",
        "why": "No key is allowed, so every slot is -1, every weight is 0 and the context is zero: "
               "the output is just the output bias. A plain softmax would divide 0 by 0 and give NaN.",
    },
    "k_over_n": {
        "label": "k > N",
        "generator": "random",
        "top_k": 50,
        "what": "Ask for more keys than exist.",
        "why": "k is clipped to N, every key is kept, and top-k attention becomes exactly dense "
               "attention: the same numbers as keras.layers.MultiHeadAttention.",
    },
}
