"""The attention plan: how one call of the layer attends, decided once from its inputs and settings.
`plan_attention` is a pure function of static shapes and flags; the layer's `call` only reads the plan."""

import dataclasses

from sdattn import budgets

#: Attention over the selected slots with projected keys and values, through `_compute_attention`.
STANDARD = "standard"
#: The selector's scores are the attention logits already: only the values are gathered.
REUSED_LOGITS = "reused_logits"
#: A shared selection attended with the key and value kernels folded into the query side.
FOLDED = "folded"


@dataclasses.dataclass(frozen=True)
class AttentionPlan:
    """How one call attends.

    Attributes:
        path: `STANDARD`, `REUSED_LOGITS` or `FOLDED`.
        slots: k = min(top_k, N) (top_k when N is unknown).
        selection_heads: S, 1 for a selection shared by all heads, H for one per head.
        project_selected: project only the selected tokens (S·M·k < N), instead of all N once.
        cpu_top_k: exact top-k may use the compiled CPU kernel (`selectors.cpu_top_k`).
        waits_for_selection: attention starts after the selection (which runs outside TF's
            thread pools) instead of competing with it for the cores.
        mixes_raw_values: on the `REUSED_LOGITS` path, each (query, head)'s selected raw value
            rows are summed by the compiled CPU kernel (`sdattn.value_mixing`) and the value
            kernel applied to the sum, instead of projecting the values and gathering them.
        compiled_folding: on the `FOLDED` path, the logits, softmax and mixing over the
            selected raw rows run in the compiled CPU kernel (`sdattn.folded_attention`).
    """

    path: str
    slots: int
    selection_heads: int
    project_selected: bool
    cpu_top_k: bool
    waits_for_selection: bool
    mixes_raw_values: bool = False
    compiled_folding: bool = False


def plan_attention(*, num_queries, num_keys, key_features, value_features, num_heads, key_dim,
                   value_dim, top_k, per_head, scores_are_logits, selects_outside_tf,
                   mask_heads=1, training=None, eager=False, custom_attention=False,
                   fast_paths=True, cpu_top_k_available=False, compute_dtype="float32"):
    """Chooses the attention path of one call.

    Args:
        num_queries: M as a Python int, or None when only known at run time.
        num_keys: N as a Python int, or None.
        key_features: Dk, the raw key width (None when unknown).
        value_features: Dv, the raw value width.
        num_heads: H.
        key_dim, value_dim: the head sizes.
        top_k: the layer's `top_k`.
        per_head: the selector's `per_head` flag.
        scores_are_logits: the selector's `scores_are_logits` flag.
        selects_outside_tf: the selector's `selects_outside_tf` flag.
        mask_heads: heads of the explicit attention mask (1 unless it is `[B, H, M, N]`).
        training: the Keras training flag.
        eager: whether the call runs eagerly (no graph ordering to add then).
        custom_attention: whether a subclass overrides `_compute_attention` (only the standard
            path calls it).
        fast_paths: the layer's `fast_paths`; False always plans the standard path in TF ops.
        cpu_top_k_available: `cpu_top_k.available()` for the graph being built (the compiled
            CPU kernels may run).
        compute_dtype: the layer's compute dtype, as a string.

    Returns:
        An `AttentionPlan`.
    """
    slots = top_k if num_keys is None else min(top_k, num_keys)
    selection_heads = num_heads if (per_head or mask_heads != 1) else 1
    project_selected = (num_keys is not None and num_queries is not None
                        and selection_heads * num_queries * slots < num_keys)
    path = STANDARD
    if fast_paths and not custom_attention:
        if selection_heads == 1 and _folding_costs_less(num_queries, num_keys, key_features,
                                                        value_features, num_heads, key_dim,
                                                        value_dim, slots):
            path = FOLDED
        elif scores_are_logits and num_keys is not None and training is not True:
            # Not while training: the logits' gradient would then flow through top-k, which
            # builds a dense [B, H, M, block] gradient per key block.
            path = REUSED_LOGITS
    cpu_kernels = bool(fast_paths and cpu_top_k_available)
    mixes_raw_values = (path == REUSED_LOGITS and cpu_kernels and compute_dtype in ("float32", "float64")
                        and _mixing_costs_less(num_queries, num_keys, value_features, num_heads,
                                               value_dim, slots, selection_heads))
    # Not while training: dropout stays TF's, whose own gradient is also cheaper than one
    # recomputed for the kernel.
    compiled_folding = bool(
        path == FOLDED and cpu_kernels and compute_dtype == "float32" and training is not True
        and num_queries * slots * max(key_features or 0, value_features or 0)
        >= budgets.FOLDED_KERNEL_MIN_ELEMENTS)
    return AttentionPlan(path=path, slots=slots, selection_heads=selection_heads,
                         project_selected=project_selected, cpu_top_k=cpu_kernels,
                         waits_for_selection=bool(selects_outside_tf and not eager),
                         mixes_raw_values=mixes_raw_values, compiled_folding=compiled_folding)


def _mixing_costs_less(num_queries, num_keys, value_features, num_heads, value_dim, slots,
                       selection_heads):
    """Whether summing each head's selected raw value rows, then applying the value kernel,
    costs fewer multiply-adds than projecting the values (all N, or each selected token once
    when fewer), and the call is large enough to be worth the compiled kernel.

    Mixing costs H·k·Dv per query and the value kernel Dv·H·vd per query; projecting costs
    Dv·H·vd per projected token.
    """
    if num_queries is None or num_keys is None or value_features is None:
        return False
    mixed_elements = num_heads * num_queries * slots * value_features
    if mixed_elements < budgets.VALUE_MIXING_MIN_ELEMENTS:
        return False
    mixing = mixed_elements + num_queries * value_features * num_heads * value_dim
    projected = min(num_keys, selection_heads * num_queries * slots) * value_features * num_heads * value_dim
    return mixing < projected


def _folding_costs_less(num_queries, num_keys, key_features, value_features, num_heads,
                        key_dim, value_dim, slots):
    """Whether folding the kernels costs fewer multiply-adds than projecting the selected tokens.

    Folding costs H·D per (query, slot) twice (logits and mixing) plus the folds themselves;
    projecting costs D·H·(key_dim + value_dim) per projected token, and a selected token
    usually serves one query only, so up to min(N, M·k) tokens are projected.
    """
    if num_queries is None or num_keys is None:
        return False
    token_dim = max(key_features or 0, value_features or 0)
    if num_queries * slots * token_dim > budgets.FOLD_GATHER_ELEMENTS:
        return False  # the gathered raw rows [B, M, k, D] would be too large
    key_depth = key_dim + value_dim
    folded = token_dim * num_heads * (2 * slots + key_depth)
    projected = min(num_keys, num_queries * slots) / num_queries * token_dim * num_heads * key_depth
    return folded < projected
