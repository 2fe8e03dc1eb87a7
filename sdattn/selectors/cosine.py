"""The `cosine` selector: cosine similarity of the raw sparse query rows and key rows, shared by all heads.
Falls back to the head-averaged projections when Dq != Dk."""

import math

import tensorflow as tf

from sdattn import budgets
from sdattn.selectors.base import Selector, register_selector


def _row_l2_norm(x, axis=-1):
    return tf.sqrt(tf.reduce_sum(tf.square(x), axis=axis))


def _block_diagonal_query(query):
    """Lays a sparse `[B, M, Dq]` query out as a `[B·M, B·Dq]` block-diagonal sparse matrix.

    Multiplied by keys stacked as `[B·Dq, n]`, row (b, m) meets only batch item b's keys, so a
    batch of sparse×dense products is one rank-2 `sparse_dense_matmul` with no wasted work.
    """
    batch = tf.cast(query.dense_shape[0], tf.int64)
    num_queries = tf.cast(query.dense_shape[1], tf.int64)
    query_dim = tf.cast(query.dense_shape[2], tf.int64)
    b, m, d = query.indices[:, 0], query.indices[:, 1], query.indices[:, 2]
    indices = tf.stack([b * num_queries + m, b * query_dim + d], axis=1)
    return tf.SparseTensor(indices, query.values, tf.stack([batch * num_queries, batch * query_dim]))


@register_selector("cosine", "Cosine similarity of the raw sparse query and key rows, shared by all heads.")
class CosineSelector(Selector):
    """Shared selection by cosine similarity.

    When the query and key feature sizes match (Dq == Dk), it compares the raw sparse query
    rows with the raw key rows, so it needs no key projection at all; otherwise it compares the
    head-averaged projected query and key. A sparse query is scored through
    `tf.sparse.sparse_dense_matmul` below `sparse_density` non-zero density and through a dense
    matmul above it: on the CPU the sparse kernel costs far more per multiply-add, so dense
    wins down to about 1% density (benchmarks/NOTES.md, "Sparse or dense query").

    Args:
        epsilon: added to norms so that all-zero rows score 0, not NaN.
        sparse_density: query density below which the sparse matmul is used.
    """

    def __init__(self, epsilon=1e-9, sparse_density=budgets.SPARSE_SCORING_DENSITY, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.sparse_density = sparse_density

    def _raw_space(self, context):
        return context.query.shape[-1] is not None and context.query.shape[-1] == context.key.shape[-1]

    def _unit_rows(self, rows):
        """Rows divided by their L2 norm (plus epsilon): all-zero rows stay zero."""
        return rows / (_row_l2_norm(rows)[..., None] + tf.constant(self.epsilon, rows.dtype))

    def _prepared_query(self, context):
        """`(kind, unit query)`: kind "sparse", "dense" or "adaptive" (decided per block in graphs).

        The query rows are normalised here, once, and each key block in `scores`, so the
        cosine is a plain product and no `[B, M, n]` score tensor is rescaled elementwise.
        """
        if "cosine_query" in context.cache:
            return context.cache["cosine_query"]
        query = context.query
        if not self._raw_space(context):
            mean_query = tf.reduce_mean(context.projected_query, axis=2)  # [B, M, kd]
            prepared = ("dense", self._unit_rows(mean_query))
        elif not isinstance(query, tf.SparseTensor):
            prepared = ("dense", self._unit_rows(query))
        else:
            squares = tf.SparseTensor(query.indices, tf.square(query.values), query.dense_shape)
            norms = tf.sqrt(tf.sparse.reduce_sum(squares, axis=-1))  # [B, M]
            row_scale = 1.0 / (tf.gather_nd(norms, query.indices[:, :2]) + tf.constant(self.epsilon, norms.dtype))  # [nnz]
            query = tf.SparseTensor(query.indices, query.values * row_scale, query.dense_shape)
            static_size = math.prod(d or 0 for d in query.shape)
            if static_size > budgets.DENSIFY_ELEMENTS or self.sparse_density <= 0:
                prepared = ("sparse", query)  # densifying could need a lot of memory
            elif tf.executing_eagerly():
                density = float(tf.size(query.values)) / max(float(tf.reduce_prod(query.dense_shape)), 1.0)
                kind = "sparse" if density < self.sparse_density else "dense"
                prepared = (kind, query if kind == "sparse" else tf.sparse.to_dense(query))
            else:
                prepared = ("adaptive", query)
        context.cache["cosine_query"] = prepared
        return prepared

    @staticmethod
    def _sparse_dots(query, key_block):
        batch, num_block_keys = tf.shape(key_block)[0], tf.shape(key_block)[1]
        stacked_keys = tf.reshape(tf.transpose(key_block, [0, 2, 1]), [-1, num_block_keys])  # [B·Dk, n]
        dots = tf.sparse.sparse_dense_matmul(_block_diagonal_query(query), stacked_keys)  # [B·M, n]
        return tf.reshape(dots, tf.stack([batch, -1, num_block_keys]))  # [B, M, n]

    def scores(self, context, start, stop):
        kind, query = self._prepared_query(context)
        if self._raw_space(context):
            key_block = context.key[:, start:stop]  # [B, n, Dk]
        else:
            key_block = tf.reduce_mean(context.projected_key[:, start:stop], axis=2)  # [B, n, kd]
        key_block = self._unit_rows(key_block)  # [B, n, D]
        if kind == "sparse":
            cosine = self._sparse_dots(query, key_block)
        elif kind == "dense":
            cosine = tf.einsum("bmd,bnd->bmn", query, key_block)  # [B, M, n]
        else:
            density = tf.cast(tf.size(query.values), tf.float64) / tf.cast(
                tf.maximum(tf.reduce_prod(query.dense_shape), 1), tf.float64)
            cosine = tf.cond(density < self.sparse_density,
                             lambda: self._sparse_dots(query, key_block),
                             lambda: tf.einsum("bmd,bnd->bmn", tf.sparse.to_dense(query), key_block))
            cosine = tf.ensure_shape(cosine, (query.shape[0], query.shape[1], key_block.shape[1]))  # [B, M, n]
        return cosine[:, None]  # [B, 1, M, n]

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, sparse_density=self.sparse_density)
        return config
