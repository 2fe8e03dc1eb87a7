"""Selectors: the strategies that pick, for every query, the k keys attention will look at.
A selector scores keys; `masked_top_k` turns scores into indices; a registry maps names to selectors."""

import math

import keras
import tensorflow as tf

from sdattn import cpu_top_k
from sdattn import distinct as distinct_lib

_REGISTRY = {}
_DESCRIPTIONS = {}

# Scores of about 16 M float32 (64 MB) per batch item and block keep selection memory bounded
# at large N.
_BLOCK_ELEMENTS = 2**24
# Per-head selectors get 4× that (256 MB per batch item): each block costs a top-k and a merge
# over H·M rows, each with a cost per row, so small blocks are slow. Measured for exact `dot` on
# Config P at N = 65,536 (B·H·M = 8,192 rows): with TF's top_k, 1,032 ms with blocks of 4,096
# keys and 511 ms with 16,384 (Keras MHA: 503 ms); with `cpu_top_k`'s kernel, 294 and 213 ms.
_PER_HEAD_BLOCK_ELEMENTS = 2**26
# Blocks reduced to their top-k before they are merged into the running top-k: one top-k over
# (8 + 1)·k columns instead of eight over 2·k. Measured for `cosine` on Config P at N = 1M (64
# blocks of 16K keys): 1,182 ms merging after every block, 1,094 ms merging every 8 blocks.
_MERGE_EVERY = 8


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
    """Returns the registered selector names, in registration order."""
    return list(_REGISTRY)


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


