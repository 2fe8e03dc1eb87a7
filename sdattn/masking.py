"""The combined attention mask, kept in factored form so that no `[B, H, M, N]` tensor is built.
Selectors read it block by block; the layer reads it only at the k selected slots."""

import tensorflow as tf


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
            query_position = tf.range(self.num_queries)[:, None]  # [M, 1]
            key_position = tf.range(start, stop)[None, :]  # [1, n]
            parts.append((key_position <= query_position)[None, None])  # [1, 1, M, n]
        if self.attention_mask is not None:
            parts.append(self.attention_mask[..., start:stop])  # [B|1, H|1, M, n]
        combined = parts[0]
        for part in parts[1:]:
            combined = tf.logical_and(combined, part)
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
        batch = tf.shape(indices)[0]
        parts = []
        if self.query_mask is not None:
            parts.append(self.query_mask[:, None, :, None])  # [B, 1, M, 1]
        if self.key_mask is not None:
            # [B, S·M·k] positions → their key-mask bits → [B, S, M, k]
            flat_positions = tf.reshape(indices, [batch, -1])
            picked = tf.gather(self.key_mask, flat_positions, batch_dims=1)
            parts.append(tf.reshape(picked, tf.shape(indices)))
        if self.causal:
            query_position = tf.range(tf.shape(indices)[2])[None, None, :, None]  # [1, 1, M, 1]
            parts.append(indices <= query_position)
        if self.attention_mask is not None:
            mask_heads = self.attention_mask.shape[1]
            index_heads = indices.shape[1]
            heads = max(mask_heads, index_heads)
            target = tf.stack([batch, heads, tf.shape(indices)[2], -1])
            dense_mask = tf.broadcast_to(
                self.attention_mask,
                tf.concat([target[:3], tf.shape(self.attention_mask)[-1:]], 0))  # [B, H', M, N]
            slot_positions = tf.broadcast_to(indices, tf.concat([target[:3], tf.shape(indices)[-1:]], 0))  # [B, H', M, k]
            parts.append(tf.gather(dense_mask, slot_positions, batch_dims=3))
        combined = parts[0]
        for part in parts[1:]:
            combined = tf.logical_and(combined, part)
        return combined
