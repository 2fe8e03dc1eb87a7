"""Seeded attention weights for an example, in `keras.layers.MultiHeadAttention` order.
`random` draws Glorot kernels; `aligned` makes each head's logits follow query–key similarity."""

from __future__ import annotations

import math
import numbers

import numpy as np

from sdattn.arguments import positive_int

__all__ = [
    "DEFAULT_LOGIT_STD",
    "WEIGHT_KINDS",
    "aligned_weights",
    "make_weights",
    "query_alignment",
    "random_weights",
]

WEIGHT_KINDS = ("aligned", "random")
# A logit spread of about 2 within a query's row makes the softmax clearly peaked (the best of
# 48 keys takes a few tens of percent) without collapsing it onto a single key, so selectors
# differ visibly in the attention mass they capture.
DEFAULT_LOGIT_STD = 2.0
# The gain is calibrated on at most this many queries x keys of batch item 0: enough for a
# stable spread estimate, and cheap even for benchmark-sized examples.
_CALIBRATION_QUERIES = 256
# Log-normal sigma of the per-direction stretch of each head (see `aligned_weights`).
_HEAD_ANISOTROPY = 0.3
_CALIBRATION_KEYS = 4096


def random_weights(example, num_heads, key_dim, seed=0, value_dim=None):
    """Seeded Glorot-uniform kernels and zero biases.

    The kernels are drawn from one NumPy generator (so the query, key and value kernels differ,
    unlike several Keras initializers cloned from one seed). Query and key logits of such
    weights are small (about ±0.05 at the generators' sizes), so attention is nearly uniform.

    Args:
        example: an `sdattn.inputs.Example` (fixes Dq and D).
        num_heads: H.
        key_dim: size of each query/key head.
        seed: int, the same seed gives the same weights.
        value_dim: size of each value head; defaults to `key_dim`.

    Returns:
        list of 8 float32 arrays: query kernel `[Dq, H, key_dim]`, query bias `[H, key_dim]`, key
        kernel `[D, H, key_dim]`, key bias, value kernel `[D, H, value_dim]`, value bias, output
        kernel `[H, value_dim, Dq]`, output bias `[Dq]`.
    """
    num_heads = positive_int("num_heads", num_heads)
    key_dim = positive_int("key_dim", key_dim)
    value_dim = key_dim if value_dim is None else positive_int("value_dim", value_dim)
    rng = np.random.default_rng(seed)

    def glorot(fan_in, shape):
        fan_out = int(np.prod(shape)) // fan_in
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=shape).astype(np.float32)

    query_dim, model_dim = example.query_dim, example.value_dim
    return [
        glorot(query_dim, (query_dim, num_heads, key_dim)),
        np.zeros((num_heads, key_dim), np.float32),
        glorot(model_dim, (model_dim, num_heads, key_dim)),
        np.zeros((num_heads, key_dim), np.float32),
        glorot(model_dim, (model_dim, num_heads, value_dim)),
        np.zeros((num_heads, value_dim), np.float32),
        glorot(num_heads * value_dim, (num_heads, value_dim, query_dim)),
        np.zeros((query_dim,), np.float32),
    ]


def query_alignment(example):
    """How `aligned_weights` maps the query features onto the key space.

    Args:
        example: an `sdattn.inputs.Example`.

    Returns:
        `"raw"` when Dq == D (query and key rows live in one space), `"vocabulary"` when
        Dq == N (each query feature is one key token, as in `bag_of_words`, so a query maps to
        the weighted sum of its tokens' embeddings), else `"none"`.
    """
    if example.query_dim == example.value_dim:
        return "raw"
    if example.query_dim == example.num_keys:
        return "vocabulary"
    return "none"


def _orthonormal(rng, rows, cols):
    """A `[rows, cols]` matrix with orthonormal columns (rows >= cols) or rows (rows < cols).

    Either way `P @ P.T` is a projection that keeps inner products in a random
    `min(rows, cols)`-dimensional subspace (all of it when cols >= rows).
    """
    tall = rng.standard_normal((max(rows, cols), min(rows, cols)))
    basis, triangle = np.linalg.qr(tall)  # [max, min], orthonormal columns
    basis *= np.sign(np.diag(triangle))  # a uniformly random basis, not QR's sign convention
    return basis if rows >= cols else basis.T


def _calibration_rows(example):
    """Dense valid query rows `[m, Dq]` and valid keys `[n, D]` of batch item 0, capped."""
    query_rows = np.flatnonzero(np.asarray(example.query_mask)[0])[:_CALIBRATION_QUERIES]
    key_rows = np.flatnonzero(np.asarray(example.value_mask)[0])[:_CALIBRATION_KEYS]
    queries = example.to_scipy(0)[query_rows].toarray().astype(np.float64)  # [m, Dq]
    keys = np.asarray(example.value[0], np.float64)[key_rows]  # [n, D]
    return queries, keys


