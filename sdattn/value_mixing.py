"""Each query head's weighted sum of its selected raw value rows, on the CPU, with a compiled kernel.

At inference `dot` reuses its selected scores as the attention logits (`sdattn.plan`,
`REUSED_LOGITS`), so only values remain to be attended. A head's output is
Σ_j w_j (W_V,h x_j + b_V,h) = W_V,h (Σ_j w_j x_j) + b_V,h Σ_j w_j: the raw rows can be mixed first
and the value kernel applied to one mixed row per (query, head), instead of projecting all N
value tokens into every head and gathering the selected ones. In TF ops the mixing would gather
`[B, H, M, k, Dv]` raw rows first (268 MB on Config P at M = 512); the kernel reads each selected
row where it lies and adds it into the head's sum. The plan takes this path only when it costs
fewer multiply-adds than projecting the values (`sdattn.plan`), and only where the compiled CPU
top-k may run (`selectors.cpu_top_k.available()`: TF on the CPU, no XLA, the same
`set_enabled` switch and `SDATTN_CPU_TOP_K` variable), for float32 and float64.

The gradient is that of the same sum in TF ops (a gather and an einsum), recomputed when one is
asked for: the path is planned for inference only, where gradients are rare.
"""

import numpy as np

from sdattn import backend, workers

# Query rows per thread below which splitting them over threads costs more than it saves.
_MIN_ROWS_PER_THREAD = 16


def _kernel():
    """The compiled `mix_rows` (imports Numba on first use)."""
    from sdattn import value_mixing_kernel

    return value_mixing_kernel.mix_rows


def mix_numpy(tokens, indices, weights):
    """Each (query, head) row's weighted sum of its selected token rows, in NumPy arrays.

    Args:
        tokens: float32 or float64 `[B, N, D]`.
        indices: int `[B, H, M, k]`, positions in `[0, N)`.
        weights: `[B, H, M, k]`.

    Returns:
        `[H, B, M, D]` of the tokens' dtype (head-major):
        `mixed[h, b, m] = Σ_j weights[b, h, m, j] · tokens[b, indices[b, h, m, j]]`.
    """
    tokens = np.ascontiguousarray(tokens)
    indices = np.ascontiguousarray(indices, dtype=np.int32)
    weights = np.ascontiguousarray(weights, dtype=tokens.dtype)
    batch, heads, num_queries, _ = indices.shape
    mixed = np.empty((heads, batch, num_queries, tokens.shape[2]), tokens.dtype)  # [H, B, M, D]
    kernel = _kernel()
    workers.parallel_ranges(lambda start, stop: kernel(tokens, indices, weights, mixed, start, stop),
                            batch * num_queries, _MIN_ROWS_PER_THREAD)
    return mixed


def mix_in_ops(tokens, indices, weights):
    """`mix_numpy` in `keras.ops`: gathers the `[B, H, M, k, D]` rows, then sums them (the
    reference, and the gradient's computation)."""
    from keras import ops

    batch, heads, num_queries, slots = backend.dynamic_shape(indices)
    flat = ops.reshape(indices, (batch, -1))  # [B, H·M·k]
    rows = backend.gather_batched(tokens, flat, 1)  # [B, H·M·k, D]
    rows = ops.reshape(rows, (batch, heads, num_queries, slots, tokens.shape[-1]))  # [B, H, M, k, D]
    return ops.einsum("bhmk,bhmkd->hbmd", weights, rows)  # [H, B, M, D]


def mix(tokens, indices, weights):
    """`mix_numpy` as a TF op: eagerly on the tensors' buffers, or through a host callback
    inside a TF graph; differentiable in `tokens` and `weights` (see the module docstring).

    Args:
        tokens: dense `[B, N, D]`, float32 or float64.
        indices: int32 `[B, H, M, k]`, in-range positions.
        weights: `[B, H, M, k]` of the tokens' dtype.

    Returns:
        `[H, B, M, D]`.
    """
    shape = (indices.shape[1], tokens.shape[0], indices.shape[2], tokens.shape[-1])  # [H, B, M, D]
    (mixed,) = backend.host_op(lambda tokens, weights, indices: (mix_numpy(tokens, indices, weights),),
                               [tokens, weights], [indices], [shape],
                               lambda tokens, weights: [mix_in_ops(tokens, indices, weights)])
    return mixed
