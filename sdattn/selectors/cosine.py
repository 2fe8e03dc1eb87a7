"""The `cosine` selector: cosine similarity of the raw sparse query rows and key rows, shared by all heads.
Falls back to the head-averaged projections when Dq != Dk."""

import math

from keras import ops

from sdattn import backend, budgets
from sdattn.selectors.base import Selector, register_selector


def _row_l2_norm(x, axis=-1):
    return ops.sqrt(ops.sum(ops.square(x), axis=axis))


@register_selector("cosine", "Cosine similarity of the raw sparse query and key rows, shared by all heads.")
class CosineSelector(Selector):
    """Shared selection by cosine similarity.

    When the query and key feature sizes match (Dq == Dk), it compares the raw sparse query
    rows with the raw key rows, so it needs no key projection at all; otherwise it compares the
    head-averaged projected query and key. A sparse query is scored through
    sparse×dense product (`sdattn.backend`) below `sparse_density` non-zero density and through a dense
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
        return rows / (_row_l2_norm(rows)[..., None] + ops.cast(self.epsilon, rows.dtype))

    def _prepared_query(self, context):
        """`(kind, unit query)`: kind "sparse", "dense" or "adaptive" (decided per block in graphs).

        The query rows are normalised here, once, and each key block in `scores`, so the
        cosine is a plain product and no `[B, M, n]` score tensor is rescaled elementwise.
        """
        if "cosine_query" in context.cache:
            return context.cache["cosine_query"]
        query = context.query
        if not self._raw_space(context):
            mean_query = ops.mean(context.projected_query, axis=2)  # [B, M, kd]
            prepared = ("dense", self._unit_rows(mean_query))
        elif not backend.is_sparse(query):
            prepared = ("dense", self._unit_rows(query))
        else:
            norms = backend.sparse_row_norms(query)  # [B, M]
            row_scale = 1.0 / (backend.row_of_values(query, norms) + ops.cast(self.epsilon, norms.dtype))  # [nnz]
            query = backend.with_values(query, backend.sparse_values(query) * row_scale)
            static_size = math.prod(d or 0 for d in query.shape)
            if static_size > budgets.DENSIFY_ELEMENTS or self.sparse_density <= 0:
                prepared = ("sparse", query)  # densifying could need a lot of memory
            elif backend.executing_eagerly() or backend.NAME == "jax":
                # Eagerly (and on JAX, whose stored-value count is static) decide right here.
                density = backend.nnz(query) / max(float(math.prod(query.shape)), 1.0)
                kind = "sparse" if density < self.sparse_density else "dense"
                prepared = (kind, query if kind == "sparse" else backend.densify(query))
            else:
                prepared = ("adaptive", query)
        context.cache["cosine_query"] = prepared
        return prepared

    def scores(self, context, start, stop):
        kind, query = self._prepared_query(context)
        if self._raw_space(context):
            key_block = context.key[:, start:stop]  # [B, n, Dk]
        else:
            key_block = ops.mean(context.projected_key[:, start:stop], axis=2)  # [B, n, kd]
        key_block = self._unit_rows(key_block)  # [B, n, D]
        if kind == "sparse":
            cosine = backend.sparse_batched_dots(query, key_block)  # [B, M, n]
        elif kind == "dense":
            cosine = ops.einsum("bmd,bnd->bmn", query, key_block)  # [B, M, n]
        else:
            # A TF graph: the density is known at run time only.
            density = ops.cast(backend.nnz(query), "float64") / ops.cast(
                ops.maximum(ops.prod(backend.sparse_dense_shape(query)), 1), "float64")
            cosine = backend.density_branch(
                density < self.sparse_density,
                lambda: backend.sparse_batched_dots(query, key_block),
                lambda: ops.einsum("bmd,bnd->bmn", backend.densify(query), key_block),
                (query.shape[0], query.shape[1], key_block.shape[1]))  # [B, M, n]
        return cosine[:, None]  # [B, 1, M, n]

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, sparse_density=self.sparse_density)
        return config
