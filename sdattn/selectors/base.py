"""Selector base: the `Selector` class, the `SelectionContext` it sees, and the name registry.
A selector scores keys (or selects them itself); the registry maps `selector=` names to classes."""

import math

import keras
from keras import ops

from sdattn import backend, budgets
from sdattn.selectors.top_k import masked_scores, streamed_top_k

_REGISTRY = {}
_DESCRIPTIONS = {}



def register_selector(name, description):
    """Class decorator: registers a `Selector` under `name` and makes it Keras-serializable.

    Args:
        name: the string users pass as `selector=`.
        description: one line shown in the app and by `selector_descriptions()`.
    """

    def decorate(cls):
        cls = keras.saving.register_keras_serializable(package="sdattn")(cls)
        cls.selector_name = name
        _REGISTRY[name] = cls
        _DESCRIPTIONS[name] = description
        return cls

    return decorate


def available_selectors():
    """Returns the registered selector names, sorted by name (built-in and user-registered)."""
    return sorted(_REGISTRY)


def selector_descriptions():
    """Returns `{name: one-line description}` for every registered selector."""
    return dict(_DESCRIPTIONS)


def get(identifier):
    """Resolves `selector=` into a `Selector` instance.

    Args:
        identifier: a registered name (`"dot"`), a config dict (either Keras's serialized form
            `{"class_name": ..., "config": ...}` or `{"name": "window", **kwargs}`), or a
            `Selector` instance (returned as is).

    Returns:
        A `Selector`.
    """
    if isinstance(identifier, Selector):
        return identifier
    if isinstance(identifier, str):
        if identifier not in _REGISTRY:
            raise ValueError(
                "Received an invalid value for argument `selector`, expected one of "
                f"{available_selectors()} or a Selector instance. Received: selector={identifier!r}")
        return _REGISTRY[identifier]()
    if isinstance(identifier, dict):
        if "class_name" in identifier:
            selector = keras.saving.deserialize_keras_object(identifier)
        else:
            config = dict(identifier)
            name = config.pop("name", None)
            if name not in _REGISTRY:
                raise ValueError(
                    "Received an invalid value for argument `selector`: a config dict needs "
                    f"`name` set to one of {available_selectors()}. Received: selector={identifier!r}")
            selector = _REGISTRY[name](**config)
        if not isinstance(selector, Selector):
            raise TypeError(f"Argument `selector` must describe a Selector. Received: selector={identifier!r}")
        return selector
    raise TypeError(
        "Argument `selector` must be a selector name, a config dict or a Selector instance. "
        f"Received: selector={identifier!r} of type {type(identifier).__name__}")


def serialize(selector):
    """Returns the Keras-serialized config dict of a selector."""
    return keras.saving.serialize_keras_object(selector)


class SelectionContext:
    """What a selector sees for one call of the layer.

    Attributes:
        query: the raw query, sparse (a TensorFlow `SparseTensor`, a JAX `BCOO`) or dense `[B, M, Dq]`.
        key: the raw dense key tokens `[B, N, Dk]`.
        projected_query: `[B, M, H, key_dim]`, already scaled by 1/sqrt(key_dim), exactly what
            attention multiplies with the keys.
        projected_key: `[B, N, H, key_dim]` key projection (computed on first access, once).
        mask: the `AttentionMask` of this call.
        num_heads: H.
        num_queries: M (Python int when static).
        max_queries: M as a Python int when static, else None (block sizes need a number).
        num_keys: N (Python int when static).
        training: the Keras training flag.
        cpu_top_k: whether exact top-k may use the compiled CPU kernel (the layer's plan
            decides; pass it to `streamed_top_k` / `masked_top_k` as `cpu_kernel`).
    """

    def __init__(self, query, key, projected_query, project_key, mask, num_heads, training=None,
                 cpu_top_k=False):
        self.query = query
        self.key = key
        self.projected_query = projected_query
        self._project_key = project_key
        self._projected_key = None
        self.mask = mask
        self.num_heads = num_heads
        self.training = training
        self.cpu_top_k = cpu_top_k
        self.num_queries = query.shape[1] if query.shape[1] is not None else backend.dynamic_shape(projected_query)[1]
        self.max_queries = query.shape[1]
        self.num_keys = key.shape[1] if key.shape[1] is not None else backend.dynamic_shape(key)[1]
        self.cache = {}

    @property
    def projected_key(self):
        if self._projected_key is None:
            self._projected_key = self._project_key()
        return self._projected_key

    @property
    def has_projected_key(self):
        """Whether some selector already projected every key (so the layer can reuse it)."""
        return self._projected_key is not None

    @property
    def is_sparse(self):
        return backend.is_sparse(self.query)


