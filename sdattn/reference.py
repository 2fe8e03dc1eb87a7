"""NumPy ground truth for sdattn: dense multi-head attention and attention over given key indices.
Deliberately plain and slow; every test of the TensorFlow layer is checked against these functions."""

import numpy as np


def split_weights(weights):
    """Names the arrays of a `MultiHeadAttention`-ordered weight list.

    Args:
        weights: list of arrays in `keras.layers.MultiHeadAttention` order: query kernel
            `[Dq, H, key_dim]`, query bias `[H, key_dim]`, key kernel, key bias, value kernel
            `[Dv, H, value_dim]`, value bias, output kernel `[H, value_dim, *out]`, output bias
            `[*out]`. Without biases (`use_bias=False`) the four kernels alone. Extra trailing
            arrays (a selector's own weights) are ignored.

    Returns:
        dict with keys `query_kernel`, `query_bias`, `key_kernel`, `key_bias`, `value_kernel`,
        `value_bias`, `output_kernel`, `output_bias` (biases `None` when absent).
    """
    weights = [np.asarray(w) for w in weights]
    # With biases, the second array is the query bias [H, key_dim], of rank 2; without, it is
    # the key kernel [Dk, H, key_dim], of rank 3.
    has_bias = len(weights) >= 8 and weights[1].ndim == 2
    if has_bias:
        names = ["query_kernel", "query_bias", "key_kernel", "key_bias",
                 "value_kernel", "value_bias", "output_kernel", "output_bias"]
        return dict(zip(names, weights[:8]))
    named = dict(zip(["query_kernel", "key_kernel", "value_kernel", "output_kernel"], weights[:4]))
    named.update(query_bias=None, key_bias=None, value_bias=None, output_bias=None)
    return named


def project(x, kernel, bias=None):
    """Projects `[..., D]` rows with a `[D, H, d]` kernel into `[..., H, d]` heads."""
    projected = np.einsum("...d,dhe->...he", x, kernel)
    return projected if bias is None else projected + bias


def output_projection(context, kernel, bias=None):
    """Combines heads: `[B, M, H, value_dim]` with kernel `[H, value_dim, *out]` → `[B, M, *out]`."""
    out = np.tensordot(context, kernel, axes=([2, 3], [0, 1]))
    return out if bias is None else out + bias


