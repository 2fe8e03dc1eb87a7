"""The `dot` selector: exact per-head top-k of the scaled q·k, the reference strategy.
With `top_k >= N` the layer is exact dense attention."""

from keras import ops

from sdattn.selectors.base import Selector, register_selector


@register_selector("dot", "Exact top-k of the scaled q·k, per head: the reference strategy.")
class DotSelector(Selector):
    """Exact per-head selection: the k keys with the largest scaled dot product q·k.

    With `top_k >= N` this is exact dense attention. Costs a full `[B, H, M, N]` score pass
    (streamed in blocks), so it is the accuracy reference rather than the fast path.
    """

    per_head = True
    scores_are_logits = True

    def scores(self, context, start, stop):
        key_block = context.projected_key[:, start:stop]  # [B, n, H, kd]
        return ops.einsum("bmhd,bnhd->bhmn", context.projected_query, key_block)  # [B, H, M, n]
