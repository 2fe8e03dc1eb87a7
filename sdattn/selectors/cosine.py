"""The `cosine` selector: cosine similarity of the raw sparse query rows and key rows, shared by all heads.
Falls back to the head-averaged projections when Dq != Dk."""

import math

import keras
from keras import ops

from sdattn import backend, budgets
from sdattn.selectors import cpu_top_k
from sdattn.selectors.base import Selector, register_selector


def _row_l2_norm(x, axis=-1):
    return ops.sqrt(ops.sum(ops.square(x), axis=axis))


def _density(query):
    """The stored fraction of a sparse query's elements: a float eagerly (and on JAX, whose
    stored-value count is static), a float64 scalar tensor in a TF graph."""
    if backend.executing_eagerly() or backend.NAME == "jax":
        return backend.nnz(query) / max(float(math.prod(query.shape)), 1.0)
    return ops.cast(backend.nnz(query), "float64") / ops.cast(
        ops.maximum(ops.prod(backend.sparse_dense_shape(query)), 1), "float64")


@register_selector("cosine", "Cosine similarity of the raw sparse query and key rows, shared by all heads.")
class CosineSelector(Selector):
    """Shared selection by cosine similarity.

    When the query and key feature sizes match (Dq == Dk), it compares the raw sparse query
    rows with the raw key rows, so it needs no key projection at all; otherwise it compares the
    head-averaged projected query and key. A sparse query is scored through
    sparse×dense product (`sdattn.backend`) below `sparse_density` non-zero density and through a dense
    matmul above it: on the CPU the sparse kernel costs far more per multiply-add, so dense
    wins down to about 1% density (benchmarks/NOTES.md, "Sparse or dense query").

    On TensorFlow's CPU, where the compiled top-k may run (`cpu_top_k.available()`), a sparse
    query below `budgets.FUSED_COSINE_DENSITY` is scored from its stored values only, with a
    running top-k per row and no score tensor (`sdattn.selectors.sparse_cosine`): the same
    selection, ties included, for a fraction of the multiply-adds. It needs no pair mask
    (causal or explicit); a key mask is honoured.

    Args:
        epsilon: added to norms so that all-zero rows score 0, not NaN.
        sparse_density: query density below which the sparse matmul is used.
    """

    # On TF's CPU the sparse path runs in a host callback: attention (which needs the selection
    # anyway) then starts after it instead of competing with it for the cores.
    selects_outside_tf = True

    def __init__(self, epsilon=1e-9, sparse_density=budgets.SPARSE_SCORING_DENSITY, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.sparse_density = sparse_density

    def _raw_space(self, context):
        return context.query.shape[-1] is not None and context.query.shape[-1] == context.key.shape[-1]

    def _unit_rows(self, rows):
        """Rows divided by their L2 norm (plus epsilon): all-zero rows stay zero."""
        return rows / (_row_l2_norm(rows)[..., None] + ops.cast(self.epsilon, rows.dtype))

    def _unit_sparse_query(self, query):
        """A sparse query with each row divided by its L2 norm (plus epsilon)."""
        norms = backend.sparse_row_norms(query)  # [B, M]
        row_scale = 1.0 / (backend.row_of_values(query, norms) + ops.cast(self.epsilon, norms.dtype))  # [nnz]
        return backend.with_values(query, backend.sparse_values(query) * row_scale)

    def select(self, context, k):
        """Returns int32 `[B, 1, M, k]` key positions: through the sparse path where it
        applies (see the class docstring), else by streaming `scores` over key blocks."""
        if not self._sparse_path_applies(context):
            return super().select(context, k)
        shape = (context.key.shape[0], 1, context.max_queries, k)
        return backend.density_branch(_density(context.query) < budgets.FUSED_COSINE_DENSITY,
                                      lambda: self._sparse_select(context, k),
                                      lambda: super(CosineSelector, self).select(context, k),
                                      shape)  # [B, 1, M, k]

    def _sparse_path_applies(self, context):
        mask = context.mask
        # A subclass with scores of its own (`lsh`) ranks by them, not by the cosine.
        return (type(self).scores is CosineSelector.scores and context.cpu_top_k and cpu_top_k.available() and context.is_sparse
                and self._raw_space(context) and isinstance(context.num_keys, int)
                and isinstance(context.max_queries, int) and context.key.shape[0] is not None
                and mask.attention_mask is None and not mask.causal
                and keras.backend.standardize_dtype(context.key.dtype) in ("float32", "float64"))

    def _sparse_select(self, context, k):
        """`sparse_cosine.fold_block` over key blocks, one host call each: `[B, 1, M, k]`."""
        from sdattn.selectors import sparse_cosine

        query = self._unit_sparse_query(context.query)
        indices = backend.sparse_indices(query)
        values = ops.cast(backend.sparse_values(query), "float32")
        batch, num_queries, num_keys = context.key.shape[0], context.max_queries, context.num_keys
        key_mask = context.mask.key_mask
        dim = context.key.shape[-1] or 1
        # Each call copies only its block of keys out of TF (16 MB per batch item at D = 256).
        block = max(k, budgets.BLOCK_ELEMENTS // (4 * dim))
        state_shape = (batch, num_queries, 2 * k + 1)
        epsilon = float(self.epsilon)

        state = None
        for start in range(0, num_keys, block):
            stop = min(start + block, num_keys)

            def fold(*arrays, offset=start):
                indices, values, keys = arrays[:3]
                mask = arrays[3] if key_mask is not None else None
                previous = arrays[-1] if offset else sparse_cosine.initial_state(batch, num_queries, k)
                return sparse_cosine.fold_block(indices, values, keys, previous, offset=offset,
                                                epsilon=epsilon, key_valid=mask)

            def call(start=start, stop=stop, fold=fold):
                inputs = [indices, values, ops.cast(context.key[:, start:stop], "float32")]
                if key_mask is not None:
                    inputs.append(ops.cast(key_mask[:, start:stop], "bool"))
                if state is not None:
                    inputs.append(state)
                return backend.host_callback(fold, inputs, "float64", state_shape)

            # In a graph, a block's slice is made only once the previous block is folded in,
            # so no more than one block of keys is ever copied out at a time.
            state = backend.ordered([state], call)  # [B, M, 2k + 1]
        selected = backend.host_callback(sparse_cosine.positions, [state], "int32",
                                         (batch, num_queries, k))  # [B, M, k]
        return selected[:, None]  # [B, 1, M, k]

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
            query = self._unit_sparse_query(query)
            static_size = math.prod(d or 0 for d in query.shape)
            if static_size > budgets.DENSIFY_ELEMENTS or self.sparse_density <= 0:
                prepared = ("sparse", query)  # densifying could need a lot of memory
            elif backend.executing_eagerly() or backend.NAME == "jax":
                # Eagerly (and on JAX, whose stored-value count is static) decide right here.
                kind = "sparse" if _density(query) < self.sparse_density else "dense"
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
            cosine = backend.density_branch(
                _density(query) < self.sparse_density,
                lambda: backend.sparse_batched_dots(query, key_block),
                lambda: ops.einsum("bmd,bnd->bmn", backend.densify(query), key_block),
                (query.shape[0], query.shape[1], key_block.shape[1]))  # [B, M, n]
        return cosine[:, None]  # [B, 1, M, n]

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, sparse_density=self.sparse_density)
        return config
