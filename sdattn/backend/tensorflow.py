"""What `keras.ops` lacks, on Keras's TensorFlow backend: sparse queries (`tf.SparseTensor`),
host callbacks (`tf.numpy_function`), graph ordering, the CPU top-k kernel's hook, XLA detection."""

import functools

import numpy as np
import tensorflow as tf

NAME = "tensorflow"


# ---- sparse queries -------------------------------------------------------------------------

def is_sparse(x):
    return isinstance(x, tf.SparseTensor)


def sparse_values(query):
    """The stored values `[nnz]` of a sparse query."""
    return query.values


def sparse_indices(query):
    """The int64 positions `[nnz, rank]` of a sparse query's values."""
    return query.indices


def sparse_dense_shape(query):
    """The dense shape of a sparse query, an int64 `[rank]` tensor."""
    return tf.cast(query.dense_shape, tf.int64)


def with_values(query, values):
    """The same sparsity pattern with new values (same dtype as `values`)."""
    return tf.SparseTensor(query.indices, values, query.dense_shape)


def nnz(query):
    """Number of stored values: a Python int eagerly, else a scalar tensor."""
    if tf.executing_eagerly():
        return int(tf.size(query.values))
    return tf.size(query.values)


def densify(query):
    """A sparse query `[B, M, Dq]` as a dense tensor of the same static shape; duplicates add up."""
    dense = tf.scatter_nd(query.indices, query.values, tf.cast(query.dense_shape, tf.int64))  # [B, M, Dq]
    return tf.ensure_shape(dense, query.shape)


def _sparse_dense_matmul(sparse, dense):
    # TF's sparse matmul kernels cover float32/float64 only; half precision goes through
    # float32, which is also what a float16 matmul would accumulate in.
    if dense.dtype in (tf.float32, tf.float64):
        return tf.sparse.sparse_dense_matmul(sparse, dense)
    as_float32 = tf.SparseTensor(sparse.indices, tf.cast(sparse.values, tf.float32), sparse.dense_shape)
    product = tf.sparse.sparse_dense_matmul(as_float32, tf.cast(dense, tf.float32))
    return tf.cast(product, dense.dtype)


def sparse_matmul(query, kernel):
    """`[B, M, D]` sparse times `[D, C]` dense, `[B, M, C]` dense, never densifying the query."""
    query_dim, columns = kernel.shape
    shape = tf.shape(query, out_type=tf.int64)
    flat_query = tf.sparse.reshape(query, tf.stack([shape[0] * shape[1], query_dim]))  # [B·M, D]
    product = _sparse_dense_matmul(flat_query, kernel)  # [B·M, C]
    product = tf.reshape(product, tf.stack(
        [tf.cast(shape[0], tf.int32), tf.cast(shape[1], tf.int32), columns]))  # [B, M, C]
    return tf.ensure_shape(product, (query.shape[0], query.shape[1], columns))


def sparse_row_norms(query):
    """L2 norm of each row `[B, M]` of a sparse `[B, M, D]` query."""
    squares = tf.SparseTensor(query.indices, tf.square(query.values), query.dense_shape)
    return tf.sqrt(tf.sparse.reduce_sum(squares, axis=-1))  # [B, M]


def row_of_values(query, per_row):
    """`per_row [B, M]` read at each stored value's (batch, row): `[nnz]`."""
    return tf.gather_nd(per_row, query.indices[:, :2])


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


def sparse_batched_dots(query, keys):
    """`[B, M, D]` sparse query rows times `[B, n, D]` keys of the same batch item: `[B, M, n]`."""
    batch, num_block_keys = tf.shape(keys)[0], tf.shape(keys)[1]
    stacked_keys = tf.reshape(tf.transpose(keys, [0, 2, 1]), [-1, num_block_keys])  # [B·D, n]
    dots = _sparse_dense_matmul(_block_diagonal_query(query), stacked_keys)  # [B·M, n]
    return tf.reshape(dots, tf.stack([batch, -1, num_block_keys]))  # [B, M, n]


def cast_sparse(query, dtype):
    return query if query.dtype == dtype else with_values(query, tf.cast(query.values, dtype))


# ---- graph control -------------------------------------------------------------------------

def executing_eagerly():
    return tf.executing_eagerly()


def density_branch(density_is_low, sparse_fn, dense_fn, static_shape):
    """`sparse_fn()` when `density_is_low` (a bool, or a scalar tensor decided at run time)."""
    if isinstance(density_is_low, bool) or tf.executing_eagerly():
        return sparse_fn() if bool(density_is_low) else dense_fn()
    return tf.ensure_shape(tf.cond(density_is_low, sparse_fn, dense_fn), static_shape)


def after(dependencies, tensor):
    """`tensor`, computed only after `dependencies` (a list of tensors) in a graph."""
    dependencies = [d for d in dependencies if d is not None]
    if not dependencies or tf.executing_eagerly():
        return tensor
    with tf.control_dependencies(dependencies):
        return tf.identity(tensor)


