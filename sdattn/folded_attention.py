"""Attention over a shared selection on the CPU, with a compiled kernel instead of TF's gather,
batched matmuls and softmax.

The folded path (`SparseDenseMultiHeadAttention._attend_folded`) attends each query to its k
selected raw rows. In TF ops that gathers a `[B, M, k, D]` copy of the rows (32 MB on Config P)
and runs B·M tiny batched products over it (`[H, D]·[D, k]`, then `[H, k]·[k, D]`), which
oneDNN runs far below its peak (benchmarks/NOTES.md, "The floor"). The kernel
(`folded_attention_kernel.attend_rows`) scores each selected row where it lies against the
query's H folded heads, takes the softmax over the slots and mixes the same rows while they are
in cache: the same numbers up to rounding. The logits' per-(query, head) offset q·b_K is left
out: a softmax does not change with it.

It runs outside TF's graph (a host callback), so the plan (`sdattn.plan`) uses it only where the
compiled CPU top-k may run (`selectors.cpu_top_k.available()`: TF on the CPU, no XLA, the same
`set_enabled` switch and `SDATTN_CPU_TOP_K` variable), for float32, not while training (dropout
stays TF's, and so does the gradient, cheaper than recomputing), and for calls large enough that
loading Numba pays (`budgets.FOLDED_KERNEL_MIN_ELEMENTS`). Its gradient is that of the same
computation in TF ops, recomputed when asked for, so a tape sees no difference.
"""

import numpy as np

from sdattn import backend, workers

# Query rows per thread below which splitting them over threads costs more than it saves.
_MIN_ROWS_PER_THREAD = 16


def _kernel():
    """The compiled `attend_rows` (imports Numba on first use)."""
    from sdattn import folded_attention_kernel

    return folded_attention_kernel.attend_rows


def attend_numpy(folded, keys, values, indices, valid, bias):
    """Softmax attention of folded queries over their selected raw rows, in NumPy arrays.

    Args:
        folded: float32 `[H, B, M, Dk]` (head-major).
        keys: float32 `[B, N, Dk]`; values: float32 `[B, N, Dv]`, or None for `keys`.
        indices: int `[B, M, k]`, in-range positions.
        valid: bool `[B, S, M, k]`, S = 1 or H.
        bias: float32 `[B, S, M, k]` (S = 1 or H), or None.

    Returns:
        `(scores [B, M, H, k], mixed [H, B, M, Dv])`, float32: the softmax weights over the
        valid slots (0 elsewhere) and the weighted sums of the value rows (head-major).
    """
    folded = np.ascontiguousarray(folded, np.float32)
    keys = np.ascontiguousarray(keys, np.float32)
    values = keys if values is None else np.ascontiguousarray(values, np.float32)
    indices = np.ascontiguousarray(indices, np.int32)
    valid = np.ascontiguousarray(valid, np.bool_)
    bias = np.zeros((0, 1, 1, 1), np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)
    heads, batch, num_queries, _ = folded.shape
    scores = np.empty((batch, num_queries, heads, indices.shape[-1]), np.float32)  # [B, M, H, k]
    mixed = np.empty((heads, batch, num_queries, values.shape[-1]), np.float32)  # [H, B, M, Dv]
    kernel = _kernel()
    workers.parallel_ranges(
        lambda start, stop: kernel(folded, keys, values, indices, valid, bias, start, stop, scores, mixed),
        batch * num_queries, _MIN_ROWS_PER_THREAD)
    return scores, mixed


def attend(folded, keys, values, indices, valid, bias, offset, reference):
    """`attend_numpy` as a TF op: eagerly on the tensors' buffers, or through a host callback
    inside a TF graph; differentiable in every float input through `reference`.

    Args:
        folded: `[H, B, M, Dk]`; keys `[B, N, Dk]`; values `[B, N, Dv]`, or None for `keys`.
        indices: int32 `[B, M, k]`; valid: bool `[B, S, M, k]`.
        bias: `[B, S, M, k]` or None; offset: the logits' `[B, M, H]` q·b_K, or None (the
            kernel leaves it out; the reference adds it, so its gradient is defined).
        reference: `(folded, keys, values, bias, offset)` → `(scores, mixed)` in TF ops, with
            None for the absent ones, in the same layouts.

    Returns:
        `(scores [B, M, H, k], mixed [H, B, M, Dv])`.
    """
    present = {"values": values, "bias": bias, "offset": offset}
    names = [name for name, tensor in present.items() if tensor is not None]
    heads, batch, num_queries = folded.shape[:3]
    value_depth = (keys if values is None else values).shape[-1]
    shapes = [(batch, num_queries, heads, indices.shape[-1]), (heads, batch, num_queries, value_depth)]

    def by_name(tensors):
        return {name: tensors[2 + i] for i, name in enumerate(names)}

    def in_numpy(folded, keys, *rest):
        arrays = by_name((folded, keys) + rest[:len(names)])
        indices, valid = rest[len(names):]
        return attend_numpy(folded, keys, arrays.get("values"), indices, valid, arrays.get("bias"))

    def in_ops(folded, keys, *rest):
        tensors = by_name((folded, keys) + rest)
        return list(reference(folded, keys, tensors.get("values"), tensors.get("bias"), tensors.get("offset")))

    scores, mixed = backend.host_op(in_numpy, [folded, keys] + [present[name] for name in names],
                                    [indices, valid], shapes, in_ops)
    return scores, mixed
