"""What `keras.ops` lacks, on Keras's JAX backend: sparse queries (`jax.experimental.sparse.BCOO`,
what `keras.Input(sparse=True)` gives), host callbacks (`jax.pure_callback`), tracing checks."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse as jax_sparse

NAME = "jax"


# ---- sparse queries -------------------------------------------------------------------------

def _flat(query):
    """The query with no batch dimensions in its layout: indices `[nnz, rank]`, values `[nnz]`."""
    return query if query.n_batch == 0 and query.n_dense == 0 else jax_sparse.bcoo_update_layout(
        query, n_batch=0, n_dense=0)


def is_sparse(x):
    return isinstance(x, jax_sparse.BCOO)


def sparse_values(query):
    return _flat(query).data


def sparse_indices(query):
    return _flat(query).indices


def sparse_dense_shape(query):
    return np.asarray(query.shape, np.int64)


def with_values(query, values):
    flat = _flat(query)
    return jax_sparse.BCOO((values, flat.indices), shape=flat.shape)


def nnz(query):
    # Padding entries (BCOO's fixed nse) hold zeros: counting them only errs towards "dense".
    return int(query.nse)


def densify(query):
    return query.todense()


def sparse_matmul(query, kernel):
    """`[B, M, D]` sparse times `[D, C]` dense, `[B, M, C]` dense, never densifying the query."""
    query = _flat(query)
    if query.dtype != kernel.dtype:
        query = with_values(query, query.data.astype(kernel.dtype))
    return jax_sparse.bcoo_dot_general(query, kernel, dimension_numbers=(([2], [0]), ([], [])))  # [B, M, C]


def sparse_row_norms(query):
    query = _flat(query)
    batch, rows = query.shape[0], query.shape[1]
    row_ids = query.indices[:, 0] * rows + query.indices[:, 1]  # [nnz]
    squares = jax.ops.segment_sum(jnp.square(query.data), row_ids, num_segments=batch * rows)  # [B·M]
    return jnp.sqrt(squares).reshape(batch, rows)  # [B, M]


def row_of_values(query, per_row):
    indices = _flat(query).indices
    return per_row[indices[:, 0], indices[:, 1]]  # [nnz]


def sparse_batched_dots(query, keys):
    """`[B, M, D]` sparse query rows times `[B, n, D]` keys of the same batch item: `[B, M, n]`.

    The query is laid out as a `[B·M, B·D]` block-diagonal matrix against keys stacked as
    `[B·D, n]`, so the batch is one sparse×dense product with no wasted work.
    """
    query = _flat(query)
    batch, num_queries, depth = query.shape
    num_keys = keys.shape[1]
    b, m, d = query.indices[:, 0], query.indices[:, 1], query.indices[:, 2]
    block_diagonal = jax_sparse.BCOO(
        (query.data.astype(keys.dtype), jnp.stack([b * num_queries + m, b * depth + d], axis=1)),
        shape=(batch * num_queries, batch * depth))
    stacked_keys = jnp.transpose(keys, (0, 2, 1)).reshape(batch * depth, num_keys)  # [B·D, n]
    dots = block_diagonal @ stacked_keys  # [B·M, n]
    return dots.reshape(batch, num_queries, num_keys)  # [B, M, n]


def cast_sparse(query, dtype):
    return query if query.dtype == dtype else with_values(query, _flat(query).data.astype(dtype))


# ---- tracing control -----------------------------------------------------------------------

def executing_eagerly():
    """Whether no `jax.jit` (or other) trace is in progress, so values are concrete."""
    from jax._src import core  # no public spelling of this check in JAX 0.10

    return bool(core.trace_state_clean())


def density_branch(density_is_low, sparse_fn, dense_fn, static_shape):
    # The stored-value count is static on JAX (BCOO's nse), so the choice is made while tracing.
    return sparse_fn() if bool(density_is_low) else dense_fn()


def after(dependencies, tensor):
    # XLA orders by data dependency alone; there are no TF thread pools to keep apart.
    return tensor


def ordered(dependencies, compute):
    return compute()


def ensure_shape(tensor, shape):
    return tensor  # shapes are always static under JAX


def unique(flat_ids):
    """No dynamic shapes under `jax.jit`: every slot is its own row (no deduplication)."""
    return flat_ids, jnp.arange(flat_ids.shape[0], dtype=flat_ids.dtype)


def in_xla_context():
    return True  # everything JAX runs is compiled by XLA; host code goes through pure_callback


def sees_accelerator():
    return jax.default_backend() != "cpu"


def legacy_uniform(shape, seed):
    raise ValueError(
        "This `random` selector was saved before sdattn's backend port, with a draw only "
        "TensorFlow reproduces (`tf.random.stateless_uniform`). Load it with "
        "KERAS_BACKEND=tensorflow, or set `generator='hash'` for a backend-neutral draw. "
        "Received: generator='tf_stateless'")


# ---- host callbacks ------------------------------------------------------------------------

def host_callback(function, inputs, dtype, shape):
    """Runs `function(*numpy arrays)` on the host through `jax.pure_callback` (Faiss, NumPy);
    returns one array of `dtype` and the static `shape`."""
    result_shape = jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype))
    return jax.pure_callback(lambda *arrays: np.asarray(function(*arrays), dtype),
                             result_shape, *inputs)


def cpu_top_k(scores, k, top_k_numpy):  # pragma: no cover - never planned on JAX
    raise NotImplementedError("The compiled CPU top-k runs on TensorFlow only; JAX uses lax.top_k.")


def host_op(numpy_function, differentiable, constant, output_shapes, reference):  # pragma: no cover - never planned on JAX
    raise NotImplementedError("The compiled attention kernels run on TensorFlow only; JAX attends in keras.ops.")


def gather_batched(x, indices, batch_dims):
    """`x [b..., N, *rest]` at `indices [b..., *L]`: `[b..., *L, *rest]` (as TF's `tf.gather`
    with `batch_dims`), one `take` mapped over the leading batch axes."""
    take = lambda rows, positions: jnp.take(rows, positions, axis=0)
    for _ in range(batch_dims):
        take = jax.vmap(take)
    return take(x, indices)
