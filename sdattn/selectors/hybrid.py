"""The `hybrid` selector: a local `window` part plus a per-head `dot` part, with a configurable split.
Window keys come first; dot fills the remaining slots with the best keys the window did not take."""

import math

from keras import ops

from sdattn import arguments, backend, budgets
from sdattn.selectors.base import Selector, register_selector
from sdattn.selectors.top_k import streamed_top_k
from sdattn.selectors.window import WindowSelector

# The lowest finite float32: forbidden keys rank below allowed ones, above taken ones (-inf).
_FLOAT32_MIN = -3.4028234663852886e38

@register_selector("hybrid", "A window of local keys plus the best remaining keys by q·k, per head.")
class HybridSelector(Selector):
    """Per-head selection: ⌈f·k⌉ local keys from `window`, then the best others by `dot`.

    The window part takes the ⌈window_fraction·k⌉ allowed keys nearest the query's proportional
    position (see `window`); the dot part fills the other slots, separately for each head, with
    the keys of largest scaled q·k among those the window part did not take. No key is selected
    twice (a duplicate would count twice in attention), and masked keys fill slots only when
    fewer than k keys are allowed (the layer then marks those slots invalid).

    With `top_k >= N` every allowed key is selected, so the layer equals Keras MHA.

    Args:
        window_fraction: share f of the k slots given to the window part, in [0, 1]; 0 is `dot`,
            1 is `window`. 0.5 keeps local context and long-range matches in equal measure.
        block_size: keys scored per block (see `Selector`).
    """

    per_head = True

    def __init__(self, window_fraction=0.5, block_size=None, **kwargs):
        window_fraction = arguments.real("window_fraction", window_fraction, low=0, high=1)
        super().__init__(block_size=block_size, **kwargs)
        self.window_fraction = window_fraction
        self._window = WindowSelector(block_size=block_size)

    def build(self, query_shape=None, key_shape=None, num_heads=None, key_dim=None):
        self._window.build(query_shape, key_shape, num_heads, key_dim)
        self.built = True

    def window_slots(self, k):
        """How many of k slots the window part takes: ⌈window_fraction·k⌉."""
        # Rounded first so that 0.3·10 = 3.0000000000000004 gives 3, not 4.
        return min(int(k), math.ceil(round(self.window_fraction * k, 9)))

    def select(self, context, k):
        window_slots = self.window_slots(k)
        dot_slots = k - window_slots
        window_indices = self._window.select(context, window_slots) if window_slots else None  # [B, 1|H, M, w]
        if not dot_slots:
            return window_indices
        dot_indices = self._best_remaining(context, dot_slots, k, window_indices)  # [B, H, M, k - w]
        if window_indices is None:
            return dot_indices
        target = backend.dynamic_shape(dot_indices)[:3] + (window_slots,)
        window_indices = ops.broadcast_to(ops.cast(window_indices, "int32"), target)  # [B, H, M, w]
        return ops.concatenate([window_indices, ops.cast(dot_indices, "int32")], axis=-1)  # [B, H, M, k]

    def scores(self, context, start, stop):
        """The dot part's relevance, scaled q·k per head: float `[B, H, M, stop - start]`."""
        key_block = context.projected_key[:, start:stop]  # [B, n, H, kd]
        return ops.einsum("bmhd,bnhd->bhmn", context.projected_query, key_block)  # [B, H, M, n]

    def _ranked_block(self, context, start, stop, taken):
        """Dot scores of keys [start, stop) in three tiers: allowed > forbidden > taken by the window."""
        block_scores = ops.cast(self.scores(context, start, stop), "float32")  # [B, H, M, n]
        mask = context.mask.block(start, stop)
        if mask is not None:
            block_scores = ops.where(mask, block_scores, _FLOAT32_MIN)
        if taken is not None:
            positions = ops.arange(start, stop, dtype="int32")
            is_taken = ops.any(
                ops.equal(ops.cast(taken, "int32")[..., :, None], positions), axis=-2)  # [B, 1|H, M, n]
            block_scores = ops.where(is_taken, -math.inf, block_scores)
        return block_scores

    def _best_remaining(self, context, slots, k, taken):
        """The dot part: int32 `[B, H, M, slots]`, never a key in `taken` ([B, 1|H, M, w] or None)."""
        num_keys = context.num_keys
        if not isinstance(num_keys, int):
            # Unknown N: one block, padded to k columns so that k - w untaken columns always exist;
            # padded positions are >= N, which the layer marks invalid.
            block_scores = self._ranked_block(context, 0, num_keys, None)
            static_shape = tuple(block_scores.shape[:3])
            pad = ops.maximum(k - backend.dynamic_shape(block_scores)[-1], 0)
            block_scores = ops.pad(block_scores, [[0, 0], [0, 0], [0, 0], [0, pad]],
                                   constant_values=_FLOAT32_MIN)
            if taken is not None:
                # Marked after padding: the window part may have taken padding positions too.
                positions = ops.arange(backend.dynamic_shape(block_scores)[-1], dtype="int32")
                is_taken = ops.any(
                    ops.equal(ops.cast(taken, "int32")[..., :, None], positions), axis=-2)  # [B, 1|H, M, n']
                block_scores = ops.where(is_taken, -math.inf, block_scores)
            _, indices = ops.top_k(block_scores, k=slots)
            return backend.ensure_shape(indices, static_shape + (slots,))  # [B, H, M, slots]
        block_size = self._block_size(context, k)
        comparisons = (math.prod(d or 0 for d in taken.shape[:-1]) * taken.shape[-1] * min(block_size, num_keys)
                       if taken is not None else 0)
        if taken is None or (block_size >= num_keys and comparisons <= budgets.HYBRID_TAKEN_COMPARISONS):
            # One block: rank the window's keys last while scoring (cheapest at small N).
            return streamed_top_k(lambda start, stop: self._ranked_block(context, start, stop, taken),
                                  num_keys, block_size, slots, cpu_kernel=context.cpu_top_k)
        # Fetch the best slots + w keys ignoring the window's, then drop the (at most w) taken
        # ones: the first `slots` left are the best untaken keys, in the same order as ranking
        # taken keys last, without comparing every key of every block with the w taken ones.
        fetched = min(slots + taken.shape[-1], num_keys)
        candidates = streamed_top_k(lambda start, stop: self._ranked_block(context, start, stop, None),
                                    num_keys, block_size, fetched, cpu_kernel=context.cpu_top_k)  # [B, H, M, f]
        taken = ops.cast(taken, candidates.dtype)  # [B, 1|H, M, w]
        is_taken = ops.any(ops.equal(candidates[..., :, None], taken[..., None, :]), axis=-1)  # [B, H, M, f]
        # The j-th untaken candidate goes to slot j (j < slots; there are at least `slots`):
        # a one-hot placement keeps static shapes (XLA) and needs no sort (a top_k per row).
        untaken = ops.logical_not(is_taken)
        slot = ops.where(untaken, ops.cumsum(ops.cast(untaken, "int32"), axis=-1) - 1, -1)  # [B, H, M, f]
        placement = ops.one_hot(slot, slots, dtype=candidates.dtype)  # [B, H, M, f, slots]; -1 and >= slots: none
        return ops.sum(placement * candidates[..., None], axis=-2)  # [B, H, M, slots]

    def get_config(self):
        config = super().get_config()
        config["window_fraction"] = self.window_fraction
        return config
