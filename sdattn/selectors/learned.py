"""The `learned` selector: a trainable low-rank relevance scorer that ranks keys and biases their logits.
It starts as head-averaged `dot` selection with a zero logit term, so training moves selection and attention together."""


import keras
from keras import ops

from sdattn import arguments, backend
from sdattn.selectors.base import Selector, register_selector


def _query_features(query, kernel):
    """`[B, M, Dq]` sparse or dense query times a `[Dq, r]` kernel: float32 `[B, M, r]`."""
    if backend.is_sparse(query):
        return backend.sparse_matmul(backend.cast_sparse(query, "float32"), kernel)  # [B, M, r]
    return ops.einsum("bmd,dr->bmr", ops.cast(query, "float32"), kernel)  # [B, M, r]


@register_selector("learned", "Head-averaged q·k plus a trainable low-rank score, which also biases the logits.")
class LearnedSelector(Selector):
    """Shared selection by a trainable low-rank relevance score that attention also uses.

    The relevance of key j to query i is

        r(i, j) = mean over heads of (q_i·k_j / sqrt(key_dim))  +  (x_i A)·(y_j B),

    where x_i is the raw (sparse) query row, y_j the raw key row, and `A [Dq, rank]`,
    `B [Dk, rank]` are this selector's weights. The first term is the head average of the logits
    attention computes, so at initialisation the selection is sensible. The second term, the
    learned score s(i, j), is added to the attention logits of the selected keys (see
    `attention_bias`), so the weights receive gradients from the task loss; as it grows for
    helpful keys it raises both their attention weight and their rank in the selection.

    `B` starts at zero (as in LoRA), so s = 0 at initialisation: the layer then equals Keras
    MHA when `top_k >= N`. `A` starts random, so `B` receives a gradient from the first step.

    The weights are created in `build` and come after the eight attention weights, so
    `layer.set_weights(mha.get_weights() + [query_factor, key_factor])` works.

    Args:
        rank: size r of the low-rank score. 8 is enough to separate a few dozen relevance
            patterns while adding only (Dq + Dk)·r weights.
        seed: seed of the random initialisation of `A` (None: unseeded).
        block_size: keys scored per block (see `Selector`).
    """

    def __init__(self, rank=8, seed=None, block_size=None, **kwargs):
        rank = arguments.positive_int("rank", rank)
        super().__init__(block_size=block_size, **kwargs)
        self.rank = rank
        self.seed = seed

    def build(self, query_shape=None, key_shape=None, num_heads=None, key_dim=None):
        """Creates `query_factor [Dq, rank]` (random) and `key_factor [Dk, rank]` (zeros).

        Args:
            query_shape: the query's shape `[B, M, Dq]`; Dq must be known.
            key_shape: the key's shape `[B, N, Dk]`; Dk must be known.
            num_heads, key_dim: the layer's; unused here.
        """
        if self.built:
            # Loading a `.keras` file builds the selector from its own build config first; the
            # layer's build then calls again, and must not create a second pair of weights.
            return
        query_dim = None if query_shape is None else query_shape[-1]
        key_features = None if key_shape is None else key_shape[-1]
        if query_dim is None or key_features is None:
            raise ValueError(
                "LearnedSelector needs the feature sizes of the query and key to build. "
                f"Received: query_shape={query_shape}, key_shape={key_shape}")
        # stddev 1/sqrt(rank) keeps ||x A|| close to ||x||, like a Johnson–Lindenstrauss projection.
        self.query_factor = self.add_weight(
            name="query_factor", shape=(int(query_dim), self.rank),
            initializer=keras.initializers.RandomNormal(stddev=self.rank ** -0.5, seed=self.seed))
        self.key_factor = self.add_weight(
            name="key_factor", shape=(int(key_features), self.rank), initializer="zeros")
        self.built = True

    def _factors(self, context):
        """`(x A [B, M, r], y B [B, N, r])` in float32, computed once per call."""
        if "learned_factors" not in context.cache:
            query_kernel = ops.cast(self.query_factor, "float32")
            key_kernel = ops.cast(self.key_factor, "float32")
            query_features = _query_features(context.query, query_kernel)  # [B, M, r]
            key_features = ops.einsum("bnd,dr->bnr", ops.cast(context.key, "float32"), key_kernel)  # [B, N, r]
            context.cache["learned_factors"] = (query_features, key_features)
        return context.cache["learned_factors"]

    def scores(self, context, start, stop):
        query_features, key_features = self._factors(context)
        key_block = ops.cast(context.projected_key[:, start:stop], "float32")  # [B, n, H, kd]
        query = ops.cast(context.projected_query, "float32")  # [B, M, H, kd]
        head_mean = ops.einsum("bmhd,bnhd->bmn", query, key_block) / float(context.num_heads)  # [B, M, n]
        learned = ops.einsum("bmr,bnr->bmn", query_features, key_features[:, start:stop])  # [B, M, n]
        return (head_mean + learned)[:, None]  # [B, 1, M, n]

    def attention_bias(self, context, indices):
        """The learned score s(i, j) of each selected slot, float32 `[B, S, M, k]`.

        Args:
            context: the `SelectionContext`.
            indices: int32 `[B, S, M, k]` in-range key positions (invalid slots set to 0).
        """
        query_features, key_features = self._factors(context)
        shape = backend.dynamic_shape(indices)
        flat = ops.reshape(indices, (shape[0], -1))  # [B, S·M·k]
        picked = backend.gather_batched(key_features, flat, 1)  # [B, S·M·k, r]
        picked = ops.reshape(picked, shape + (self.rank,))  # [B, S, M, k, r]
        return ops.einsum("bmr,bsmkr->bsmk", query_features, picked)  # [B, S, M, k]

    def get_config(self):
        config = super().get_config()
        config.update(rank=self.rank, seed=self.seed)
        return config
