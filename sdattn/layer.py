"""SparseDenseMultiHeadAttention: sparse query rows attend over dense tokens through top-k keys.
Same weights and masking semantics as `keras.layers.MultiHeadAttention`; attention touches k keys per query."""

import math
import numbers

import keras
from keras import constraints, initializers, ops, regularizers
# Keras exports no public setter for implicit masks; MultiHeadAttention uses this same helper.
from keras.src.backend.common.masking import set_keras_mask

from sdattn import backend, budgets, plan as plan_lib
from sdattn import selectors as selectors_lib
from sdattn import arguments
from sdattn.selectors import cpu_top_k
from sdattn import folded_attention, value_mixing
from sdattn.masking import AttentionMask


def _large_negative_number(dtype):
    """A finite large negative for masking: -1e9 overflows float16, so it gets -3e4 (as Keras)."""
    return -3e4 if keras.backend.standardize_dtype(dtype) == "float16" else -1e9


def _output_shape_tuple(output_shape):
    if output_shape is None:
        return None
    if isinstance(output_shape, numbers.Integral) and not isinstance(output_shape, bool):
        output_shape = (output_shape,)
    if (isinstance(output_shape, (tuple, list)) and output_shape
            and all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0
                    for d in output_shape)):
        return tuple(int(d) for d in output_shape)
    # "Invalid `output_shape`" is Keras MHA's wording: code and tests written against it still match.
    expected = "a positive integer or a tuple of positive integers"
    raise ValueError(f"Invalid `output_shape`: {arguments.invalid_value('output_shape', expected, output_shape)}")


_is_sparse = backend.is_sparse