def ordered(dependencies, compute):
    """`compute()`, its ops created after `dependencies` have run (bounded memory in a graph)."""
    with tf.control_dependencies([d for d in dependencies if d is not None]):
        return compute()


def ensure_shape(tensor, shape):
    return tf.ensure_shape(tensor, shape)


def unique(flat_ids):
    """`(unique_ids [U], position [L])` with `unique_ids[position] == flat_ids`."""
    return tf.unique(flat_ids)


def in_xla_context():
    """Whether the graph being built will be compiled by XLA (`jit_compile=True`), which
    cannot call Python (`tf.numpy_function`)."""
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - a TF without the helper: assume no XLA
        return False
    if tf.executing_eagerly():
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


@functools.cache
def sees_accelerator():
    return bool(tf.config.list_logical_devices("GPU"))


def legacy_uniform(shape, seed):
    """`tf.random.stateless_uniform`, the `random` selector's draw before it moved to a
    backend-neutral hash: files saved then still select the same keys on TensorFlow."""
    return tf.random.stateless_uniform(shape, seed=seed)


# ---- host callbacks ------------------------------------------------------------------------

def host_callback(function, inputs, dtype, shape):
    """Runs `function(*numpy arrays)` on the host: eagerly on the tensors' buffers, or as a
    `tf.numpy_function` in a graph. Returns one tensor of `dtype` and static `shape`."""
    if tf.executing_eagerly():
        # np.asarray shares the tensor's buffer; tf.numpy_function would copy the inputs.
        return tf.constant(function(*[np.asarray(tensor) for tensor in inputs]))
    result = tf.numpy_function(function, list(inputs), tf.as_dtype(dtype), stateful=False)
    return tf.ensure_shape(result, shape)


def cpu_top_k(scores, k, top_k_numpy):
    """`top_k_numpy(scores, k)` as a TF op with `tf.math.top_k`'s gradient: eagerly on the
    tensor's buffer, or through `tf.numpy_function` inside a `tf.function`."""
    if tf.executing_eagerly():
        values, indices = (tf.constant(part) for part in top_k_numpy(np.asarray(scores), k))  # no copy
    else:
        values, indices = tf.numpy_function(functools.partial(top_k_numpy, k=k), [scores],
                                            [scores.dtype, tf.int32], stateful=False)
        shape = scores.shape[:-1].concatenate([k])
        values, indices = tf.ensure_shape(values, shape), tf.ensure_shape(indices, shape)

    @tf.custom_gradient
    def selected(scores):
        def gradient(upstream):  # [..., k] → [..., n]: each slot's gradient at its position
            num_keys = tf.shape(scores)[-1]
            rows = tf.reshape(indices, [-1, k])  # [R, k]
            positions = rows + tf.range(tf.shape(rows)[0])[:, None] * num_keys  # [R, k] in [0, R·n)
            flat = tf.scatter_nd(tf.reshape(positions, [-1, 1]), tf.reshape(upstream, [-1]),
                                 [tf.size(scores)])  # [R·n]
            return tf.reshape(flat, tf.shape(scores))  # [..., n]

        return tf.identity(values), gradient

    return selected(scores), indices


def host_op(numpy_function, differentiable, constant, output_shapes, reference):
    """`numpy_function(*differentiable, *constant)` as a TF op: eagerly on the tensors' buffers,
    or through `tf.numpy_function` inside a `tf.function`. Its gradient (in `differentiable`) is
    that of `reference(*differentiable)`, the same computation in TF ops, recomputed under a
    tape when a gradient is asked for.

    Args:
        numpy_function: NumPy arrays in, a tuple of arrays out (each of the first input's dtype).
        differentiable: tensors the gradient flows to.
        constant: tensors without a gradient (positions, masks).
        output_shapes: the outputs' static shapes.
        reference: `(*differentiable)` → the same outputs, in TF ops.

    Returns:
        A list of tensors, one per output shape.
    """
    dtype = differentiable[0].dtype

    @tf.custom_gradient
    def op(*tensors):
        if tf.executing_eagerly():
            arrays = [np.asarray(tensor) for tensor in list(tensors) + list(constant)]  # no copy
            outputs = [tf.constant(part) for part in numpy_function(*arrays)]
        else:
            outputs = tf.numpy_function(numpy_function, list(tensors) + list(constant),
                                        [dtype] * len(output_shapes), stateful=False)
            outputs = [tf.ensure_shape(part, shape) for part, shape in zip(outputs, output_shapes)]

        def gradient(*upstream):
            upstream = [tf.zeros_like(part) if grad is None else grad for part, grad in zip(outputs, upstream)]
            with tf.GradientTape() as tape:
                tape.watch(tensors)
                recomputed = reference(*tensors)
            return tape.gradient(recomputed, list(tensors), output_gradients=upstream)

        return outputs, gradient

    return op(*differentiable)


def gather_batched(x, indices, batch_dims):
    """`tf.gather(x, indices, batch_dims=batch_dims)`: rows of `x` along axis `batch_dims`,
    per leading batch index (`keras.ops.take_along_axis` broadcasts and transposes instead)."""
    return tf.gather(x, indices, batch_dims=batch_dims)