class Selector(keras.layers.Layer):
    """Base class of selection strategies.

    A selector receives a `SelectionContext` (raw sparse query and dense keys, the projected
    and scaled query, lazily projected keys, and the combined mask) and returns, for every
    query, the positions of the k keys attention will use: int32 `[B, S, M, k]`, where S is 1
    for a selection shared by all heads and H for a per-head one (`per_head`). It never needs
    to handle masks itself: the default `select` applies them, and the layer marks any slot
    the mask forbids as `-1` whatever the selector returned.

    Subclasses implement `scores(context, start, stop)`, returning float relevance scores
    `[B, S, M, stop - start]` for keys `[start, stop)`; the default `select` streams these over
    key blocks with a running top-k, so memory stays O(M·k + block). A subclass may override
    `select` instead (an index lookup, say). A selector with trainable weights creates them in
    `build(query_shape, key_shape, num_heads, key_dim)`; they come after the attention weights
    in `layer.weights`. `attention_bias` may add a learned term to the logits of the selected
    slots so the selector's weights receive gradients.

    Register a custom selector with `register_selector(name, description)` (or, outside
    sdattn's registry, `keras.saving.register_keras_serializable()`) so that it survives
    `.keras` save/load; keep `get_config` equal to its constructor arguments. The README's
    "Writing a selector" shows a complete one and the rule for each class flag below.

    Args:
        block_size: keys scored per block. None sizes blocks to about 16 M scores per batch
            item (64 MB in float32), or 64 M (256 MB) for a per-head selector, whose blocks
            cost a top-k and a merge per row of H·M; smaller blocks use less memory, larger
            ones fewer top-k calls.
        **kwargs: `keras.layers.Layer` arguments.
    """

    #: Whether each head selects its own keys (True: S = H) or all heads share one selection
    #: (False: S = 1). The layer plans attention from it (a shared selection may be folded), and
    #: raises when a selector with `per_head = False` returns H selections.
    per_head = False
    #: Whether the selection runs outside TF's thread pools (a host callback, as `ann`'s
    #: Faiss search): the layer then starts attention after it, instead of letting TF's threads
    #: compete with it for the cores, which stalls the search's own threads.
    selects_outside_tf = False
    #: Whether `scores` are exactly the attention logits q·k of the layer (projected, scaled
    #: query times projected key): `select_scored` then hands them to the layer, which uses
    #: them as the logits at inference. Any other score would give wrong attention weights.
    scores_are_logits = False
    selector_name = "custom"

    def __init__(self, block_size=None, **kwargs):
        super().__init__(**kwargs)
        self.block_size = block_size

    def build(self, query_shape=None, key_shape=None, num_heads=None, key_dim=None):
        self.built = True

    def scores(self, context, start, stop):
        """Relevance of keys `[start, stop)`: float `[B, S, M, stop - start]`, higher is better."""
        raise NotImplementedError(f"{type(self).__name__} must implement `scores` or `select`.")

    def select(self, context, k):
        """Returns int32 `[B, S, M, k]` key positions, streaming `scores` over key blocks.

        Args:
            context: the `SelectionContext`.
            k: the static number of slots, `min(top_k, N)` (or `top_k` when N is unknown).
        """
        return self._streamed(context, k, return_values=False)

    def select_scored(self, context, k):
        """`(indices, logits)`: the selection, and the attention logits of its slots when this
        selector's scores are exactly those logits (`scores_are_logits`), else None.

        The layer then skips gathering the selected keys and recomputing q·k. Masked slots may
        hold `-inf`; the layer masks them. Same arguments as `select`.
        """
        if not self.scores_are_logits or not isinstance(context.num_keys, int):
            return self.select(context, k), None
        values, indices = self._streamed(context, k, return_values=True)
        return indices, values

    def _streamed(self, context, k, return_values):
        num_keys = context.num_keys
        if not isinstance(num_keys, int):
            # Unknown N: one block, padded so top_k always has k columns.
            block_scores = self.scores(context, 0, num_keys)
            block_scores = masked_scores(block_scores, context.mask.block(0, num_keys))
            static_shape = tuple(block_scores.shape[:3])
            pad = ops.maximum(k - backend.dynamic_shape(block_scores)[-1], 0)
            block_scores = ops.pad(block_scores, [[0, 0], [0, 0], [0, 0], [0, pad]],
                                   constant_values=-math.inf)
            _, indices = ops.top_k(block_scores, k=k)
            return backend.ensure_shape(indices, static_shape + (k,))  # [B, S, M, k]
        return streamed_top_k(
            lambda start, stop: masked_scores(self.scores(context, start, stop), context.mask.block(start, stop)),
            num_keys, self._block_size(context, k), k, return_values=return_values,
            cpu_kernel=context.cpu_top_k)

    def _block_size(self, context, k):
        """Keys per block: `block_size`, else a score budget per batch item over the rows."""
        if self.block_size:
            return max(int(self.block_size), 1)
        num_queries = context.max_queries or 1024
        if self.per_head:
            return max(k, budgets.PER_HEAD_BLOCK_ELEMENTS // max(num_queries * context.num_heads, 1))
        return max(k, budgets.BLOCK_ELEMENTS // max(num_queries, 1))

    def attention_bias(self, context, indices):
        """Optional additive term for the logits of the selected slots, `[B, S, M, k]`, or None."""
        return None

    def get_config(self):
        config = super().get_config()
        config["block_size"] = self.block_size
        return config