def grouped_top_k(scores, k, group_size=None):
    """Exact top-k over the last axis in two cheap stages instead of one long `tf.math.top_k`.

    Keys are cut into groups of `group_size`; the k groups with the largest maxima contain
    every top-k element (each top-k element's group has a maximum at least as large as the
    k-th largest element, and at most k groups can), so a top-k over the group maxima and a
    top-k over the k·group_size gathered candidates give the exact result. TF's CPU top-k is
    slow per element on long rows; a reduce-max is not.

    Args:
        scores: float `[..., n]` with static rank and static n.
        k: Python int, at most n.
        group_size: keys per group; defaults to the power of two nearest sqrt(n / k).

    Returns:
        `(values, indices)`, `[..., k]`, by decreasing value; ties go to the lower index.
    """
    num_keys = scores.shape[-1]
    if group_size is None:
        group_size = 2 ** max(0, round(math.log2(math.sqrt(max(num_keys, 1) / max(k, 1)))))
    num_groups = -(-num_keys // group_size)
    if group_size < 2 or num_groups < 2 * k or scores.shape.rank is None:
        return tf.math.top_k(scores, k=k)
    padding = num_groups * group_size - num_keys
    if padding:
        scores = tf.pad(scores, [[0, 0]] * (scores.shape.rank - 1) + [[0, padding]],
                        constant_values=-math.inf)
    leading = tf.shape(scores)[:-1]
    grouped = tf.reshape(scores, tf.concat([leading, [num_groups, group_size]], 0))  # [..., G, g]
    _, top_groups = tf.math.top_k(tf.reduce_max(grouped, axis=-1), k=k, sorted=False)  # [..., k]
    # Candidates in increasing key order, so that the final top-k breaks ties by lower index.
    top_groups = tf.sort(top_groups, axis=-1)
    batch_dims = scores.shape.rank - 1
    candidates = tf.gather(grouped, top_groups, batch_dims=batch_dims)  # [..., k, g]
    candidates = tf.reshape(candidates, tf.concat([leading, [k * group_size]], 0))  # [..., k·g]
    values, positions = tf.math.top_k(candidates, k=k)
    indices = tf.gather(top_groups, positions // group_size, batch_dims=batch_dims) * group_size + positions % group_size
    return values, indices


def _masked(scores, mask):
    """Scores with masked keys at `-inf` (mask None: unchanged)."""
    if mask is None:
        return scores
    return tf.where(mask, scores, tf.constant(-math.inf, scores.dtype))


def streamed_top_k(block_scores, num_keys, block_size, k, return_values=False):
    """Exact top-k over keys `[0, num_keys)` scored one block at a time, with a running merge.

    Memory stays O(M·k·_MERGE_EVERY + block) whatever N is: each block is reduced to its top-k
    before the next block is scored, and every `_MERGE_EVERY` blocks the reduced blocks are
    merged into the running top-k, with one top-k over their concatenation.

    Args:
        block_scores: callable `(start, stop)` → float `[B, S, M, stop - start]`, masked keys
            already at `-inf`.
        num_keys: N, a Python int.
        block_size: keys per block.
        k: Python int, at most `num_keys`.
        return_values: also return the selected scores.

    Returns:
        int32 `[B, S, M, k]` key positions, by decreasing score; with `return_values`,
        `(scores, positions)`, each `[B, S, M, k]`.
    """
    # The running top-k, then the blocks reduced since, in key order: in their concatenation an
    # equal score at a lower position has the lower key, so ties still go to the lower key.
    pending_values, pending_indices = [], []
    for start in range(0, num_keys, block_size):
        stop = min(start + block_size, num_keys)
        # In a graph every block is ready at once; without this dependency TF may compute all
        # blocks' scores before reducing any, and memory would grow with N after all.
        with tf.control_dependencies(pending_values[-1:]):
            scores = block_scores(start, stop)
        values, indices = masked_top_k(scores, min(k, stop - start))
        pending_values.append(values)
        pending_indices.append(indices + start)
        if len(pending_values) > _MERGE_EVERY:
            best_values, best_indices = _merged_top_k(pending_values, pending_indices, k)
            pending_values, pending_indices = [best_values], [best_indices]
    best_values, best_indices = _merged_top_k(pending_values, pending_indices, k)
    return (best_values, best_indices) if return_values else best_indices


def _merged_top_k(values, indices, k):
    """The top-k of several `[B, S, M, k_i]` (values, key positions) pairs, concatenated in key
    order: `(values, positions)`, `[B, S, M, min(k, Σ k_i)]` each."""
    if len(values) == 1:
        return values[0], indices[0]
    merged_values = tf.concat(values, axis=-1)  # [B, S, M, Σ k_i]
    merged_indices = tf.concat(indices, axis=-1)  # [B, S, M, Σ k_i]
    best_values, order = masked_top_k(merged_values, min(k, merged_values.shape[-1]))
    return best_values, tf.gather(merged_indices, order, batch_dims=3)


def masked_top_k(scores, k, mask=None):
    """Top-k key positions per row, never preferring a masked key over an allowed one.

    A pure function: masked keys score `-inf`, so they fill slots only when fewer than k keys
    are allowed; the layer then marks those slots invalid.

    Args:
        scores: float `[B, S, M, n]` relevance scores.
        k: Python int, at most n.
        mask: bool tensor broadcastable to `scores`, or None.

    Returns:
        `(values, indices)`, each `[B, S', M, k]` (S' = S broadcast with the mask's heads);
        indices are int32 positions in `[0, n)`, ordered by decreasing score, lower index first
        on ties.
    """
    scores = _masked(scores, mask)
    if scores.shape[-1] is None:
        return tf.math.top_k(scores, k=k)
    if cpu_top_k.applies(scores, k):
        return cpu_top_k.top_k(scores, k)
    return grouped_top_k(scores, k)


class SelectionContext:
    """What a selector sees for one call of the layer.

    Attributes:
        query: the raw query, a `tf.SparseTensor` or dense tensor `[B, M, Dq]`.
        key: the raw dense key tokens `[B, N, Dk]`.
        projected_query: `[B, M, H, key_dim]`, already scaled by 1/sqrt(key_dim), exactly what
            attention multiplies with the keys.
        projected_key: `[B, N, H, key_dim]` key projection (computed on first access, once).
        mask: the `AttentionMask` of this call.
        num_heads: H.
        num_queries: M (Python int when static).
        max_queries: a static upper bound of M (Python int), or None: for block sizes when M is
            only known at run time (the distinct rows of a batch are at most its rows).
        num_keys: N (Python int when static).
        training: the Keras training flag.
    """

    def __init__(self, query, key, projected_query, project_key, mask, num_heads, training=None):
        self.query = query
        self.key = key
        self.projected_query = projected_query
        self._project_key = project_key
        self._projected_key = None
        self.mask = mask
        self.num_heads = num_heads
        self.training = training
        self.num_queries = query.shape[1] if query.shape[1] is not None else tf.shape(query)[1]
        self.max_queries = query.shape[1]
        self.num_keys = key.shape[1] if key.shape[1] is not None else tf.shape(key)[1]
        self.cache = {}
        self._dense_query = None  # set by `allow_distinct`
        self._distinct = None

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
        return isinstance(self.query, tf.SparseTensor)

    def allow_distinct(self, dense_query):
        """Lets `distinct()` share work between equal rows of `dense_query` `[B, M, Dq]` (the
        layer calls this when no mask tells equal rows apart)."""
        self._dense_query = dense_query

    def distinct(self):
        """`(rows, context)` to compute a row-wise part of a selection once per distinct query
        row (`rows.expand` copies results back), or None when rows may not be shared here.

        The layer already does this for `row_wise` selectors; a selector that is row-wise only
        in part (`hybrid`'s dot part) calls it itself. Computed once per call.
        """
        if self._dense_query is None:
            return None
        if self._distinct is None:
            rows = distinct_lib.distinct_rows(self._dense_query)
            self._distinct = (rows, self.restricted_to(rows.representatives, self._dense_query))
        return self._distinct

    def restricted_to(self, rows, dense_query):
        """The context of some query rows only, for selecting once per distinct row.

        The query becomes the dense rows `rows` of `dense_query`; the keys, their lazy
        projection (shared, so it is still computed at most once) and the key mask stay
        (`AttentionMask.for_distinct_rows`): a masked row's slots are marked invalid by the
        layer anyway, and an equal unmasked row must still get its real selection.

        Args:
            rows: int32 `[B, U]` row positions in each batch item.
            dense_query: float `[B, M, Dq]`, the query as a dense tensor.

        Returns:
            A `SelectionContext` with U query rows.
        """
        query = tf.gather(dense_query, rows, batch_dims=1)  # [B, U, Dq]
        projected_query = tf.gather(self.projected_query, rows, batch_dims=1)  # [B, U, H, kd]
        distinct = SelectionContext(query, self.key, projected_query, lambda: self.projected_key,
                                    self.mask.for_distinct_rows(tf.shape(rows)[1]), self.num_heads,
                                    training=self.training)
        distinct.max_queries = self.max_queries
        return distinct


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

    Register a custom selector with `keras.saving.register_keras_serializable()` so that it
    survives `.keras` save/load; keep `get_config` equal to its constructor arguments.

    Args:
        block_size: keys scored per block. None sizes blocks to about 16 M scores per batch
            item (64 MB in float32), or 64 M (256 MB) for a per-head selector, whose blocks
            cost a top-k and a merge per row of H·M; smaller blocks use less memory, larger
            ones fewer top-k calls.
        **kwargs: `keras.layers.Layer` arguments.
    """

    #: Whether each head selects its own keys (True) or all heads share one selection.
    per_head = False
    #: Whether a row's selection and `attention_bias` depend only on that row's content (and
    #: the keys), not on its position or on other rows: the layer then selects and attends
    #: once per distinct query row.
    row_wise = False
    #: Whether the selection runs outside TF's thread pools (a `tf.numpy_function`, as `ann`'s
    #: Faiss search): the layer then starts attention after it, instead of letting TF's threads
    #: compete with it for the cores (measured 0.8 ms faster of 10 ms per call for `ann`).
    selects_outside_tf = False
    #: Whether `scores` are exactly the attention logits q·k of the layer (projected, scaled
    #: query times projected key): `select_scored` then hands them to the layer.
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
            block_scores = _masked(block_scores, context.mask.block(0, num_keys))
            static_shape = block_scores.shape[:3]
            pad = tf.maximum(k - tf.shape(block_scores)[-1], 0)
            block_scores = tf.pad(block_scores, [[0, 0], [0, 0], [0, 0], [0, pad]],
                                  constant_values=-math.inf)
            _, indices = tf.math.top_k(block_scores, k=k)
            return tf.ensure_shape(indices, static_shape.concatenate([k]))  # [B, S, M, k]
        return streamed_top_k(
            lambda start, stop: _masked(self.scores(context, start, stop), context.mask.block(start, stop)),
            num_keys, self._block_size(context, k), k, return_values=return_values)

    def _block_size(self, context, k):
        """Keys per block: `block_size`, else a score budget per batch item over the rows."""
        if self.block_size:
            return max(int(self.block_size), 1)
        num_queries = context.max_queries or 1024
        if self.per_head:
            return max(k, _PER_HEAD_BLOCK_ELEMENTS // max(num_queries * context.num_heads, 1))
        return max(k, _BLOCK_ELEMENTS // max(num_queries, 1))

    def attention_bias(self, context, indices):
        """Optional additive term for the logits of the selected slots, `[B, S, M, k]`, or None."""
        return None

    def get_config(self):
        config = super().get_config()
        config["block_size"] = self.block_size
        return config


@register_selector("dot", "Exact top-k of the scaled q·k, per head: the reference strategy.")
class DotSelector(Selector):
    """Exact per-head selection: the k keys with the largest scaled dot product q·k.

    With `top_k >= N` this is exact dense attention. Costs a full `[B, H, M, N]` score pass
    (streamed in blocks), so it is the accuracy reference rather than the fast path.
    """

    per_head = True
    row_wise = True
    scores_are_logits = True

    def scores(self, context, start, stop):
        key_block = context.projected_key[:, start:stop]  # [B, n, H, kd]
        return tf.einsum("bmhd,bnhd->bhmn", context.projected_query, key_block)  # [B, H, M, n]


def _row_l2_norm(x, axis=-1):
    return tf.sqrt(tf.reduce_sum(tf.square(x), axis=axis))


def _block_diagonal_query(query):
    """Lays a sparse `[B, M, Dq]` query out as a `[B·M, B·Dq]` block-diagonal sparse matrix.

    Multiplied by keys stacked as `[B·Dq, n]`, row (b, m) meets only batch item b's keys, so a
    batch of sparse×dense products is one rank-2 `sparse_dense_matmul` with no wasted work.
    """
    batch = tf.cast(query.dense_shape[0], tf.int64)
    num_queries = tf.cast(query.dense_shape[1], tf.int64)
    query_dim = tf.cast(query.dense_shape[2], tf.int64)
    b, m, d = query.indices[:, 0], query.indices[:, 1], query.indices[:, 2]
    indices = tf.stack([b * num_queries + m, b * query_dim + d], axis=1)
    return tf.SparseTensor(indices, query.values, tf.stack([batch * num_queries, batch * query_dim]))


@register_selector("cosine", "Cosine similarity of the raw sparse query and key rows, shared by all heads.")
class CosineSelector(Selector):
    """Shared selection by cosine similarity.

    When the query and key feature sizes match (Dq == Dk), it compares the raw sparse query
    rows with the raw key rows, so it needs no key projection at all; otherwise it compares the
    head-averaged projected query and key. A sparse query is scored through
    `tf.sparse.sparse_dense_matmul` below `sparse_density` non-zero density and through a dense
    matmul above it: on CPU the sparse kernel costs about 100× more per multiply-add (measured:
    210 ms sparse vs 53 ms dense at 3% density, N = 16,384), so dense wins down to ~1%.

    Args:
        epsilon: added to norms so that all-zero rows score 0, not NaN.
        sparse_density: query density below which the sparse matmul is used.
    """

    row_wise = True

    def __init__(self, epsilon=1e-9, sparse_density=0.01, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.sparse_density = sparse_density

    def _raw_space(self, context):
        return context.query.shape[-1] is not None and context.query.shape[-1] == context.key.shape[-1]

    def _unit_rows(self, rows):
        """Rows divided by their L2 norm (plus epsilon): all-zero rows stay zero."""
        return rows / (_row_l2_norm(rows)[..., None] + tf.constant(self.epsilon, rows.dtype))

    def _prepared_query(self, context):
        """`(kind, unit query)`: kind "sparse", "dense" or "adaptive" (decided per block in graphs).

        The query rows are normalised here, once, and each key block in `scores`, so the
        cosine is a plain product and no `[B, M, n]` score tensor is rescaled elementwise.
        """
        if "cosine_query" in context.cache:
            return context.cache["cosine_query"]
        query = context.query
        if not self._raw_space(context):
            mean_query = tf.reduce_mean(context.projected_query, axis=2)  # [B, M, kd]
            prepared = ("dense", self._unit_rows(mean_query))
        elif not isinstance(query, tf.SparseTensor):
            prepared = ("dense", self._unit_rows(query))
        else:
            squares = tf.SparseTensor(query.indices, tf.square(query.values), query.dense_shape)
            norms = tf.sqrt(tf.sparse.reduce_sum(squares, axis=-1))  # [B, M]
            row_scale = 1.0 / (tf.gather_nd(norms, query.indices[:, :2]) + tf.constant(self.epsilon, norms.dtype))  # [nnz]
            query = tf.SparseTensor(query.indices, query.values * row_scale, query.dense_shape)
            static_size = math.prod(d or 0 for d in query.shape)
            if static_size > _BLOCK_ELEMENTS or self.sparse_density <= 0:
                prepared = ("sparse", query)  # densifying could need a lot of memory
            elif tf.executing_eagerly():
                density = float(tf.size(query.values)) / max(float(tf.reduce_prod(query.dense_shape)), 1.0)
                kind = "sparse" if density < self.sparse_density else "dense"
                prepared = (kind, query if kind == "sparse" else tf.sparse.to_dense(query))
            else:
                prepared = ("adaptive", query)
        context.cache["cosine_query"] = prepared
        return prepared

    @staticmethod
    def _sparse_dots(query, key_block):
        batch, num_block_keys = tf.shape(key_block)[0], tf.shape(key_block)[1]
        stacked_keys = tf.reshape(tf.transpose(key_block, [0, 2, 1]), [-1, num_block_keys])  # [B·Dk, n]
        dots = tf.sparse.sparse_dense_matmul(_block_diagonal_query(query), stacked_keys)  # [B·M, n]
        return tf.reshape(dots, tf.stack([batch, -1, num_block_keys]))  # [B, M, n]

    def scores(self, context, start, stop):
        kind, query = self._prepared_query(context)
        if self._raw_space(context):
            key_block = context.key[:, start:stop]  # [B, n, Dk]
        else:
            key_block = tf.reduce_mean(context.projected_key[:, start:stop], axis=2)  # [B, n, kd]
        key_block = self._unit_rows(key_block)  # [B, n, D]
        if kind == "sparse":
            cosine = self._sparse_dots(query, key_block)
        elif kind == "dense":
            cosine = tf.einsum("bmd,bnd->bmn", query, key_block)  # [B, M, n]
        else:
            density = tf.cast(tf.size(query.values), tf.float64) / tf.cast(
                tf.maximum(tf.reduce_prod(query.dense_shape), 1), tf.float64)
            cosine = tf.cond(density < self.sparse_density,
                             lambda: self._sparse_dots(query, key_block),
                             lambda: tf.einsum("bmd,bnd->bmn", tf.sparse.to_dense(query), key_block))
            cosine = tf.ensure_shape(cosine, (query.shape[0], query.shape[1], key_block.shape[1]))  # [B, M, n]
        return cosine[:, None]  # [B, 1, M, n]

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, sparse_density=self.sparse_density)
        return config


@register_selector("random", "Uniformly random keys (seeded): the baseline any strategy must beat.")
class RandomSelector(Selector):
    """Shared uniform random selection without replacement, a baseline.

    Args:
        seed: int for the same selection on every call (reproducible demos), or None for a
            fresh draw on each call.
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed)

    def scores(self, context, start, stop):
        batch = tf.shape(context.key)[0]
        shape = tf.stack([batch, 1, tf.cast(context.num_queries, tf.int32), stop - start])
        if self.seed is not None:
            return tf.random.stateless_uniform(shape, seed=[self.seed, start])
        return keras.random.uniform(shape, seed=self._seed_generator, dtype="float32")

    def get_config(self):
        config = super().get_config()
        config["seed"] = self.seed
        return config


@register_selector("window", "The k keys nearest the query's proportional position: local attention.")
class WindowSelector(Selector):
    """Shared local selection: the k keys nearest to position round(i·(N−1)/max(M−1, 1)).

    Query i of M is mapped to a proportional position among the N keys, so a short query
    sequence still spans the whole key sequence. Equidistant keys: the lower index wins.
    Rounding is half-to-even, as Python's `round`.
    """

    def scores(self, context, start, stop):
        num_queries = tf.cast(context.num_queries, tf.float64)
        num_keys = tf.cast(context.num_keys, tf.float64)
        query_position = tf.range(num_queries, dtype=tf.float64)
        centre = tf.round(query_position * (num_keys - 1.0) / tf.maximum(num_queries - 1.0, 1.0))  # [M]
        key_position = tf.range(start, stop, dtype=tf.float64)  # [n]
        distance = tf.abs(key_position[None, :] - centre[:, None])  # [M, n]
        batch = tf.shape(context.key)[0]
        # float32 even under float16 policies: distances up to N must stay distinct.
        negative_distance = tf.cast(-distance, tf.float32)[None, None]  # [1, 1, M, n]
        return tf.tile(negative_distance, [batch, 1, 1, 1])  # [B, 1, M, n]
