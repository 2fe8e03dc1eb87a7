"""Distinct query rows: a selection (and the attention after it) that depends only on a row's
content is computed once per distinct row of each batch item, then copied to the row's
duplicates."""

import tensorflow as tf

# Densified query rows compared per call, at most (16 M float32 = 64 MB).
_MAX_DENSE_ELEMENTS = 2**24


class DistinctRows:
    """Where each query row's distinct representative is.

    Attributes:
        representatives: int32 `[B, U]`, the first position of each distinct row of each batch
            item (U = the largest distinct count over the batch; shorter items repeat row 0).
        inverse: int32 `[B, M]`, for each row, the index in `[0, U)` of its representative.
    """

    def __init__(self, representatives, inverse):
        self.representatives = representatives
        self.inverse = inverse

    def expand(self, per_distinct, axis=2):
        """Copies per-distinct-row results back to every row, along `axis` (the row axis):
        `[B, S, U, k]` → `[B, S, M, k]` by default, `[B, U, ...]` → `[B, M, ...]` with `axis=1`."""
        return tf.gather(per_distinct, self.inverse, axis=axis, batch_dims=1)


def distinct_rows(dense_query):
    """Finds the distinct rows of every batch item, by exact bitwise comparison.

    Two rows are the same when every float has the same bits (so 0.0 and -0.0 differ, which
    only costs a missed merge). Comparing 64-bit words halves the work of `UniqueV2` over
    floats (measured 0.27 ms instead of 0.75 ms for 512 rows of 256 features).

    Args:
        dense_query: float `[B, M, D]` with static B, M and D.

    Returns:
        A `DistinctRows`.
    """
    batch, num_queries, dim = dense_query.shape
    word = {2: tf.int16, 4: tf.int32, 8: tf.int64}[dense_query.dtype.size]
    bits = tf.bitcast(dense_query, word)  # [B, M, D], the same bits as integers
    if dim % 2 == 0 and bits.dtype == tf.int32:
        bits = tf.bitcast(tf.reshape(bits, [batch, num_queries, dim // 2, 2]), tf.int64)  # [B, M, D/2, 2] → [B, M, D/2]
    representatives, inverses, counts = [], [], []
    positions = tf.range(num_queries, dtype=tf.int32)
    for item in range(batch):
        _, inverse = tf.raw_ops.UniqueV2(x=bits[item], axis=[0], out_idx=tf.int32)  # [M]
        count = tf.reduce_max(inverse) + 1
        # The first row of each distinct value (UniqueV2 numbers them in order of appearance).
        first = tf.math.unsorted_segment_min(positions, inverse, count)  # [U_b]
        representatives.append(first)
        inverses.append(inverse)
        counts.append(count)
    widest = tf.reduce_max(tf.stack(counts))
    padded = [tf.pad(first, [[0, widest - tf.shape(first)[0]]]) for first in representatives]  # [U] each
    return DistinctRows(tf.stack(padded), tf.stack(inverses))  # [B, U], [B, M]


def in_xla_context():
    """Whether the graph being built will be compiled by XLA (`jit_compile=True`), which can
    neither compile a dynamic number of distinct rows nor call Python (`tf.numpy_function`)."""
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - a TF without the helper: assume no XLA
        return False
    if tf.executing_eagerly():
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


def can_share_rows(query, attention_mask, causal):
    """Whether selections may be shared between equal rows: no per-row mask, static small
    sizes, and no XLA compilation (the distinct count is only known at run time).

    Args:
        query: the raw query (sparse or dense) `[B, M, Dq]`.
        attention_mask: the combined explicit attention mask, or None.
        causal: whether the causal mask applies (row position then matters).

    Returns:
        bool.
    """
    if attention_mask is not None or causal or in_xla_context():
        return False
    shape = tuple(query.shape)
    if len(shape) != 3 or any(size is None for size in shape):
        return False
    return 0 < shape[0] * shape[1] * shape[2] <= _MAX_DENSE_ELEMENTS and shape[1] > 1
