"""The per-backend operations `keras.ops` lacks (sparse queries, host callbacks, graph ordering),
chosen by `keras.backend.backend()`; plus a few backend-neutral helpers on `keras.ops`.

Only `tensorflow.py` and `jax.py` here call their framework; the layer, the masks and the
selectors call `keras.ops` and this module.
"""

import importlib

import keras
from keras import ops

NAME = keras.backend.backend()
if NAME == "tensorflow":
    from sdattn.backend import tensorflow as _impl
elif NAME == "jax":
    from sdattn.backend import jax as _impl
else:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sdattn runs on Keras's TensorFlow or JAX backend. "
        f"Received: keras.backend.backend()={NAME!r} (set KERAS_BACKEND=tensorflow or jax)")

is_sparse = _impl.is_sparse
sparse_values = _impl.sparse_values
sparse_indices = _impl.sparse_indices
sparse_dense_shape = _impl.sparse_dense_shape
with_values = _impl.with_values
nnz = _impl.nnz
densify = _impl.densify
sparse_matmul = _impl.sparse_matmul
sparse_row_norms = _impl.sparse_row_norms
row_of_values = _impl.row_of_values
sparse_batched_dots = _impl.sparse_batched_dots
cast_sparse = _impl.cast_sparse
executing_eagerly = _impl.executing_eagerly
density_branch = _impl.density_branch
after = _impl.after
ordered = _impl.ordered
ensure_shape = _impl.ensure_shape
unique = _impl.unique
in_xla_context = _impl.in_xla_context
sees_accelerator = _impl.sees_accelerator
legacy_uniform = _impl.legacy_uniform
host_callback = _impl.host_callback
cpu_top_k = _impl.cpu_top_k
host_op = _impl.host_op
gather_batched = _impl.gather_batched


def dynamic_shape(x):
    """`x`'s shape: Python ints where static, scalar tensors where only known at run time (TF)."""
    return tuple(ops.shape(x))


def is_float(x):
    return keras.backend.is_float_dtype(keras.backend.standardize_dtype(x.dtype))


# When this module was the first to import Keras, sdattn's Keras classes (whose layer needs
# this module) are registered now that it is complete.
importlib.import_module("sdattn")._register_pending()