@keras.saving.register_keras_serializable(package="sdattn")
class SparseDenseMultiHeadAttention(keras.layers.Layer):
    """Multi-head attention from sparse query rows to dense tokens, over the top-k keys only.

    Each query (a row of a sparse tensor: a TensorFlow `SparseTensor`, a JAX `BCOO`, what
    `keras.Input(sparse=True)` gives on each) is projected with a sparse matmul; a *selector*
    picks the `top_k` most relevant dense tokens for it (shared by all heads, or per head);
    scaled dot-product attention with a masked softmax then runs over those k tokens only, and
    the heads are combined by the output projection. The weights are those of
    `keras.layers.MultiHeadAttention(num_heads, key_dim, value_dim, output_shape=...)`, in the
    same order and shapes, so `layer.set_weights(mha.get_weights())` works, and with
    `top_k >= N` the output equals Keras MHA's.

    Args:
        num_heads: number of attention heads.
        key_dim: size of each head for query and key.
        top_k: keys attended per query; k = min(top_k, N) slots are returned.
        selector: how keys are picked: a name from `sdattn.available_selectors()` (`"dot"`:
            exact per-head top-k, the reference), a config dict, or a `sdattn.Selector`.
        value_dim: size of each head for value; defaults to `key_dim`.
        dropout: dropout rate on the attention weights.
        use_bias: whether the projections have biases.
        output_shape: last dimension(s) of the output, an int or tuple; defaults to the query's
            feature size Dq.
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer,
        activity_regularizer, kernel_constraint, bias_constraint: as for Keras MHA.
        seed: seed for the dropout.
        fast_paths: let the layer pick the cheapest exact way to attend (see `sdattn.plan`):
            fold the key and value kernels into the query side for a shared selection, reuse
            the selector's scores as logits when they are (`dot`), and rank exact top-k with
            the compiled CPU kernel. False always projects the selected keys and values and
            calls `_compute_attention`, in `keras.ops` only (like Keras's `flash_attention=False`):
            for debugging, exporting a graph, or comparing paths. The outputs are the same.
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Overriding attention: a subclass may override `_compute_attention(query, selected_key,
    selected_value, slot_valid, bias=None, training=None)`, the one override point, as in Keras
    MHA. The layer then always takes the standard path, so the override sees every call.

    Call arguments:
        query: sparse (TensorFlow `SparseTensor` / JAX `BCOO`) or dense `[B, M, Dq]`.
        value: dense `[B, N, Dv]`.
        key: dense `[B, N, Dk]`; defaults to `value`.
        query_mask: bool `[B, M]`, False for padded queries (taken from `query._keras_mask`
            when not given).
        value_mask: bool `[B, N]`, False for padded tokens (or `value._keras_mask`).
        key_mask: bool `[B, N]` (or `key._keras_mask`).
        attention_mask: bool `[M, N]`, `[B, M, N]` or `[B, H, M, N]`; True means "may attend".
        return_attention_scores: also return the scores and the selected indices.
        training: Keras training flag (dropout).
        use_causal_mask: query i may attend only to keys j <= i.
        top_k: keys attended per query in this call, instead of the layer's `top_k` (a
            Python int; None: the layer's). The weights do not depend on k, so one layer
            serves a sweep over k (`sdattn.comparison`'s k-sweep does); in a traced function
            each value traces its own graph.

    Returns:
        output `[B, M, *output_shape]`, carrying the query mask; with
        `return_attention_scores=True`, `(output, scores, indices)`: scores `[B, H, M, k]` are
        the softmax weights over the selected slots (0 on invalid slots) and indices
        `[B, H, M, k]` int32 the key position of each slot, or -1 for an invalid slot (fewer
        allowed keys than k, or a masked query row). A query with no allowed key gets a zero
        context, never NaN.
    """

    def __init__(self, num_heads, key_dim, top_k, selector="dot", value_dim=None, dropout=0.0,
                 use_bias=True, output_shape=None, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None,
                 seed=None, fast_paths=True, **kwargs):
        num_heads = arguments.positive_int("num_heads", num_heads)
        key_dim = arguments.positive_int("key_dim", key_dim)
        top_k = arguments.positive_int("top_k", top_k)
        value_dim = arguments.positive_int("value_dim", value_dim, allow_none=True)
        dropout = arguments.real("dropout", dropout, low=0, high=1, high_inclusive=False)
        output_shape = _output_shape_tuple(output_shape)
        fast_paths = arguments.boolean("fast_paths", fast_paths)
        resolved_selector = selectors_lib.get(selector)
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.supports_masking = True
        self._num_heads = num_heads
        self._key_dim = key_dim
        self._value_dim = value_dim or key_dim
        self._top_k = top_k
        self._dropout = float(dropout)
        self._use_bias = use_bias
        self._output_shape = output_shape
        self._kernel_initializer = initializers.get(kernel_initializer)
        self._bias_initializer = initializers.get(bias_initializer)
        self._kernel_regularizer = regularizers.get(kernel_regularizer)
        self._bias_regularizer = regularizers.get(bias_regularizer)
        self._kernel_constraint = constraints.get(kernel_constraint)
        self._bias_constraint = constraints.get(bias_constraint)
        self.seed = seed
        self._fast_paths = fast_paths
        # Assigned without Keras tracking until `build`, so that the selector's own weights
        # come after the eight attention weights, as `mha.get_weights() + extra` expects.
        object.__setattr__(self, "_pending_selector", resolved_selector)

    num_heads = property(lambda self: self._num_heads)
    key_dim = property(lambda self: self._key_dim)
    value_dim = property(lambda self: self._value_dim)
    top_k = property(lambda self: self._top_k)
    dropout = property(lambda self: self._dropout)
    use_bias = property(lambda self: self._use_bias)
    fast_paths = property(lambda self: self._fast_paths)

    @property
    def selector(self):
        """The `Selector` instance in use."""
        return getattr(self, "_selector", None) or self._pending_selector

    def _sublayer_kwargs(self):
        # Fresh initializer clones per sublayer, as Keras MHA does, so kernels differ.
        return dict(
            kernel_initializer=self._kernel_initializer.__class__.from_config(self._kernel_initializer.get_config()),
            bias_initializer=self._bias_initializer.__class__.from_config(self._bias_initializer.get_config()),
            kernel_regularizer=self._kernel_regularizer,
            bias_regularizer=self._bias_regularizer,
            kernel_constraint=self._kernel_constraint,
            bias_constraint=self._bias_constraint,
            dtype=self.dtype_policy,
        )

    def _projection(self, name, heads_dim):
        return keras.layers.EinsumDense(
            "abc,cde->abde", output_shape=(None, self._num_heads, heads_dim),
            bias_axes="de" if self._use_bias else None, name=name, **self._sublayer_kwargs())

    def build(self, query_shape, value_shape, key_shape=None):
        """Creates the Q/K/V/O projections (MHA's shapes and order), then the selector's weights."""
        key_shape = value_shape if key_shape is None else key_shape
        query_shape, value_shape, key_shape = tuple(query_shape), tuple(value_shape), tuple(key_shape)
        self._check_ranks(query_shape, value_shape, key_shape)
        self._query_dense = self._projection("query", self._key_dim)
        self._query_dense.build(query_shape)
        self._key_dense = self._projection("key", self._key_dim)
        self._key_dense.build(key_shape)
        self._value_dense = self._projection("value", self._value_dim)
        self._value_dense.build(value_shape)
        output_shape = self._output_shape or (query_shape[-1],)
        output_letters = "fgh"[: len(output_shape)]
        self._output_dense = keras.layers.EinsumDense(
            f"abcd,cd{output_letters}->ab{output_letters}",
            output_shape=(None,) + tuple(output_shape),
            bias_axes=output_letters if self._use_bias else None,
            name="attention_output", **self._sublayer_kwargs())
        self._output_dense.build((query_shape[0], query_shape[1], self._num_heads, self._value_dim))
        self._dropout_layer = keras.layers.Dropout(rate=self._dropout, seed=self.seed, dtype=self.dtype_policy)
        self._selector = self._pending_selector
        if not self._selector.built:  # a loaded model may have built it from its own config
            self._selector.build(query_shape, key_shape, self._num_heads, self._key_dim)
        self.built = True

    @staticmethod
    def _check_ranks(query_shape, value_shape, key_shape):
        if len(query_shape) != 3:
            raise ValueError(
                "Argument `query` must have rank 3, [batch, queries, features]. "
                f"Received: query.shape={query_shape}")
        for name, shape in (("value", value_shape), ("key", key_shape)):
            if len(shape) != 3:
                raise ValueError(
                    f"Argument `{name}` must have rank 3, [batch, tokens, features]. "
                    f"Received: {name}.shape={shape}")
        if value_shape[1] is not None and key_shape[1] is not None and value_shape[1] != key_shape[1]:
            raise ValueError(
                "Arguments `key` and `value` must have the same number of tokens. "
                f"Received: key.shape={key_shape}, value.shape={value_shape}")
        batch_sizes = {s[0] for s in (query_shape, value_shape, key_shape) if s[0] is not None}
        if len(batch_sizes) > 1:
            raise ValueError(
                "Arguments `query`, `value` and `key` must have the same batch size. "
                f"Received: query.shape={query_shape}, value.shape={value_shape}, key.shape={key_shape}")

    # ---- call ---------------------------------------------------------------------------

    def call(self, query, value, key=None, query_mask=None, value_mask=None, key_mask=None,
             attention_mask=None, return_attention_scores=False, training=None,
             use_causal_mask=False, top_k=None):
        top_k = self._call_top_k(top_k)
        if key is None:
            key = value
        if query_mask is None:
            query_mask = getattr(query, "_keras_mask", None)
        for tensor in (query, value, key):
            if not _is_sparse(tensor) and getattr(tensor, "_keras_mask", None) is not None:
                set_keras_mask(tensor, None)
        query, value, key = self._standardize_inputs(query, value, key)
        mask = self._attention_mask(query, value, query_mask, value_mask, key_mask,
                                    attention_mask, use_causal_mask)
        plan = self.attention_plan(query, value, key, mask, training, top_k=top_k)
        projected_query = self._project_query(query)  # [B, M, H, kd]
        projected_query = projected_query * ops.cast(self._key_dim ** -0.5, projected_query.dtype)
        context = selectors_lib.SelectionContext(
            query=query, key=key, projected_query=projected_query,
            project_key=lambda: self._key_dense(key), mask=mask, num_heads=self._num_heads,
            training=training, cpu_top_k=plan.cpu_top_k)
        indices, slot_valid, slot_logits = self._select(context, plan)  # [B, S, M, k] each
        if plan.waits_for_selection:
            projected_query = backend.after([indices], projected_query)
        bias = self.selector.attention_bias(context, ops.where(slot_valid, indices, 0))
        if plan.path == plan_lib.FOLDED:
            attention_output, scores = self._attend_folded(
                projected_query, key, value, indices, slot_valid, bias, training, plan.compiled_folding)
        elif plan.path == plan_lib.REUSED_LOGITS:
            scores, weights = self._slot_weights(slot_logits, slot_valid, bias, training)  # [B, S, M, k] each
            if plan.mixes_raw_values:
                attention_output = self._attend_mixed(value, indices, weights)  # [B, M, H, vd]
            else:
                selected_value = self._selected_tokens(value, self._value_dense, indices, plan)  # [B, H, M, k, vd]
                attention_output = ops.einsum("bhmk,bhmkd->bmhd", weights, selected_value)  # [B, M, H, vd]
        else:
            selected_key = self._selected_keys(context, key, indices, plan)  # [B, H, M, k, kd]
            selected_value = self._selected_tokens(value, self._value_dense, indices, plan)  # [B, H, M, k, vd]
            attention_output, scores = self._compute_attention(
                projected_query, selected_key, selected_value, slot_valid, bias, training)
        output = self._output_dense(attention_output)  # [B, M, *out]
        if query_mask is not None:
            set_keras_mask(output, ops.cast(query_mask, "bool"))
        if not return_attention_scores:
            return output
        indices = ops.broadcast_to(ops.where(slot_valid, indices, -1), backend.dynamic_shape(scores))  # [B, H, M, k]
        return output, scores, indices

    def attention_plan(self, query, value, key=None, mask=None, training=None, top_k=None):
        """The `sdattn.plan.AttentionPlan` a call on inputs of these shapes follows.

        Args:
            query: `[B, M, Dq]` sparse or dense (only its static shape is read).
            value: `[B, N, Dv]`; key: `[B, N, Dk]`, defaults to `value`.
            mask: the call's `AttentionMask`, or None (no per-head attention mask).
            training: the Keras training flag.
            top_k: the call's `top_k`; None: the layer's.
        """
        key = value if key is None else key
        return plan_lib.plan_attention(
            num_queries=query.shape[1], num_keys=key.shape[1], key_features=key.shape[-1],
            value_features=value.shape[-1], num_heads=self._num_heads, key_dim=self._key_dim,
            value_dim=self._value_dim, top_k=self._call_top_k(top_k), per_head=self.selector.per_head,
            scores_are_logits=self.selector.scores_are_logits,
            selects_outside_tf=self.selector.selects_outside_tf,
            mask_heads=1 if mask is None else mask.num_mask_heads,
            training=training, eager=backend.executing_eagerly(),
            custom_attention=self._overrides_attention(), fast_paths=self._fast_paths,
            cpu_top_k_available=cpu_top_k.available(),
            compute_dtype=keras.backend.standardize_dtype(self.compute_dtype))

    def _call_top_k(self, top_k):
        """A call's `top_k` argument checked, or the layer's when it is None."""
        return self._top_k if top_k is None else arguments.positive_int("top_k", top_k)

    def _standardize_inputs(self, query, value, key):
        dtype = self.compute_dtype
        tensors = {"value": value, "key": key, "query": query}
        for name, tensor in tensors.items():
            if not _is_sparse(tensor):
                tensors[name] = tensor = ops.convert_to_tensor(tensor)
            if not backend.is_float(tensor):
                raise TypeError(f"Argument `{name}` must be a float tensor. "
                                f"Received: {name}.dtype={keras.backend.standardize_dtype(tensor.dtype)}")
        query, value, key = tensors["query"], tensors["value"], tensors["key"]
        self._check_ranks(tuple(query.shape), tuple(value.shape), tuple(key.shape))
        query = backend.cast_sparse(query, dtype) if _is_sparse(query) else ops.cast(query, dtype)
        return query, ops.cast(value, dtype), ops.cast(key, dtype)

    def _attention_mask(self, query, value, query_mask, value_mask, key_mask, attention_mask,
                        use_causal_mask):
        """Validates the masks and combines them, factored, as Keras MHA does."""
        num_queries = query.shape[1] if query.shape[1] is not None else (
            backend.sparse_dense_shape(query)[1] if _is_sparse(query) else ops.shape(query)[1])
        num_keys = value.shape[1] if value.shape[1] is not None else ops.shape(value)[1]
        batch = query.shape[0]

        def check(name, mask, expected):
            shape = tuple(mask.shape)
            if len(shape) != len(expected) or any(
                    s is not None and e is not None and s != e for s, e in zip(shape, expected)):
                raise ValueError(
                    f"Argument `{name}` has the wrong shape: expected {list(expected)} "
                    f"(None = any). Received: {name}.shape={shape}")

        def as_bool(mask):
            mask = ops.convert_to_tensor(mask)
            return mask if keras.backend.standardize_dtype(mask.dtype) == "bool" else ops.not_equal(mask, 0)

        if query_mask is not None:
            query_mask = as_bool(query_mask)
            check("query_mask", query_mask, (batch, query.shape[1]))
        combined_key_mask = None
        for name, key_side_mask in (("value_mask", value_mask), ("key_mask", key_mask)):
            if key_side_mask is None:
                continue
            key_side_mask = as_bool(key_side_mask)
            check(name, key_side_mask, (batch, value.shape[1]))
            combined_key_mask = key_side_mask if combined_key_mask is None else (
                ops.logical_and(combined_key_mask, key_side_mask))
        if attention_mask is not None:
            attention_mask = as_bool(attention_mask)
            rank = len(attention_mask.shape)
            expected = {2: (query.shape[1], value.shape[1]),
                        3: (batch, query.shape[1], value.shape[1]),
                        4: (batch, self._num_heads, query.shape[1], value.shape[1])}.get(rank)
            if expected is None:
                raise ValueError(
                    "Argument `attention_mask` must have shape [M, N], [B, M, N] or [B, H, M, N]. "
                    f"Received: attention_mask.shape={tuple(attention_mask.shape)}")
            if rank == 4 and attention_mask.shape[1] == 1:
                expected = (batch, 1, query.shape[1], value.shape[1])
            check("attention_mask", attention_mask, expected)
            if rank == 2:
                attention_mask = attention_mask[None, None]  # [1, 1, M, N]
            elif rank == 3:
                attention_mask = attention_mask[:, None]  # [B, 1, M, N]
        return AttentionMask(num_queries, num_keys, query_mask=query_mask, key_mask=combined_key_mask,
                             attention_mask=attention_mask, causal=bool(use_causal_mask))

    def _project_query(self, query):
        """Projects the query into heads: `[B, M, Dq]` → `[B, M, H, kd]`.

        A sparse query goes through a sparse matmul (`sdattn.backend.sparse_matmul`) below
        `budgets.DENSE_PROJECTION_DENSITY` non-zeros, and through a densified copy above,
        whichever is faster at that density; a sparse query larger than
        `budgets.DENSIFY_ELEMENTS` is never densified.
        """
        if not _is_sparse(query):
            return self._query_dense(query)
        if any(size is None for size in query.shape) or math.prod(query.shape) > budgets.DENSIFY_ELEMENTS:
            return self._sparse_projection(query)
        stored = backend.nnz(query)  # a Python int eagerly and on JAX (BCOO's static count)
        size = float(max(math.prod(query.shape), 1))
        density = stored / size if isinstance(stored, int) else ops.cast(stored, "float32") / size
        return backend.density_branch(
            density < budgets.DENSE_PROJECTION_DENSITY,
            lambda: self._sparse_projection(query),
            lambda: self._query_dense(backend.densify(query)),
            (query.shape[0], query.shape[1], self._num_heads, self._key_dim))

    def _sparse_projection(self, query):
        """Sparse×dense projection of a sparse query: `[B, M, Dq]` → `[B, M, H, kd]`."""
        kernel = ops.cast(self._query_dense.kernel, self.compute_dtype)  # [Dq, H, kd]
        query_dim = kernel.shape[0]
        flat_kernel = ops.reshape(kernel, (query_dim, self._num_heads * self._key_dim))  # [Dq, H·kd]
        projected = backend.sparse_matmul(query, flat_kernel)  # [B, M, H·kd]
        batch, num_queries = backend.dynamic_shape(projected)[:2]
        projected = ops.reshape(projected, (batch, num_queries, self._num_heads, self._key_dim))  # [B, M, H, kd]
        if self._use_bias:
            projected = projected + ops.cast(self._query_dense.bias, projected.dtype)
        return projected

    def _overrides_attention(self):
        """Whether a subclass overrides `_compute_attention` (the fast paths then stay off)."""
        return type(self)._compute_attention is not SparseDenseMultiHeadAttention._compute_attention

    def _select(self, context, plan):
        """Runs the selector, then marks slots the mask forbids.

        Returns:
            `(indices, valid, logits)`: indices and valid `[B, S, M, k]` (in-range positions,
            and whether each slot may be attended); logits `[B, S, M, k]`, the selected scores,
            on the `REUSED_LOGITS` path (see `Selector.select_scored`), else None.
        """
        slots, name = plan.slots, type(self.selector).__name__
        if plan.path == plan_lib.REUSED_LOGITS:
            indices, logits = self.selector.select_scored(context, slots)
            if logits is None:
                raise ValueError(f"Selector {name} has `scores_are_logits = True`, so `select_scored` "
                                 "must return the selected logits. Received: logits=None")
        else:
            indices, logits = self.selector.select(context, slots), None
        indices = ops.cast(indices, "int32")  # [B, S, M, k]
        if len(indices.shape) != 4 or indices.shape[-1] not in (None, slots):
            received = tuple(indices.shape)
            raise ValueError(
                f"Selector {name} must return indices of shape [B, S, M, {slots}]. "
                f"Received: shape={received}")
        if indices.shape[1] is not None and indices.shape[1] not in (1, plan.selection_heads):
            raise ValueError(
                f"Selector {name} has `per_head = {self.selector.per_head}`, so it must return "
                f"indices of shape [B, {plan.selection_heads} or 1, M, {slots}]. "
                f"Received: shape={tuple(indices.shape)}")
        num_keys = ops.cast(context.num_keys, "int32")
        in_range = ops.logical_and(indices >= 0, indices < num_keys)
        safe_indices = ops.where(in_range, indices, 0)
        allowed = context.mask.at_slots(safe_indices)
        valid = in_range if allowed is None else ops.logical_and(in_range, allowed)
        # The selection-head count is the plan's, static (1 = shared, H = per head), for
        # `_gather_heads` and the folded path.
        shape = backend.dynamic_shape(safe_indices)
        target = (shape[0], plan.selection_heads, shape[2], shape[3])  # [B, S, M, k]
        static_shape = (None, plan.selection_heads, None, slots)

        def expanded(tensor):
            return backend.ensure_shape(ops.broadcast_to(tensor, target), static_shape)  # [B, S, M, k]

        if logits is not None:
            logits = expanded(ops.cast(logits, self.compute_dtype))
        return expanded(safe_indices), expanded(valid), logits

    def _gather_heads(self, projected, indices):
        """Gathers each head's selected rows: `[B, N, H, d]` at `[B, S, M, k]` → `[B, H, M, k, d]`."""
        batch = backend.dynamic_shape(projected)[0]
        _, _, num_queries, slots = backend.dynamic_shape(indices)
        heads, depth = self._num_heads, projected.shape[-1]
        if indices.shape[1] == 1:
            # Shared selection: gather whole rows once, all heads at a time.
            flat = ops.reshape(indices, (batch, -1))  # [B, M·k]
            rows = backend.gather_batched(projected, flat, 1)  # [B, M·k, H, d]
            rows = ops.reshape(rows, (batch, num_queries, slots, heads, depth))  # [B, M, k, H, d]
            return ops.transpose(rows, (0, 3, 1, 2, 4))  # [B, H, M, k, d]
        by_head = ops.transpose(projected, (0, 2, 1, 3))  # [B, H, N, d]
        flat = ops.reshape(indices, (batch, heads, -1))  # [B, H, M·k]
        rows = backend.gather_batched(by_head, flat, 2)  # [B, H, M·k, d]
        return ops.reshape(rows, (batch, heads, num_queries, slots, depth))  # [B, H, M, k, d]

    def _selected_keys(self, context, key, indices, plan):
        """Projected keys of the selected slots, `[B, H, M, k, kd]`: the selector's projection of
        every key when it made one, else as `_selected_tokens`."""
        if context.has_projected_key:
            return self._gather_heads(context.projected_key, indices)  # [B, H, M, k, kd]
        return self._selected_tokens(key, self._key_dense, indices, plan)  # [B, H, M, k, kd]

    def _selected_tokens(self, tokens, projection, indices, plan):
        """Projected tokens of the selected slots, `[B, H, M, k, d]`: only the selected tokens
        are projected when they are fewer than all N (`plan.project_selected`), else all N once,
        then gathered."""
        if plan.project_selected:
            return self._project_selected(tokens, projection, indices)  # [B, H, M, k, d]
        return self._gather_heads(projection(tokens), indices)  # [B, H, M, k, d]

    def _attend_folded(self, query, key, value, indices, slot_valid, bias=None, training=None,
                       compiled=False):
        """Attention over a shared selection without projecting any key or value token.

        q·(W_K x + b_K) = (W_Kᵀ q)·x + q·b_K, and Σ_j w_j (W_V x_j + b_V) = W_V(Σ_j w_j x_j) +
        b_V Σ_j w_j: folding the kernels into the query side costs H·D per (query, slot) instead
        of projecting every selected token into all heads (D·H·(key_dim + value_dim)), since a
        selected token usually serves one query only. Same maths as `_compute_attention`.

        Args:
            query: projected, scaled query `[B, M, H, kd]`.
            key, value: raw tokens `[B, N, Dk]`, `[B, N, Dv]`.
            indices: in-range shared selection `[B, 1, M, k]`.
            slot_valid: bool `[B, S', M, k]`.
            bias: optional selector logits term.
            training: Keras training flag.
            compiled: the plan's `compiled_folding`: the logits, softmax and mixing run in the
                compiled CPU kernel (`sdattn.folded_attention`), the same numbers up to rounding.

        Returns:
            `(attention_output [B, M, H, vd], scores [B, H, M, k])`.
        """
        batch, _, num_queries, slots = backend.dynamic_shape(indices)
        shared = ops.reshape(indices, (batch, num_queries, slots))  # [B, M, k]
        key_kernel = ops.cast(self._key_dense.kernel, query.dtype)  # [Dk, H, kd]
        offset = None
        if self._use_bias:
            # q·b_K, the same for every slot of a (query, head) row: the softmax ignores it, but
            # it keeps Keras's logits (and the key bias's gradient, zero, defined).
            offset = ops.sum(query * ops.cast(self._key_dense.bias, query.dtype), axis=-1)  # [B, M, H]
        if bias is not None:
            bias = ops.convert_to_tensor(bias)
            bias = ops.reshape(bias, (1,) * (4 - len(bias.shape)) + backend.dynamic_shape(bias))  # [B|1, S|1, M, k]
        values = None if value is key else value

        def in_ops(folded_query, key, values, bias, offset, training=None):
            return self._folded_in_ops(folded_query, key, key if values is None else values, shared,
                                       slot_valid, bias, offset, training)

        if compiled:
            # Head-major: one batched matmul over the heads writes the folded queries and one
            # reads the mixed rows, with no transposes of either (`_apply_value_kernel`).
            folded_query = self._fold_query_heads(query, key_kernel)  # [H, B, M, Dk]
            if bias is not None:
                bias_heads = bias.shape[1] if bias.shape[1] is not None else self._num_heads
                bias = ops.broadcast_to(ops.cast(bias, query.dtype), (batch, bias_heads, num_queries, slots))  # [B, S, M, k]

            def reference(folded_query, key, values, bias, offset):
                by_query = ops.transpose(folded_query, (1, 2, 0, 3))  # [B, M, H, Dk]
                scores, _, mixed_tokens = in_ops(by_query, key, values, bias, offset)
                return scores, ops.transpose(mixed_tokens, (2, 0, 1, 3))  # [H, B, M, Dv]

            scores, mixed_tokens = folded_attention.attend(
                folded_query, key, values, shared, slot_valid, bias, offset, reference)  # [B, M, H, k], [H, B, M, Dv]
            weights = scores  # not while training: no dropout
            bias_term = self._value_bias_term(weights)  # [B, M, H, vd]
            # The small sum first: beside the batched matmul's threads it would slow both.
            attention_output = self._apply_value_kernel(backend.after([bias_term], mixed_tokens))  # [B, M, H, vd]
        else:
            folded_query = ops.einsum("bmhe,dhe->bmhd", query, key_kernel)  # [B, M, H, Dk]
            scores, weights, mixed_tokens = in_ops(folded_query, key, values, bias, offset, training)
            value_kernel = ops.cast(self._value_dense.kernel, query.dtype)  # [Dv, H, vd]
            attention_output = ops.einsum("bmhd,dhe->bmhe", mixed_tokens, value_kernel)  # [B, M, H, vd]
            bias_term = self._value_bias_term(weights)  # [B, M, H, vd]
        if bias_term is not None:
            attention_output = attention_output + bias_term
        return attention_output, ops.transpose(scores, (0, 2, 1, 3))  # [B, H, M, k]

    def _value_bias_term(self, weights, heads_first=False):
        """b_V Σ_j w_j, the value bias's share of each head's output, from its slots' weights.

        Args:
            weights: `[B, M, H, k]`, or `[B, H, M, k]` with `heads_first`.

        Returns:
            `[B, M, H, vd]`, or None without biases.
        """
        if not self._use_bias:
            return None
        weight_sums = ops.sum(weights, axis=-1)  # [B, M, H] (or [B, H, M])
        if heads_first:
            weight_sums = ops.transpose(weight_sums, (0, 2, 1))  # [B, M, H]
        return weight_sums[..., None] * ops.cast(self._value_dense.bias, weights.dtype)

    def _folded_in_ops(self, folded_query, key, value, indices, slot_valid, bias, offset, training):
        """The folded path's logits, softmax and mixing in TF ops (see `_attend_folded`).

        Args:
            folded_query: `[B, M, H, Dk]`.
            key, value: raw tokens `[B, N, Dk]`, `[B, N, Dv]` (value may be key).
            indices: `[B, M, k]` in-range positions.
            slot_valid: bool `[B, S', M, k]`.
            bias: None or `[B|1, S|1, M, k]`.
            offset: None or `[B, M, H]`, the logits' q·b_K.
            training: Keras training flag.

        Returns:
            `(scores, weights, mixed_tokens)`: `[B, M, H, k]` twice (weights after dropout),
            and `[B, M, H, Dv]`.
        """
        batch, num_queries, slots = backend.dynamic_shape(indices)
        flat = ops.reshape(indices, (batch, -1))  # [B, M·k]
        selected_keys = backend.gather_batched(key, flat, 1)  # [B, M·k, Dk]
        selected_keys = ops.reshape(selected_keys, (batch, num_queries, slots, key.shape[-1]))  # [B, M, k, Dk]
        # Rows stay [B, M, H, k] until the end: one batched matmul per query, no transposes.
        logits = ops.matmul(folded_query, ops.swapaxes(selected_keys, -1, -2))  # [B, M, H, k]
        if offset is not None:
            logits = logits + offset[..., None]  # [B, M, H, 1]
        by_query = (0, 2, 1, 3)  # [B, H, M, k] ↔ [B, M, H, k]
        slot_valid = ops.transpose(slot_valid, by_query)  # [B, M, S', k]
        if bias is not None:
            bias = ops.transpose(bias, by_query)  # [B, M, S', k]
        scores, weights = self._slot_weights(logits, slot_valid, bias, training)  # [B, M, H, k] each
        if value is key:
            selected_values = selected_keys  # [B, M, k, Dv]
        else:
            selected_values = backend.gather_batched(value, flat, 1)  # [B, M·k, Dv]
            selected_values = ops.reshape(selected_values, (batch, num_queries, slots, value.shape[-1]))  # [B, M, k, Dv]
        mixed_tokens = ops.matmul(weights, selected_values)  # [B, M, H, Dv]
        return scores, weights, mixed_tokens

    def _attend_mixed(self, value, indices, weights):
        """The reused-logits path's attention output without projecting any value token.

        Σ_j w_j (W_V x_j + b_V) = W_V (Σ_j w_j x_j) + b_V Σ_j w_j: each (query, head)'s selected
        raw rows are summed by the compiled CPU kernel (`sdattn.value_mixing`), then the value
        kernel is applied to one sum per (query, head). Same maths as the gather-and-einsum
        path, up to rounding.

        Args:
            value: raw tokens `[B, N, Dv]`.
            indices: in-range selection `[B, S, M, k]`.
            weights: the slots' attention weights `[B, S, M, k]`, zero at invalid slots.

        Returns:
            `[B, M, H, vd]`.
        """
        batch, _, num_queries, slots = backend.dynamic_shape(indices)
        per_head = (batch, self._num_heads, num_queries, slots)  # [B, H, M, k]
        indices = ops.broadcast_to(indices, per_head)
        weights = ops.broadcast_to(weights, per_head)
        bias_term = self._value_bias_term(weights, heads_first=True)  # [B, M, H, vd]
        # The kernel's threads take every core: a TF op left to run beside them (this small bias
        # term) slows both, so it runs first.
        mixed_tokens = value_mixing.mix(value, indices, backend.after([bias_term], weights))  # [H, B, M, Dv]
        attention_output = self._apply_value_kernel(mixed_tokens)  # [B, M, H, vd]
        return attention_output if bias_term is None else attention_output + bias_term

    def _fold_query_heads(self, query, key_kernel):
        """Each head's query with the key kernel folded in, head-major:
        `[B, M, H, kd]` → `[H, B, M, Dk]`, W_K,h q_h per (query, head)."""
        batch, num_queries = backend.dynamic_shape(query)[:2]
        heads = ops.transpose(query, (2, 0, 1, 3))  # [H, B, M, kd]
        heads = ops.reshape(heads, (self._num_heads, -1, self._key_dim))  # [H, B·M, kd]
        folded = ops.matmul(heads, ops.transpose(key_kernel, (1, 2, 0)))  # [H, B·M, Dk]
        return ops.reshape(folded, (self._num_heads, batch, num_queries, key_kernel.shape[0]))  # [H, B, M, Dk]

    def _apply_value_kernel(self, mixed_tokens):
        """The value kernel applied to head-major mixed raw rows: `[H, B, M, Dv]` → `[B, M, H, vd]`.

        One batched matmul over the heads reads the sums where the kernels wrote them; an einsum
        of `[B, M, H, Dv]` sums would first transpose them (8 MB on Config P), then its output.
        """
        heads, batch, num_queries, depth = backend.dynamic_shape(mixed_tokens)
        value_kernel = ops.cast(self._value_dense.kernel, mixed_tokens.dtype)  # [Dv, H, vd]
        value_kernel = ops.transpose(value_kernel, (1, 0, 2))  # [H, Dv, vd]
        flat = ops.reshape(mixed_tokens, (heads, -1, depth))  # [H, B·M, Dv]
        output = ops.matmul(flat, value_kernel)  # [H, B·M, vd]
        output = ops.reshape(output, (heads, batch, num_queries, self._value_dim))  # [H, B, M, vd]
        return ops.transpose(output, (1, 2, 0, 3))  # [B, M, H, vd]

    def _slot_weights(self, logits, slot_valid, bias=None, training=None):
        """Masked softmax over the slots (the last axis), then dropout: `(scores, weights)`,
        each shaped like `logits` (`[B, H, M, k]`, or `[B, M, H, k]` on the folded path)."""
        if bias is not None:
            logits = logits + ops.cast(bias, logits.dtype)
        slot_valid = ops.broadcast_to(slot_valid, backend.dynamic_shape(logits))
        logits = ops.where(slot_valid, logits, ops.cast(_large_negative_number(logits.dtype), logits.dtype))
        # One slot gets weight 1 (Keras's softmax warns on an axis of size 1).
        scores = ops.softmax(logits, axis=-1) if logits.shape[-1] != 1 else ops.ones_like(logits)
        # A row with no valid slot would be uniform over masked slots; Keras zeroes it, as do we.
        scores = ops.where(slot_valid, scores, ops.zeros_like(scores))
        weights = self._dropout_layer(scores, training=training) if self._dropout > 0 else scores
        return scores, weights

    def _project_selected(self, tokens, projection, indices):
        """Projects only the selected tokens, each distinct (batch, token) once.

        Args:
            tokens: raw dense tokens `[B, N, D]`.
            projection: the key or value `EinsumDense` whose kernel `[D, H, d]` and bias to use.
            indices: in-range positions `[B, S, M, k]`, S = 1 (shared) or H (per head).

        Returns:
            `[B, H, M, k, d]`: each head's projection of each slot's token.
        """
        batch, num_tokens = backend.dynamic_shape(tokens)[:2]
        _, selection_heads, num_queries, slots = backend.dynamic_shape(indices)
        heads, depth = self._num_heads, projection.kernel.shape[-1]
        offsets = ops.arange(batch, dtype=indices.dtype)[:, None, None, None] * ops.cast(num_tokens, indices.dtype)  # [B, 1, 1, 1]
        flat_ids = ops.reshape(indices + offsets, (-1,))  # [B·S·M·k]
        # Each distinct token once on TF; under JAX (static shapes) every slot's own row.
        unique_ids, position = backend.unique(flat_ids)  # [U], [B·S·M·k]
        rows = ops.take(ops.reshape(tokens, (-1, tokens.shape[-1])), unique_ids, axis=0)  # [U, D]
        projected = ops.einsum("ud,dhe->uhe", rows, ops.cast(projection.kernel, rows.dtype))  # [U, H, d]
        if self._use_bias:
            projected = projected + ops.cast(projection.bias, projected.dtype)
        if selection_heads == 1:
            per_slot = ops.take(projected, position, axis=0)  # [B·M·k, H, d]
            per_slot = ops.reshape(per_slot, (batch, num_queries, slots, heads, depth))  # [B, M, k, H, d]
            return ops.transpose(per_slot, (0, 3, 1, 2, 4))  # [B, H, M, k, d]
        # Per-head selection: slot (b, h, m, j) reads head h of its token's projection.
        head_of_slot = ops.reshape(ops.broadcast_to(ops.arange(heads, dtype=position.dtype)[None, :, None, None],
                                                    backend.dynamic_shape(indices)), (-1,))  # [B·H·M·k]
        per_slot = ops.take(ops.reshape(projected, (-1, depth)), position * heads + head_of_slot, axis=0)  # [B·H·M·k, d]
        return ops.reshape(per_slot, (batch, heads, num_queries, slots, depth))  # [B, H, M, k, d]

    def _compute_attention(self, query, selected_key, selected_value, slot_valid, bias=None,
                           training=None):
        """Scaled dot-product attention over the selected slots; the one override point.

        Args:
            query: projected, already scaled query `[B, M, H, kd]`.
            selected_key: `[B, H, M, k, kd]` projected keys of each query's slots.
            selected_value: `[B, H, M, k, vd]` projected values of the same slots.
            slot_valid: bool broadcastable to `[B, H, M, k]`; False slots get weight 0.
            bias: optional additive logits term broadcastable to `[B, H, M, k]` (from the selector).
            training: Keras training flag, for dropout.

        Returns:
            `(attention_output [B, M, H, vd], scores [B, H, M, k])`.
        """
        logits = ops.einsum("bmhd,bhmkd->bhmk", query, selected_key)  # [B, H, M, k]
        scores, weights = self._slot_weights(logits, slot_valid, bias, training)
        attention_output = ops.einsum("bhmk,bhmkd->bmhd", weights, selected_value)  # [B, M, H, vd]
        return attention_output, scores

    # ---- Keras plumbing -----------------------------------------------------------------

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        query_shape = tuple(query_shape)
        return query_shape[:-1] + (self._output_shape or (query_shape[-1],))

    def compute_output_spec(self, query, value, key=None, query_mask=None, value_mask=None,
                            key_mask=None, attention_mask=None, return_attention_scores=False,
                            training=None, use_causal_mask=False, top_k=None):
        output_spec = keras.KerasTensor(
            self.compute_output_shape(query.shape, value.shape), dtype=self.compute_dtype)
        if not return_attention_scores:
            return output_spec
        num_keys = value.shape[1]
        top_k = self._call_top_k(top_k)
        slots = top_k if num_keys is None else min(top_k, num_keys)
        slot_shape = (query.shape[0], self._num_heads, query.shape[1], slots)
        return (output_spec, keras.KerasTensor(slot_shape, dtype=self.compute_dtype),
                keras.KerasTensor(slot_shape, dtype="int32"))

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_heads": self._num_heads,
            "key_dim": self._key_dim,
            "top_k": self._top_k,
            "selector": selectors_lib.serialize(self.selector),
            "value_dim": self._value_dim,
            "dropout": self._dropout,
            "use_bias": self._use_bias,
            "output_shape": self._output_shape,
            "kernel_initializer": initializers.serialize(self._kernel_initializer),
            "bias_initializer": initializers.serialize(self._bias_initializer),
            "kernel_regularizer": regularizers.serialize(self._kernel_regularizer),
            "bias_regularizer": regularizers.serialize(self._bias_regularizer),
            "activity_regularizer": regularizers.serialize(self.activity_regularizer),
            "kernel_constraint": constraints.serialize(self._kernel_constraint),
            "bias_constraint": constraints.serialize(self._bias_constraint),
            "seed": self.seed,
            "fast_paths": self._fast_paths,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["selector"] = selectors_lib.get(config["selector"])
        return cls(**config)