def masked_softmax(logits, valid):
    """Softmax over the last axis where `valid`; rows with no valid entry give all zeros."""
    shifted = np.where(valid, logits, -np.inf)
    row_max = np.max(shifted, axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    exp = np.where(valid, np.exp(shifted - row_max), 0.0)
    total = exp.sum(axis=-1, keepdims=True)
    return np.divide(exp, total, out=np.zeros_like(exp), where=total > 0)


def combined_mask(batch_size, num_queries, num_keys, query_mask=None, key_mask=None,
                  attention_mask=None, use_causal_mask=False):
    """Combines the masks exactly as Keras MHA does, into one boolean `[B, 1|H, M, N]` array.

    Args:
        query_mask: bool `[B, M]`, or None.
        key_mask: bool `[B, N]` (value mask and key mask, already combined), or None.
        attention_mask: bool `[M, N]`, `[B, M, N]` or `[B, H, M, N]`, or None.
        use_causal_mask: query i may only see keys j <= i.

    Returns:
        bool array broadcastable to `[B, H, M, N]`, True where attention is allowed.
    """
    mask = np.ones((batch_size, 1, num_queries, num_keys), dtype=bool)
    if query_mask is not None:
        mask = mask & np.asarray(query_mask, bool)[:, None, :, None]
    if key_mask is not None:
        mask = mask & np.asarray(key_mask, bool)[:, None, None, :]
    if use_causal_mask:
        mask = mask & np.tril(np.ones((num_queries, num_keys), dtype=bool))[None, None]
    if attention_mask is not None:
        attention_mask = np.asarray(attention_mask, bool)
        while attention_mask.ndim < 4:
            # [M, N] → [1, M, N] → [1, 1, M, N]; [B, M, N] → [B, 1, M, N]
            attention_mask = attention_mask[None] if attention_mask.ndim == 2 else attention_mask[:, None]
        mask = mask & attention_mask
    return mask


def dense_attention(query, value, weights, key=None, attention_mask=None):
    """Exact dense multi-head attention, as `keras.layers.MultiHeadAttention` computes it.

    Args:
        query: float array `[B, M, Dq]` (densify a sparse query first).
        value: float array `[B, N, Dv]`.
        weights: MHA-ordered weight list (see `split_weights`).
        key: float array `[B, N, Dk]`; defaults to `value`.
        attention_mask: bool array broadcastable to `[B, H, M, N]` (see `combined_mask`), or None.

    Returns:
        `(output [B, M, *out], attention_weights [B, H, M, N], logits [B, H, M, N])`; logits are
        the scaled dot products q·k/sqrt(key_dim) before masking.
    """
    w = split_weights(weights)
    key = value if key is None else key
    query_heads = project(np.asarray(query, np.float64), w["query_kernel"], w["query_bias"])  # [B, M, H, kd]
    key_heads = project(np.asarray(key, np.float64), w["key_kernel"], w["key_bias"])  # [B, N, H, kd]
    value_heads = project(np.asarray(value, np.float64), w["value_kernel"], w["value_bias"])  # [B, N, H, vd]
    key_dim = query_heads.shape[-1]
    logits = np.einsum("bmhd,bnhd->bhmn", query_heads, key_heads) / np.sqrt(key_dim)
    valid = np.ones(logits.shape, bool) if attention_mask is None else np.broadcast_to(attention_mask, logits.shape)
    attention_weights = masked_softmax(logits, valid)
    context = np.einsum("bhmn,bnhd->bmhd", attention_weights, value_heads)  # [B, M, H, vd]
    output = output_projection(context, w["output_kernel"], w["output_bias"])
    return output, attention_weights, logits


def selected_attention(query, value, weights, indices, key=None, attention_mask=None):
    """Multi-head attention restricted to given key indices per (batch, head, query).

    Args:
        query: float array `[B, M, Dq]`.
        value: float array `[B, N, Dv]`.
        weights: MHA-ordered weight list.
        indices: int array `[B, H, M, k]`; `-1` marks an empty slot.
        key: float array `[B, N, Dk]`; defaults to `value`.
        attention_mask: bool array broadcastable to `[B, H, M, N]`; a slot whose key it forbids
            counts as empty.

    Returns:
        `(output [B, M, *out], scores [B, H, M, k])`: scores are the softmax over the valid
        slots, 0 on empty slots; a query with no valid slot gets a zero context.
    """
    _, _, logits = dense_attention(query, value, weights, key=key)
    w = split_weights(weights)
    value_heads = project(np.asarray(value, np.float64), w["value_kernel"], w["value_bias"])  # [B, N, H, vd]
    indices = np.asarray(indices)
    batch, heads, queries, _ = indices.shape
    valid = indices >= 0
    safe = np.where(valid, indices, 0)
    if attention_mask is not None:
        full_mask = np.broadcast_to(attention_mask, logits.shape)
        valid &= np.take_along_axis(full_mask, safe, axis=-1)
    slot_logits = np.take_along_axis(logits, safe, axis=-1)  # [B, H, M, k]
    scores = masked_softmax(slot_logits, valid)
    context = np.zeros((batch, queries, heads, value_heads.shape[-1]))
    for b in range(batch):
        for h in range(heads):
            # [M, k, vd]: the selected value rows of head h, weighted by that head's scores.
            selected_values = value_heads[b, safe[b, h], h]
            context[b, :, h] = np.einsum("mk,mkd->md", scores[b, h], selected_values)
    output = output_projection(context, w["output_kernel"], w["output_bias"])
    return output, scores


def exact_top_k(logits, k, attention_mask=None):
    """Indices of the k largest logits per row among allowed keys, `-1` where fewer are allowed.

    Args:
        logits: `[B, H, M, N]`.
        k: number of slots.
        attention_mask: bool, broadcastable to `logits`, or None.

    Returns:
        int array `[B, H, M, k]`, sorted by decreasing logit (ties: lower index first).
    """
    valid = np.ones(logits.shape, bool) if attention_mask is None else np.broadcast_to(attention_mask, logits.shape)
    ranked = np.where(valid, logits, -np.inf)
    order = np.argsort(-ranked, axis=-1, kind="stable")[..., :k]
    chosen_valid = np.take_along_axis(valid, order, axis=-1)
    order = np.where(chosen_valid, order, -1)
    if k > logits.shape[-1]:
        pad = np.full(logits.shape[:-1] + (k - logits.shape[-1],), -1)
        order = np.concatenate([order, pad], axis=-1)
    return order