def _row_spread(logits):
    """Root mean square, over query rows, of the standard deviation within each row.

    Softmax ignores a shift of a whole row, so the within-row spread is what makes it peaked.
    """
    if logits.shape[0] == 0 or logits.shape[1] < 2:
        return 0.0
    return float(np.sqrt(np.mean(np.var(logits, axis=1))))


def aligned_weights(example, num_heads, key_dim, seed=0, value_dim=None,
                    logit_std=DEFAULT_LOGIT_STD):
    """Weights whose attention logits follow the raw query–key similarity, with a useful spread.

    Each head h gets a random orthonormal map `P_h` `[D, key_dim]` (orthonormal columns when
    key_dim <= D: a random key_dim-dimensional view of the key space; orthonormal rows when
    key_dim > D, so the view is the whole space), its columns stretched by log-normal factors
    (sigma 0.3) so that heads weigh directions differently and disagree a little even when
    key_dim >= D. Then

    - key kernel: `W_K[:, h, :] = P_h`;
    - query kernel, by `query_alignment(example)`:
      - `"raw"` (Dq == D): `W_Q[:, h, :] = g_h P_h`, so the logit is `g_h q P_h P_h^T k`, a
        similarity of the raw rows;
      - `"vocabulary"` (Dq == N, e.g. `bag_of_words`, whose query features are the key tokens):
        `W_Q[:, h, :] = g_h E P_h`, with `E` `[Dq, D]` the key embeddings of batch item 0, so a
        query becomes the weighted sum of its tokens' embeddings and the logit is that sum's
        similarity to each key;
      - `"none"`: a random Gaussian `g_h G_h` `[Dq, key_dim]` (peaked but not meaningful);
    - the gain `g_h` scales head h so that, on batch item 0's valid queries and keys, the logits
      q·k/sqrt(key_dim) have a within-query standard deviation of `logit_std`;
    - value and output kernels (and every bias) are exactly those of `random_weights` with the
      same seed, so switching between the two kinds changes only which keys attention favours.

    Args:
        example: an `sdattn.inputs.Example`.
        num_heads: H.
        key_dim: size of each query/key head.
        seed: int, the same seed (and example) gives the same weights.
        value_dim: size of each value head; defaults to `key_dim`.
        logit_std: the target within-query spread of the logits; must be positive.

    Returns:
        list of 8 float32 arrays in `keras.layers.MultiHeadAttention` order, as `random_weights`.
    """
    weights = random_weights(example, num_heads, key_dim, seed=seed, value_dim=value_dim)
    if not (isinstance(logit_std, numbers.Real) and math.isfinite(logit_std) and logit_std > 0):
        raise ValueError(
            "Received an invalid value for argument `logit_std`, expected a positive number. "
            f"Received: logit_std={logit_std!r}")
    rng = np.random.default_rng([seed, 1])  # its own stream: value/output kernels stay as drawn
    alignment = query_alignment(example)
    model_dim = example.value_dim
    embeddings = np.asarray(example.value[0], np.float64)  # [N, D], used for "vocabulary"
    queries, keys = _calibration_rows(example)
    query_kernel = np.zeros((example.query_dim, num_heads, key_dim))
    key_kernel = np.zeros((model_dim, num_heads, key_dim))
    for head in range(num_heads):
        # Columns stretched by log-normal factors: each head weighs directions of the key space
        # differently, so heads disagree a little even when key_dim >= D (same space for all).
        stretch = np.exp(_HEAD_ANISOTROPY * rng.standard_normal(key_dim))
        projection = _orthonormal(rng, model_dim, key_dim) * stretch  # [D, key_dim]
        if alignment == "raw":
            head_query = projection
        elif alignment == "vocabulary":
            head_query = embeddings @ projection  # [Dq = N, key_dim]
        else:
            head_query = rng.standard_normal((example.query_dim, key_dim)) / math.sqrt(
                example.query_dim)
        logits = (queries @ head_query) @ (keys @ projection).T / math.sqrt(key_dim)  # [m, n]
        spread = _row_spread(logits)
        gain = logit_std / spread if spread > 1e-12 else 1.0
        query_kernel[:, head] = gain * head_query
        key_kernel[:, head] = projection
    weights[0] = query_kernel.astype(np.float32)
    weights[2] = key_kernel.astype(np.float32)
    return weights


def make_weights(kind, example, num_heads, key_dim, seed=0, value_dim=None):
    """`aligned_weights` or `random_weights`, by name.

    Args:
        kind: one of `WEIGHT_KINDS`.
        example, num_heads, key_dim, seed, value_dim: as for `aligned_weights`.

    Returns:
        list of 8 float32 arrays in `keras.layers.MultiHeadAttention` order.
    """
    if kind == "aligned":
        return aligned_weights(example, num_heads, key_dim, seed=seed, value_dim=value_dim)
    if kind == "random":
        return random_weights(example, num_heads, key_dim, seed=seed, value_dim=value_dim)
    raise ValueError(
        f"Received an invalid value for argument `kind`, expected one of {WEIGHT_KINDS}. "
        f"Received: kind={kind!r}")
