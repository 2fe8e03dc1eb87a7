"""The combined attention mask, kept in factored form so that no `[B, H, M, N]` tensor is built.
Selectors read it block by block; the layer reads it only at the k selected slots."""

from keras import ops

from sdattn import backend


class AttentionMask:
    """Which (query, key) pairs may attend, combined exactly as Keras MHA combines its masks.

    The parts are ANDed: a query row mask `[B, M]`, a key mask `[B, N]` (value mask and key
    mask), a causal mask (query i sees keys j <= i) and an explicit attention mask. Keeping them
    apart means a block of keys, or the k selected slots, can be checked without building the
    full `[B, H, M, N]` boolean tensor.

    Args:
        num_queries: M, a Python int or scalar tensor.
        num_keys: N, a Python int or scalar tensor.
        query_mask: bool `[B, M]` or None.
        key_mask: bool `[B, N]` or None.
        attention_mask: bool `[B|1, H|1, M, N]` (already rank 4) or None.
        causal: whether the causal part applies.
    """

    def __init__(self, num_queries, num_keys, query_mask=None, key_mask=None,
                 attention_mask=None, causal=False):
        self.num_queries = num_queries
        self.num_keys = num_keys
        self.query_mask = query_mask
        self.key_mask = key_mask
        self.attention_mask = attention_mask
        self.causal = causal

    @property
    def is_empty(self):
        """True when nothing is masked at all."""
        return (self.query_mask is None and self.key_mask is None
                and self.attention_mask is None and not self.causal)

    @property
    def num_mask_heads(self):
        """1 when the mask is the same for all heads, else H (a per-head explicit mask)."""
        if self.attention_mask is None:
            return 1
        return self.attention_mask.shape[1]

    def block(self, start=0, stop=None):
        """The mask for keys `[start, stop)`.

        Returns:
            bool tensor broadcastable to `[B, H, M, stop - start]`, or None when nothing is masked.
        """
        if self.is_empty:
            return None
        stop = self.num_keys if stop is None else stop
        parts = []
        if self.query_mask is not None:
            parts.append(self.query_mask[:, None, :, None])  # [B, 1, M, 1]
        if self.key_mask is not None:
            parts.append(self.key_mask[:, None, None, start:stop])  # [B, 1, 1, n]
        if self.causal:
            query_position = ops.arange(self.num_queries)[:, None]  # [M, 1]
            key_position = ops.arange(start, stop)[None, :]  # [1, n]
            parts.append((key_position <= query_position)[None, None])  # [1, 1, M, n]
        if self.attention_mask is not None:
            parts.append(self.attention_mask[..., start:stop])  # [B|1, H|1, M, n]
        combined = parts[0]
        for part in parts[1:]:
            combined = ops.logical_and(combined, part)
        return combined

    def at_slots(self, indices):
        """Whether each selected slot is allowed.

        Args:
            indices: int32 `[B, S, M, k]`, in-range key positions (replace -1 first).

        Returns:
            bool tensor broadcastable to `[B, max(S, mask heads), M, k]`, or None when nothing
            is masked.
        """
        if self.is_empty:
            return None
        batch, _, num_queries, slots = backend.dynamic_shape(indices)
        parts = []
        if self.query_mask is not None:
            parts.append(self.query_mask[:, None, :, None])  # [B, 1, M, 1]
        if self.key_mask is not None:
            # [B, S·M·k] positions → their key-mask bits → [B, S, M, k]
            flat_positions = ops.reshape(indices, (batch, -1))
            picked = backend.gather_batched(self.key_mask, flat_positions, 1)
            parts.append(ops.reshape(picked, ops.shape(indices)))
        if self.causal:
            query_position = ops.arange(num_queries, dtype=indices.dtype)[None, None, :, None]  # [1, 1, M, 1]
            parts.append(indices <= query_position)
        if self.attention_mask is not None:
            heads = max(self.attention_mask.shape[1], indices.shape[1])
            num_keys = ops.shape(self.attention_mask)[-1]
            dense_mask = ops.broadcast_to(self.attention_mask, (batch, heads, num_queries, num_keys))  # [B, H', M, N]
            slot_positions = ops.broadcast_to(indices, (batch, heads, num_queries, slots))  # [B, H', M, k]
            parts.append(backend.gather_batched(dense_mask, slot_positions, 3))  # [B, H', M, k]
        combined = parts[0]
        for part in parts[1:]:
            combined = ops.logical_and(combined, part)
        return combined
