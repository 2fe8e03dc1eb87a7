"""Inputs for sdattn: the `Example` container, synthetic generators, file loaders and validation.

Every loading or validation failure raises `InputError`; nothing is ever unpickled.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import io
import json
import math
import os
import pathlib
import re
import warnings
import zipfile
from dataclasses import field
from typing import Any, Callable

import numpy as np
import scipy.sparse

__all__ = [
    "Budget",
    "Example",
    "InputError",
    "InputWarning",
    "available_generators",
    "generate_inputs",
    "generator_defaults",
    "generator_descriptions",
    "load_inputs",
    "save_inputs",
    "validate_example",
]

BUNDLE_FORMAT = "sdattn.bundle"
BUNDLE_VERSION = 1

# Keys generated for query-only files: Gaussian, with a fixed seed so the same file gives the same run.
GENERATED_KEYS_SEED = 0
GENERATED_KEYS_COUNT = 64

# Loaded files get default "q0".."k0" labels only up to this many rows: beyond it the label list
# would cost more memory than the arrays it describes, and no view can show that many anyway.
DEFAULT_LABEL_LIMIT = 100_000

# A .npz with more members than this is not a bundle or a scipy matrix; refusing it bounds the work.
_MAX_NPZ_MEMBERS = 1_000
_EXTRA_NAME = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_NUMERIC_KINDS = "biuf"


class InputError(ValueError):
    """A file or example that sdattn cannot use.

    The message says what was wrong, where (file, array, row or line) and what was expected, so a
    person can fix the input. It is a `ValueError`, so generic handlers still catch it.
    """


class InputWarning(UserWarning):
    """An input was accepted after a conversion the user should know about (e.g. dense → sparse)."""


@dataclasses.dataclass(frozen=True)
class Budget:
    """Size limits checked from file headers before anything is allocated.

    Args:
        max_nonzeros: most stored entries of the sparse query (default 5,000,000).
        max_dense_floats: most elements of any dense array: the keys `[B, N, D]`, a dense query
            file, the masks `[B, M]`, or the feature size `Dq` (default 50,000,000, i.e. 200 MB of
            float32).
    """

    max_nonzeros: int = 5_000_000
    max_dense_floats: int = 50_000_000

    def __post_init__(self):
        for name in ("max_nonzeros", "max_dense_floats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"Received an invalid value for argument `{name}`, expected a positive "
                    f"integer. Received: {name}={value!r}"
                )


DEFAULT_BUDGET = Budget()


# ----------------------------------------------------------------------------------------------
# The Example container
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Example:
    """One sparse-dense attention input: sparse queries, dense keys/values, masks, labels, truth.

    The sparse query is stored in canonical COO form: `query_indices` rows `(b, m, d)` sorted
    row-major without duplicates, with matching `query_values`. This is the layout of a reordered
    `tf.SparseTensor`, so `to_sparse_tensor()` needs no copy of the index logic.

    Args:
        query_indices: int64 `[nnz, 3]`, rows `(b, m, d)`.
        query_values: float32 `[nnz]`.
        query_shape: `(B, M, Dq)` as Python ints.
        value: float32 `[B, N, D]` dense key/value tokens.
        query_mask: bool `[B, M]`, True marks a valid query.
        value_mask: bool `[B, N]`, True marks a valid key.
        query_labels: optional M strings naming the query rows.
        key_labels: optional N strings naming the keys.
        ground_truth: optional int32 `[B, M, G]`, the relevant key positions of each query,
            padded with -1.
        metadata: JSON-serialisable dict; generated examples carry `generator`, `params`, `seed`
            and `source`, enough to reproduce them with `generate_inputs`.
    """

    query_indices: np.ndarray
    query_values: np.ndarray
    query_shape: tuple
    value: np.ndarray
    query_mask: np.ndarray
    value_mask: np.ndarray
    query_labels: list[str] | None = None
    key_labels: list[str] | None = None
    ground_truth: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        # Shapes arrive as numpy ints or TensorShapes; JSON and comparisons want plain ints.
        self.query_shape = tuple(int(size) for size in self.query_shape)

    @property
    def batch_size(self) -> int:
        """B, the number of batch items."""
        return self.query_shape[0]

    @property
    def num_queries(self) -> int:
        """M, the number of (padded) query rows per batch item."""
        return self.query_shape[1]

    @property
    def num_keys(self) -> int:
        """N, the number of (padded) dense key/value tokens per batch item."""
        return int(self.value.shape[1])

    @property
    def query_dim(self) -> int:
        """Dq, the feature size of the sparse queries."""
        return self.query_shape[2]

    @property
    def value_dim(self) -> int:
        """D, the feature size of the dense keys/values."""
        return int(self.value.shape[2])

    @property
    def nnz(self) -> int:
        """The number of stored query entries."""
        return int(self.query_values.shape[0])

    @property
    def density(self) -> float:
        """Stored query entries over all `B * M * Dq` positions."""
        total = self.batch_size * self.num_queries * self.query_dim
        return self.nnz / total if total else 0.0

    def to_sparse_tensor(self):
        """The query as a `tf.SparseTensor`.

        Returns:
            A reordered float32 `tf.SparseTensor` of dense shape `[B, M, Dq]`.
        """
        import tensorflow as tf  # Imported here so that loading data never pays for TensorFlow.

        sparse = tf.SparseTensor(
            indices=np.asarray(self.query_indices, dtype=np.int64),
            values=np.asarray(self.query_values, dtype=np.float32),
            dense_shape=np.asarray(self.query_shape, dtype=np.int64),
        )
        return tf.sparse.reorder(sparse)

    def to_scipy(self, batch_index: int = 0) -> scipy.sparse.csr_matrix:
        """One batch item's queries as a scipy CSR matrix.

        Args:
            batch_index: which batch item (negative counts from the end).

        Returns:
            float32 `csr_matrix` of shape `[M, Dq]`.
        """
        batch_index = self._batch_position(batch_index)
        start, stop = np.searchsorted(self.query_indices[:, 0], [batch_index, batch_index + 1])
        rows = self.query_indices[start:stop]
        return scipy.sparse.csr_matrix(
            (self.query_values[start:stop].astype(np.float32), (rows[:, 1], rows[:, 2])),
            shape=(self.num_queries, self.query_dim),
        )

    def dense_query(self) -> np.ndarray:
        """The queries as a dense array.

        Returns:
            float32 `[B, M, Dq]`, zero where nothing is stored.
        """
        dense = np.zeros(self.query_shape, dtype=np.float32)
        rows = self.query_indices
        dense[rows[:, 0], rows[:, 1], rows[:, 2]] = self.query_values
        return dense

    def item(self, batch_index: int) -> "Example":
        """A single batch item as its own example.

        Args:
            batch_index: which batch item (negative counts from the end).

        Returns:
            An `Example` with B=1; labels are shared, metadata is copied and records
            `batch_index`.
        """
        batch_index = self._batch_position(batch_index)
        start, stop = np.searchsorted(self.query_indices[:, 0], [batch_index, batch_index + 1])
        indices = self.query_indices[start:stop].copy()
        indices[:, 0] = 0
        metadata = copy.deepcopy(self.metadata)
        metadata["batch_index"] = batch_index
        return Example(
            query_indices=indices,
            query_values=self.query_values[start:stop].copy(),
            query_shape=(1, self.num_queries, self.query_dim),
            value=self.value[batch_index : batch_index + 1].copy(),
            query_mask=self.query_mask[batch_index : batch_index + 1].copy(),
            value_mask=self.value_mask[batch_index : batch_index + 1].copy(),
            query_labels=None if self.query_labels is None else list(self.query_labels),
            key_labels=None if self.key_labels is None else list(self.key_labels),
            ground_truth=(
                None
                if self.ground_truth is None
                else self.ground_truth[batch_index : batch_index + 1].copy()
            ),
            metadata=metadata,
        )

    def _batch_position(self, batch_index: int) -> int:
        position = int(batch_index)
        if position < 0:
            position += self.batch_size
        if not 0 <= position < self.batch_size:
            raise IndexError(
                f"batch_index {batch_index} is out of range for batch size {self.batch_size}"
            )
        return position


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def validate_example(
    example: Example, *, require_equal_dims: bool = False, budget: Budget | None = None
) -> Example:
    """Check that an example is complete and consistent; raise `InputError` naming the problem.

    Args:
        example: the example to check.
        require_equal_dims: also require `Dq == D`, as strategies that compare raw query and key
            rows (e.g. cosine) need.
        budget: optional size limits to enforce as well.

    Returns:
        The same example, so calls can be chained.

    Raises:
        InputError: the first problem found, with the array and position.
    """
    if not isinstance(example, Example):
        raise InputError(f"expected an sdattn Example; received {type(example).__name__}")
    shape = example.query_shape
    if len(shape) != 3 or any(size < 1 for size in shape):
        raise InputError(
            f"query_shape {shape} is invalid; expected three positive sizes (B, M, Dq)"
        )
    batch_size, num_queries, query_dim = shape
    indices = _checked_array(example.query_indices, "query_indices", "iu", ndim=2)
    if indices.shape[1] != 3:
        raise InputError(
            f"query_indices has shape {indices.shape}; expected [nnz, 3] rows (b, m, d)"
        )
    values = _checked_array(example.query_values, "query_values", "f", ndim=1)
    if values.shape[0] != indices.shape[0]:
        raise InputError(
            f"query_values has {values.shape[0]} entries but query_indices has "
            f"{indices.shape[0]} rows; expected one value per index row"
        )
    _check_finite(values, "query_values")
    _check_index_range(indices, shape, "query_indices", ("b", "m", "d"))
    if indices.shape[0] > 1:
        order = _first_nonzero_difference(indices)
        bad = np.flatnonzero(order <= 0)
        if bad.size:
            row = int(bad[0]) + 1
            problem = "repeats" if order[bad[0]] == 0 else "comes before"
            raise InputError(
                f"query_indices row {row} {tuple(int(x) for x in indices[row])} {problem} "
                f"row {row - 1}; expected canonical COO: rows sorted by (b, m, d), no duplicates"
            )
    value = _checked_array(example.value, "value", "f", ndim=3)
    if value.shape[0] != batch_size:
        raise InputError(
            f"value has batch size {value.shape[0]} but the query has {batch_size}; "
            "expected the same B"
        )
    if value.shape[1] < 1 or value.shape[2] < 1:
        raise InputError(f"value has shape {value.shape}; expected at least one key and feature")
    _check_finite(value, "value")
    num_keys, value_dim = value.shape[1], value.shape[2]
    for name, expected in (
        ("query_mask", (batch_size, num_queries)),
        ("value_mask", (batch_size, num_keys)),
    ):
        mask = _checked_array(getattr(example, name), name, "b", ndim=2)
        if mask.shape != expected:
            raise InputError(f"{name} has shape {mask.shape}; expected {list(expected)}")
    for name, expected in (("query_labels", num_queries), ("key_labels", num_keys)):
        labels = getattr(example, name)
        if labels is None:
            continue
        if isinstance(labels, (str, bytes)) or not all(isinstance(label, str) for label in labels):
            raise InputError(f"{name} must be a list of strings")
        if len(labels) != expected:
            raise InputError(f"{name} has {len(labels)} entries; expected {expected}")
    if example.ground_truth is not None:
        truth = _checked_array(example.ground_truth, "ground_truth", "iu", ndim=3)
        if truth.shape[:2] != (batch_size, num_queries):
            raise InputError(
                f"ground_truth has shape {truth.shape}; expected [B={batch_size}, "
                f"M={num_queries}, G]"
            )
        bad = np.argwhere((truth < -1) | (truth >= num_keys))
        if bad.size:
            position = tuple(int(x) for x in bad[0])
            raise InputError(
                f"ground_truth{list(position)} = {int(truth[position])}; expected a key "
                f"position in [0, {num_keys}) or -1 for padding"
            )
    if not isinstance(example.metadata, dict):
        raise InputError("metadata must be a dict")
    if require_equal_dims and query_dim != value_dim:
        raise InputError(
            f"the query feature size Dq={query_dim} differs from the key feature size "
            f"D={value_dim}; the chosen strategy compares raw query and key rows, so it "
            "expects Dq == D (use a projecting strategy such as 'dot', or matching keys)"
        )
    if budget is not None:
        _check_limit(values.shape[0], budget.max_nonzeros, "the query", "non-zeros", "max_nonzeros")
        _check_limit(value.size, budget.max_dense_floats, "value", "dense floats", "max_dense_floats")
        _check_limit(batch_size * num_queries, budget.max_dense_floats, "the query", "rows (B*M)",
                     "max_dense_floats")
        _check_limit(query_dim, budget.max_dense_floats, "the query", "features (Dq)",
                     "max_dense_floats")
    return example


def _checked_array(array, name: str, kinds: str, *, ndim: int) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise InputError(f"{name} is a {type(array).__name__}; expected a numpy array")
    if array.dtype.kind not in kinds:
        raise InputError(f"{name} has dtype {array.dtype}; expected {_kinds_for_message(kinds)}")
    if array.ndim != ndim:
        raise InputError(f"{name} has {array.ndim} dimensions (shape {array.shape}); expected {ndim}")
    return array


def _check_finite(array: np.ndarray, where: str):
    finite = np.isfinite(array)
    if finite.all():
        return
    position = [int(x) for x in np.argwhere(~finite)[0]]
    raise InputError(
        f"{where}: entry {position} is {array[tuple(position)]}; expected finite numbers "
        "(no NaN or Inf)"
    )


def _check_index_range(indices: np.ndarray, shape, where: str, column_names):
    for column, (size, name) in enumerate(zip(shape, column_names)):
        column_values = indices[:, column]
        bad = np.flatnonzero((column_values < 0) | (column_values >= size))
        if bad.size:
            row = int(bad[0])
            raise InputError(
                f"{where} row {row}: {name} index {int(column_values[row])} is out of range; "
                f"expected 0 <= {name} < {size}"
            )


def _first_nonzero_difference(indices: np.ndarray) -> np.ndarray:
    # Compare consecutive rows lexicographically without building a linear index that could overflow.
    steps = np.diff(indices.astype(np.int64), axis=0)
    return np.where(steps[:, 0] != 0, steps[:, 0], np.where(steps[:, 1] != 0, steps[:, 1], steps[:, 2]))


def _check_limit(count: int, limit: int, where: str, what: str, setting: str):
    if count > limit:
        raise InputError(
            f"{where} has {count:,} {what}, over the budget of {limit:,}; expected a smaller "
            f"input, or raise Budget.{setting}"
        )


# ----------------------------------------------------------------------------------------------
# Shared construction helpers
# ----------------------------------------------------------------------------------------------


def _default_labels(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{position}" for position in range(count)]


def _canonical_coo(indices: np.ndarray, values: np.ndarray, where: str):
    """Sort COO rows (b, m, d) and sum duplicates, as scipy does for COO input.

    Returns:
        (int64 indices, float32 values, number of duplicate rows merged).
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1, 3)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.lexsort((indices[:, 2], indices[:, 1], indices[:, 0]))
    indices, values = indices[order], values[order]
    merged = 0
    if indices.shape[0] > 1:
        starts = np.concatenate([[True], _first_nonzero_difference(indices) != 0])
        merged = int(indices.shape[0] - np.count_nonzero(starts))
        if merged:
            group_starts = np.flatnonzero(starts)
            values = np.add.reduceat(values, group_starts)
            indices = indices[group_starts]
    return indices, _to_float32(values, where), merged


def _to_float32(array: np.ndarray, where: str) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        converted = np.asarray(array).astype(np.float32)
    finite = np.isfinite(converted)
    if not finite.all():
        position = tuple(int(x) for x in np.argwhere(~finite)[0])
        original = np.asarray(array)[position]
        reason = "overflows float32" if np.isfinite(original) else f"is {original}"
        raise InputError(
            f"{where} entry {list(position)} {reason}; expected finite float32 numbers "
            "(no NaN or Inf)"
        )
    return converted


def _make_example(
    indices, values, shape, value, *, query_mask=None, value_mask=None, query_labels=None,
    key_labels=None, ground_truth=None, metadata=None,
) -> Example:
    batch_size, num_queries, _ = shape
    num_keys = value.shape[1]
    return Example(
        query_indices=np.ascontiguousarray(indices, dtype=np.int64),
        query_values=np.ascontiguousarray(values, dtype=np.float32),
        query_shape=tuple(shape),
        value=np.ascontiguousarray(value, dtype=np.float32),
        query_mask=(
            np.ones((batch_size, num_queries), dtype=bool) if query_mask is None else query_mask
        ),
        value_mask=np.ones((batch_size, num_keys), dtype=bool) if value_mask is None else value_mask,
        query_labels=query_labels,
        key_labels=key_labels,
        ground_truth=ground_truth,
        metadata=metadata or {},
    )


def _sparse_rows_from_dense(dense: np.ndarray):
    """COO parts of a dense [B, M, Dq] array; np.nonzero's C order is already canonical."""
    indices = np.stack(np.nonzero(dense), axis=1).astype(np.int64)
    return indices, dense[tuple(indices.T)].astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------------------------

_GENERATORS: dict[str, Callable[..., Example]] = {}


def _generator(kind: str):
    def register(function):
        _GENERATORS[kind] = function
        return function

    return register


def available_generators() -> list[str]:
    """The kinds accepted by `generate_inputs`.

    Returns:
        Generator names, in the order the app lists them.
    """
    return list(_GENERATORS)


def generator_descriptions() -> dict[str, str]:
    """One line per generator kind, for menus and tooltips.

    Returns:
        `{kind: description}` in the order of `available_generators()`.
    """
    return {kind: _summary_line(function) for kind, function in _GENERATORS.items()}


def generator_defaults(kind: str) -> dict[str, Any]:
    """The parameters of one generator kind with their default values.

    Args:
        kind: a name from `available_generators()`.

    Returns:
        `{parameter: default}`, JSON-serialisable, in signature order.
    """
    function = _generator_function(kind)
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if name != "rng"
    }


def generate_inputs(kind: str, *, seed: int = 0, **params) -> Example:
    """Make a synthetic example; the same kind, seed and parameters always give the same arrays.

    Args:
        kind: one of `available_generators()`; see each `_generate_<kind>` docstring (also
            `generator_descriptions()`) for its parameters.
        seed: non-negative integer seed.
        **params: parameters of that kind; unspecified ones take `generator_defaults(kind)`.

    Returns:
        An `Example` with labels on both axes and `metadata = {"generator", "params", "seed",
        "source"}`.

    Raises:
        InputError: unknown kind, unknown parameter, or a parameter value out of range.
    """
    function = _generator_function(kind)
    defaults = generator_defaults(kind)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise InputError(
            f"unknown parameter(s) for generator '{kind}': {', '.join(unknown)}; expected some of "
            f"{', '.join(defaults)}"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(
            f"Received an invalid value for argument `seed`, expected a non-negative integer. "
            f"Received: seed={seed!r}"
        )
    effective = {**defaults, **params}
    example = function(np.random.default_rng(int(seed)), **effective)
    example.metadata = {
        "generator": kind,
        "params": _json_ready(effective),
        "seed": int(seed),
        "source": "generated",
        **example.metadata,
    }
    return example


def _generator_function(kind: str):
    if kind not in _GENERATORS:
        raise InputError(
            f"unknown generator kind {kind!r}; expected one of {', '.join(_GENERATORS)}"
        )
    return _GENERATORS[kind]


def _summary_line(function) -> str:
    return inspect.getdoc(function).splitlines()[0]


def _json_ready(value):
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _int_param(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(
            f"Received an invalid value for argument `{name}`, expected an integer >= {minimum}. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def _float_param(name: str, value, *, low: float, high: float, low_open: bool = False) -> float:
    valid = (
        not isinstance(value, bool)
        and isinstance(value, (int, float, np.integer, np.floating))
        and math.isfinite(value)
        and (value > low if low_open else value >= low)
        and value <= high
    )
    if not valid:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise InputError(
            f"Received an invalid value for argument `{name}`, expected a number in {interval}. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def _unit_rows(array: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    return array / np.maximum(norms, np.finfo(array.dtype).tiny)


def _random_sparse_rows(rng, batch_size, num_queries, query_dim, density, valid_rows=None):
    """Gaussian sparse rows at `density`, each valid row holding at least one entry."""
    stored = rng.random((batch_size, num_queries, query_dim)) < density
    # A query with no entries attends to nothing meaningful; give every valid row one feature.
    empty = ~stored.any(axis=-1)
    fallback_features = rng.integers(0, query_dim, size=(batch_size, num_queries))
    batch_positions, row_positions = np.nonzero(empty)
    stored[batch_positions, row_positions, fallback_features[batch_positions, row_positions]] = True
    if valid_rows is not None:
        stored &= valid_rows[:, :, None]
    gaussian = rng.standard_normal((batch_size, num_queries, query_dim)).astype(np.float32)
    return _sparse_rows_from_dense(np.where(stored, gaussian, np.float32(0)))


@_generator("random")
def _generate_random(
    rng, batch_size=1, num_queries=8, num_keys=32, query_dim=32, value_dim=16, density=0.1
) -> Example:
    """Random sparse queries at a chosen density, and Gaussian dense tokens.

    Args:
        rng: numpy Generator (from the seed).
        batch_size: B.
        num_queries: M, query rows per batch item.
        num_keys: N, dense tokens per batch item.
        query_dim: Dq, query features.
        value_dim: D, token features.
        density: chance that a query feature is stored, in (0, 1]; every row keeps at least one.

    Returns:
        The example; no ground truth.
    """
    batch_size = _int_param("batch_size", batch_size)
    num_queries = _int_param("num_queries", num_queries)
    num_keys = _int_param("num_keys", num_keys)
    query_dim = _int_param("query_dim", query_dim)
    value_dim = _int_param("value_dim", value_dim)
    density = _float_param("density", density, low=0.0, high=1.0, low_open=True)
    indices, values = _random_sparse_rows(rng, batch_size, num_queries, query_dim, density)
    value = rng.standard_normal((batch_size, num_keys, value_dim)).astype(np.float32)
    return _make_example(
        indices, values, (batch_size, num_queries, query_dim), value,
        query_labels=_default_labels("q", num_queries), key_labels=_default_labels("k", num_keys),
    )


_TOPIC_WORDS = {
    "sports": "goal team match coach league player season stadium referee score tournament striker",
    "science": "atom cell energy theory experiment molecule physics galaxy protein laboratory "
    "particle orbit",
    "food": "bread cheese recipe garlic soup pasta spice oven butter salad tomato dessert",
    "music": "guitar melody rhythm concert singer album piano chorus drum violin lyric tempo",
    "travel": "airport hotel passport beach journey ticket island luggage museum tourist harbor train",
    "finance": "bank market stock credit budget profit invest loan dividend currency tax bond",
    "weather": "rain storm cloud thunder snow wind forecast sunshine humidity frost breeze climate",
    "technology": "software server network robot laptop code data algorithm database browser "
    "chip pixel",
}
# Words every topic uses: they get a low IDF, which is what TF-IDF weighting is there to show.
_COMMON_WORDS = "time people year day world life way thing".split()
_SYLLABLES = "ba ke lo mi nu ra so ti ve zu".split()


def _synthetic_word(position: int) -> str:
    # Pronounceable, unique, and deterministic: the position written in base 10 with syllable digits.
    syllables = []
    for _ in range(3):
        position, digit = divmod(position, len(_SYLLABLES))
        syllables.append(_SYLLABLES[digit])
    while position:
        position, digit = divmod(position, len(_SYLLABLES))
        syllables.append(_SYLLABLES[digit])
    return "".join(reversed(syllables))


def _vocabulary(vocab_size: int, num_topics: int):
    """Words and their topic (-1 for common words), readable first, synthetic when those run out."""
    topic_names = list(_TOPIC_WORDS)[:num_topics] + [
        f"topic {position}" for position in range(len(_TOPIC_WORDS), num_topics)
    ]
    topic_lists = [_TOPIC_WORDS.get(name, "").split() for name in topic_names]
    num_common = min(len(_COMMON_WORDS), (vocab_size - num_topics) // 8)
    words, topics = list(_COMMON_WORDS[:num_common]), [-1] * num_common
    used = set(words)
    synthetic_position = 0
    for slot in range(vocab_size - num_common):
        topic = slot % num_topics
        rank = slot // num_topics
        word = topic_lists[topic][rank] if rank < len(topic_lists[topic]) else None
        while word is None or word in used:
            word = _synthetic_word(synthetic_position)
            synthetic_position += 1
        used.add(word)
        words.append(word)
        topics.append(topic)
    return words, np.asarray(topics), topic_names


@_generator("bag_of_words")
def _generate_bag_of_words(
    rng, batch_size=1, num_queries=8, vocab_size=48, num_topics=4, embedding_dim=16,
    words_per_doc=20, topic_purity=0.8, weighting="tfidf",
) -> Example:
    """Synthetic documents as term-count or TF-IDF rows; the vocabulary words are the dense tokens.

    Each document has one topic and draws most of its words from that topic's words. Word
    embeddings cluster by topic, so a document's query naturally selects words of its topic.
    Labels are the words ("goal", "melody", ...) and "doc 3 (sports)".

    Args:
        rng: numpy Generator (from the seed).
        batch_size: B; every batch item has its own documents over the same vocabulary.
        num_queries: M, documents (query rows) per batch item.
        vocab_size: N = Dq, vocabulary words (dense tokens and query features).
        num_topics: topics (the first 8 have built-in names and words).
        embedding_dim: D, word embedding size.
        words_per_doc: words drawn per document (repeats count).
        topic_purity: share of a document's words drawn from its own topic, in [0, 1].
        weighting: "tfidf" (smoothed IDF, rows L2-normalised) or "counts" (raw term counts).

    Returns:
        The example; metadata["topics"] lists the topic names; no ground truth. Query labels
        give the topics of batch item 0's documents.
    """
    batch_size = _int_param("batch_size", batch_size)
    num_queries = _int_param("num_queries", num_queries)
    num_topics = _int_param("num_topics", num_topics)
    vocab_size = _int_param("vocab_size", vocab_size, minimum=num_topics)
    embedding_dim = _int_param("embedding_dim", embedding_dim)
    words_per_doc = _int_param("words_per_doc", words_per_doc)
    topic_purity = _float_param("topic_purity", topic_purity, low=0.0, high=1.0)
    if weighting not in ("tfidf", "counts"):
        raise InputError(
            "Received an invalid value for argument `weighting`, expected 'tfidf' or 'counts'. "
            f"Received: weighting={weighting!r}"
        )
    words, word_topics, topic_names = _vocabulary(vocab_size, num_topics)
    centres = _unit_rows(rng.standard_normal((num_topics, embedding_dim)))
    common_centre = np.zeros(embedding_dim)  # common words belong to no topic: they sit in between
    word_centres = np.where(
        word_topics[:, None] >= 0, centres[np.maximum(word_topics, 0)], common_centre
    )
    embeddings = _unit_rows(
        word_centres + 0.35 * rng.standard_normal((vocab_size, embedding_dim))
    ).astype(np.float32)

    doc_topics = rng.integers(0, num_topics, size=(batch_size, num_queries))
    counts = np.zeros((batch_size, num_queries, vocab_size))
    all_words = np.arange(vocab_size)
    for batch in range(batch_size):
        for doc in range(num_queries):
            topic_words = np.flatnonzero(word_topics == doc_topics[batch, doc])
            from_topic = rng.random(words_per_doc) < topic_purity
            drawn = np.where(
                from_topic,
                rng.choice(topic_words, size=words_per_doc),
                rng.choice(all_words, size=words_per_doc),
            )
            np.add.at(counts[batch, doc], drawn, 1.0)
    if weighting == "tfidf":
        document_frequency = np.count_nonzero(counts, axis=1, keepdims=True)
        inverse_frequency = np.log((1.0 + num_queries) / (1.0 + document_frequency)) + 1.0
        rows = _unit_rows(counts * inverse_frequency)
    else:
        rows = counts
    indices, values = _sparse_rows_from_dense(rows.astype(np.float32))
    value = np.broadcast_to(embeddings, (batch_size, vocab_size, embedding_dim)).copy()
    return _make_example(
        indices, values, (batch_size, num_queries, vocab_size), value,
        query_labels=[f"doc {doc} ({topic_names[doc_topics[0, doc]]})" for doc in range(num_queries)],
        key_labels=words,
        metadata={"topics": topic_names},
    )


@_generator("planted")
def _generate_planted(
    rng, batch_size=1, num_queries=8, num_keys=64, dim=32, relevant_per_query=4,
    nonzeros_per_query=4, noise=0.05, cluster_spread=0.2,
) -> Example:
    """Clustered keys; each query sits near one cluster of G keys, which is its ground truth.

    Keys come in clusters of `relevant_per_query` around sparse unit centres (leftover keys are
    random background). A query is its cluster's centre plus `noise`, on the centre's few
    features, so at low noise the raw dot-product top-G recovers the cluster.

    Args:
        rng: numpy Generator (from the seed).
        batch_size: B.
        num_queries: M.
        num_keys: N; needs N >= relevant_per_query.
        dim: Dq = D, so raw-space similarity (cosine, dot) is meaningful.
        relevant_per_query: G, keys per cluster = ground-truth set size.
        nonzeros_per_query: stored features of each query (and each centre).
        noise: query noise relative to the unit centre; 0 puts queries on their centres.
        cluster_spread: how far keys scatter around their centre (norm of the offset).

    Returns:
        The example with ground_truth int32 [B, M, G] (sorted key positions). Labels name the
        clusters of batch item 0 ("q0 (c3)", "k5 (c3)"); other items have their own clusters.
    """
    batch_size = _int_param("batch_size", batch_size)
    num_queries = _int_param("num_queries", num_queries)
    relevant = _int_param("relevant_per_query", relevant_per_query)
    num_keys = _int_param("num_keys", num_keys, minimum=relevant)
    dim = _int_param("dim", dim)
    nonzeros = _int_param("nonzeros_per_query", nonzeros_per_query)
    if nonzeros > dim:
        raise InputError(
            f"Received an invalid value for argument `nonzeros_per_query`, expected at most "
            f"dim={dim}. Received: nonzeros_per_query={nonzeros}"
        )
    noise = _float_param("noise", noise, low=0.0, high=1e6)
    cluster_spread = _float_param("cluster_spread", cluster_spread, low=0.0, high=1e6)
    num_clusters = num_keys // relevant

    value = np.zeros((batch_size, num_keys, dim), dtype=np.float32)
    truth = np.zeros((batch_size, num_queries, relevant), dtype=np.int32)
    query_clusters = np.zeros((batch_size, num_queries), dtype=np.int64)
    key_clusters = np.full((batch_size, num_keys), -1)
    dense_queries = np.zeros((batch_size, num_queries, dim), dtype=np.float32)
    for batch in range(batch_size):
        supports = np.stack(
            [rng.choice(dim, size=nonzeros, replace=False) for _ in range(num_clusters)]
        )
        centres = np.zeros((num_clusters, dim))
        np.put_along_axis(centres, supports, rng.standard_normal((num_clusters, nonzeros)), axis=1)
        centres = _unit_rows(centres)
        clustered = np.repeat(centres, relevant, axis=0)
        clustered += cluster_spread * rng.standard_normal(clustered.shape) / math.sqrt(dim)
        background = rng.standard_normal((num_keys - clustered.shape[0], dim))
        keys = _unit_rows(np.concatenate([clustered, background]))
        # Shuffle so a cluster's keys are not neighbours; the truth would otherwise be visible.
        positions = rng.permutation(num_keys)
        value[batch, positions] = keys
        owner = np.concatenate([np.repeat(np.arange(num_clusters), relevant),
                                np.full(num_keys - clustered.shape[0], -1)])
        key_clusters[batch, positions] = owner
        # Distinct clusters while they last, so queries do not all share one answer.
        choices = np.resize(rng.permutation(num_clusters), num_queries)
        query_clusters[batch] = choices
        for query, cluster in enumerate(choices):
            support = supports[cluster]
            jitter = noise * rng.standard_normal(nonzeros) / math.sqrt(nonzeros)
            dense_queries[batch, query, support] = centres[cluster, support] + jitter
            truth[batch, query] = np.sort(positions[cluster * relevant : (cluster + 1) * relevant])
    indices, values = _sparse_rows_from_dense(dense_queries)
    return _make_example(
        indices, values, (batch_size, num_queries, dim), value,
        query_labels=[f"q{query} (c{query_clusters[0, query]})" for query in range(num_queries)],
        key_labels=[
            f"k{key} (c{key_clusters[0, key]})" if key_clusters[0, key] >= 0 else f"k{key}"
            for key in range(num_keys)
        ],
        ground_truth=truth,
    )


@_generator("needle")
def _generate_needle(
    rng, batch_size=1, num_queries=8, num_keys=64, dim=32, nonzeros_per_query=4,
    decoys_per_query=3, decoy_similarity=0.9,
) -> Example:
    """One key per query that should win (the needle), hidden among near-miss decoys.

    All keys are unit vectors. A query's needle is the query's own direction (cosine 1); its
    decoys have cosine `decoy_similarity`; the other keys are random.

    Args:
        rng: numpy Generator (from the seed).
        batch_size: B.
        num_queries: M.
        num_keys: N; needs N >= M * (1 + decoys_per_query).
        dim: Dq = D.
        nonzeros_per_query: stored features of each query.
        decoys_per_query: near-miss keys per query.
        decoy_similarity: cosine between a query and its decoys, in [0, 1).

    Returns:
        The example with ground_truth int32 [B, M, 1], the needle positions. Key labels mark the
        needles and decoys of batch item 0 ("k7 (needle q2)", "k9 (decoy q2)").
    """
    batch_size = _int_param("batch_size", batch_size)
    num_queries = _int_param("num_queries", num_queries)
    decoys = _int_param("decoys_per_query", decoys_per_query, minimum=0)
    needed = num_queries * (1 + decoys)
    num_keys = _int_param("num_keys", num_keys, minimum=needed)
    dim = _int_param("dim", dim, minimum=2)
    nonzeros = _int_param("nonzeros_per_query", nonzeros_per_query)
    if nonzeros > dim:
        raise InputError(
            f"Received an invalid value for argument `nonzeros_per_query`, expected at most "
            f"dim={dim}. Received: nonzeros_per_query={nonzeros}"
        )
    similarity = _float_param("decoy_similarity", decoy_similarity, low=0.0, high=0.999)

    dense_queries = np.zeros((batch_size, num_queries, dim), dtype=np.float32)
    value = np.zeros((batch_size, num_keys, dim), dtype=np.float32)
    truth = np.zeros((batch_size, num_queries, 1), dtype=np.int32)
    roles = [""] * num_keys
    for batch in range(batch_size):
        keys = _unit_rows(rng.standard_normal((num_keys, dim)))
        positions = rng.permutation(num_keys)[:needed].reshape(num_queries, 1 + decoys)
        for query in range(num_queries):
            support = rng.choice(dim, size=nonzeros, replace=False)
            direction = np.zeros(dim)
            direction[support] = rng.standard_normal(nonzeros)
            direction = _unit_rows(direction)
            dense_queries[batch, query] = direction
            keys[positions[query, 0]] = direction
            for decoy_position in positions[query, 1:]:
                # Gram-Schmidt: a random direction orthogonal to the query sets the exact cosine.
                orthogonal = rng.standard_normal(dim)
                orthogonal = _unit_rows(orthogonal - (orthogonal @ direction) * direction)
                spread = math.sqrt(1 - similarity**2)
                keys[decoy_position] = similarity * direction + spread * orthogonal
            truth[batch, query, 0] = positions[query, 0]
            if batch == 0:
                roles[positions[query, 0]] = f" (needle q{query})"
                for decoy_position in positions[query, 1:]:
                    roles[decoy_position] = f" (decoy q{query})"
        value[batch] = keys
    indices, values = _sparse_rows_from_dense(dense_queries)
    return _make_example(
        indices, values, (batch_size, num_queries, dim), value,
        query_labels=_default_labels("q", num_queries),
        key_labels=[f"k{key}{roles[key]}" for key in range(num_keys)],
        ground_truth=truth,
    )


@_generator("ties")
def _generate_ties(
    rng, batch_size=1, num_queries=8, num_keys=32, dim=16, distinct_keys=8, ones_per_key=4,
    nonzeros_per_query=3,
) -> Example:
    """Many exactly equal scores, so each strategy's tie-breaking shows.

    Keys are 0/1 vectors, and key j is a copy of key `j % distinct_keys`; queries are 0/1 rows.
    Every score is a small integer, exact in float32, so ties are exact, not approximate.

    Args:
        rng: numpy Generator (from the seed).
        batch_size: B.
        num_queries: M.
        num_keys: N.
        dim: Dq = D.
        distinct_keys: different key vectors; the rest are copies (at most N).
        ones_per_key: ones in each key vector (at most dim).
        nonzeros_per_query: ones in each query row (at most dim).

    Returns:
        The example with ground_truth int32 [B, M, G]: every key that reaches the query's top
        raw score, padded with -1.
    """
    batch_size = _int_param("batch_size", batch_size)
    num_queries = _int_param("num_queries", num_queries)
    num_keys = _int_param("num_keys", num_keys)
    dim = _int_param("dim", dim)
    distinct = _int_param("distinct_keys", distinct_keys)
    ones_per_key = _int_param("ones_per_key", ones_per_key)
    nonzeros = _int_param("nonzeros_per_query", nonzeros_per_query)
    for name, count, limit, limit_name in (
        ("distinct_keys", distinct, num_keys, "num_keys"),
        ("ones_per_key", ones_per_key, dim, "dim"),
        ("nonzeros_per_query", nonzeros, dim, "dim"),
    ):
        if count > limit:
            raise InputError(
                f"Received an invalid value for argument `{name}`, expected at most "
                f"{limit_name}={limit}. Received: {name}={count}"
            )
    value = np.zeros((batch_size, num_keys, dim), dtype=np.float32)
    dense_queries = np.zeros((batch_size, num_queries, dim), dtype=np.float32)
    for batch in range(batch_size):
        patterns = np.zeros((distinct, dim), dtype=np.float32)
        for pattern in patterns:
            pattern[rng.choice(dim, size=ones_per_key, replace=False)] = 1.0
        # Copies spaced `distinct` apart, so "lowest index wins" and "any index wins" differ visibly.
        value[batch] = patterns[np.arange(num_keys) % distinct]
        for query in range(num_queries):
            # Start from one feature of some key, so every query has a positive top score.
            anchor = rng.choice(np.flatnonzero(patterns[rng.integers(distinct)]))
            others = rng.permutation(np.setdiff1d(np.arange(dim), [anchor]))[: nonzeros - 1]
            dense_queries[batch, query, np.concatenate([[anchor], others])] = 1.0
    scores = np.einsum("bmd,bnd->bmn", dense_queries, value)
    winners = scores == scores.max(axis=-1, keepdims=True)
    group_size = int(winners.sum(axis=-1).max())
    truth = np.full((batch_size, num_queries, group_size), -1, dtype=np.int32)
    for batch in range(batch_size):
        for query in range(num_queries):
            tied = np.flatnonzero(winners[batch, query])
            truth[batch, query, : tied.size] = tied
    indices, values = _sparse_rows_from_dense(dense_queries)
    return _make_example(
        indices, values, (batch_size, num_queries, dim), value,
        query_labels=_default_labels("q", num_queries),
        key_labels=[
            f"k{key}" if key < distinct else f"k{key} (=k{key % distinct})" for key in range(num_keys)
        ],
        ground_truth=truth,
    )


def _lengths_param(name, lengths, batch_size, maximum):
    if lengths is None:
        # Evenly spread from full length down to a quarter: every item differs when sizes allow.
        return np.rint(np.linspace(maximum, max(1, maximum // 4), batch_size)).astype(np.int64)
    is_sequence = not isinstance(lengths, (str, bytes)) and hasattr(lengths, "__len__")
    if not is_sequence or len(lengths) != batch_size:
        raise InputError(
            f"Received an invalid value for argument `{name}`, expected a list of {batch_size} "
            f"lengths (one per batch item). Received: {name}={lengths!r}"
        )
    return np.asarray([_int_param(name, length, minimum=0) for length in lengths], dtype=np.int64)


@_generator("variable_length")
def _generate_variable_length(
    rng, batch_size=3, num_queries=12, num_keys=48, query_dim=32, value_dim=16, density=0.15,
    query_lengths=None, key_lengths=None,
) -> Example:
    """A batch whose items have different numbers of valid queries and keys (see the masks).

    Padded query rows store nothing and padded keys are zero vectors; `query_mask` and
    `value_mask` mark the valid ones.

    Args:
        rng: numpy Generator (from the seed).
        batch_size: B.
        num_queries: M, the padded query length.
        num_keys: N, the padded key length.
        query_dim: Dq.
        value_dim: D.
        density: chance that a query feature is stored, in (0, 1].
        query_lengths: valid queries per item, each in [0, M]; default spreads from M down to M/4.
        key_lengths: valid keys per item, each in [0, N]; default spreads from N down to N/4.

    Returns:
        The example; no ground truth.
    """
    batch_size = _int_param("batch_size", batch_size)
    num_queries = _int_param("num_queries", num_queries)
    num_keys = _int_param("num_keys", num_keys)
    query_dim = _int_param("query_dim", query_dim)
    value_dim = _int_param("value_dim", value_dim)
    density = _float_param("density", density, low=0.0, high=1.0, low_open=True)
    query_counts = _lengths_param("query_lengths", query_lengths, batch_size, num_queries)
    key_counts = _lengths_param("key_lengths", key_lengths, batch_size, num_keys)
    for name, counts, maximum in (("query_lengths", query_counts, num_queries),
                                  ("key_lengths", key_counts, num_keys)):
        if (counts > maximum).any():
            raise InputError(
                f"Received an invalid value for argument `{name}`, expected lengths at most "
                f"{maximum}. Received: {name}={counts.tolist()}"
            )
    query_mask = np.arange(num_queries)[None, :] < query_counts[:, None]
    value_mask = np.arange(num_keys)[None, :] < key_counts[:, None]
    indices, values = _random_sparse_rows(
        rng, batch_size, num_queries, query_dim, density, valid_rows=query_mask
    )
    value = rng.standard_normal((batch_size, num_keys, value_dim)).astype(np.float32)
    value *= value_mask[:, :, None]
    return _make_example(
        indices, values, (batch_size, num_queries, query_dim), value,
        query_mask=query_mask, value_mask=value_mask,
        query_labels=_default_labels("q", num_queries), key_labels=_default_labels("k", num_keys),
        metadata={"query_lengths": query_counts.tolist(), "key_lengths": key_counts.tolist()},
    )


@_generator("config_p")
def _generate_config_p(
    rng, batch_size=2, num_queries=512, num_keys=4096, dim=256, num_topics=256,
    nonzeros_per_query=8, key_noise=0.5,
) -> Example:
    """Benchmark "Config P": keys around random topic centres, queries = sparsified centres.

    Keys are `centre + key_noise * Gaussian`, L2-normalised, around `num_topics` standard Gaussian
    centres. Each query is a random topic's centre cut to its `nonzeros_per_query`
    largest-magnitude features, then L2-normalised (about 3% density at the defaults). Built in
    float32 chunks, so N=1,048,576 needs little beyond the keys themselves.

    Args:
        rng: numpy Generator (from the seed).
        batch_size: B (issue 6: 2).
        num_queries: M (512).
        num_keys: N (4096; the benchmark also uses 16,384 to 1,048,576).
        dim: Dq = D (256).
        num_topics: topic centres (256).
        nonzeros_per_query: stored features per query (8).
        key_noise: Gaussian noise scale around the centres (0.5).

    Returns:
        The example; metadata["query_topics"] holds each query's topic; no ground truth.
    """
    batch_size = _int_param("batch_size", batch_size)
    num_queries = _int_param("num_queries", num_queries)
    num_keys = _int_param("num_keys", num_keys)
    dim = _int_param("dim", dim)
    num_topics = _int_param("num_topics", num_topics)
    nonzeros = _int_param("nonzeros_per_query", nonzeros_per_query)
    if nonzeros > dim:
        raise InputError(
            f"Received an invalid value for argument `nonzeros_per_query`, expected at most "
            f"dim={dim}. Received: nonzeros_per_query={nonzeros}"
        )
    key_noise = _float_param("key_noise", key_noise, low=0.0, high=1e6)
    centres = rng.standard_normal((num_topics, dim), dtype=np.float32)
    value = np.empty((batch_size, num_keys, dim), dtype=np.float32)
    chunk = 65_536  # rows per step: bounds the temporaries to ~64 MB at D=256
    for batch in range(batch_size):
        for start in range(0, num_keys, chunk):
            stop = min(start + chunk, num_keys)
            topics = rng.integers(0, num_topics, size=stop - start)
            block = rng.standard_normal((stop - start, dim), dtype=np.float32)
            block *= np.float32(key_noise)
            block += centres[topics]
            block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), np.float32(1e-30))
            value[batch, start:stop] = block
    query_topics = rng.integers(0, num_topics, size=(batch_size, num_queries))
    chosen = centres[query_topics]  # [B, M, D]
    support = np.sort(np.argpartition(-np.abs(chosen), nonzeros - 1, axis=-1)[..., :nonzeros], axis=-1)
    kept = np.take_along_axis(chosen, support, axis=-1)  # [B, M, s]
    kept /= np.linalg.norm(kept, axis=-1, keepdims=True)
    batch_positions, row_positions = np.meshgrid(
        np.arange(batch_size), np.arange(num_queries), indexing="ij"
    )
    indices = np.stack(
        [
            np.broadcast_to(batch_positions[..., None], support.shape),
            np.broadcast_to(row_positions[..., None], support.shape),
            support,
        ],
        axis=-1,
    ).reshape(-1, 3)
    return _make_example(
        indices, kept.reshape(-1), (batch_size, num_queries, dim), value,
        query_labels=_default_labels("q", num_queries), key_labels=_default_labels("k", num_keys),
        metadata={"query_topics": query_topics.tolist()},
    )


# ----------------------------------------------------------------------------------------------
# Reading files safely
# ----------------------------------------------------------------------------------------------


class _Source:
    """A seekable binary stream over a path or an uploaded file, with its display name and size."""

    def __init__(self, path_or_file, max_bytes: int):
        self._owned = None
        if isinstance(path_or_file, (str, os.PathLike)):
            path = pathlib.Path(path_or_file)
            self.name = path.name
            try:
                self.stream = self._owned = open(path, "rb")
            except OSError as error:
                raise InputError(
                    f"{path}: cannot open the file ({error.strerror or error}); expected a "
                    "readable file"
                ) from error
        elif hasattr(path_or_file, "read"):
            raw_name = getattr(path_or_file, "name", None)
            if not isinstance(raw_name, str) or not raw_name:
                raise InputError(
                    "the uploaded file has no name, so its format is unknown; expected a file "
                    "object with a .name ending in .npz, .npy, .csv or .mtx"
                )
            self.name = pathlib.PurePath(raw_name).name
            stream = path_or_file
            if not (hasattr(stream, "seekable") and stream.seekable()):
                # Read at most one byte past the limit: enough to tell the file is too big.
                data = stream.read(max_bytes + 1)
                if not isinstance(data, bytes):
                    raise InputError(f"{self.name}: the file object returned text; expected bytes")
                stream = io.BytesIO(data)
            self.stream = stream
        else:
            raise InputError(
                f"expected a path or a file object; received {type(path_or_file).__name__}"
            )
        suffixes = pathlib.PurePath(self.name).suffixes
        self.extension = suffixes[-1].lower() if suffixes else ""
        try:
            self.stream.seek(0, os.SEEK_END)
            self.size = self.stream.tell()
            self.stream.seek(0)
        except (OSError, ValueError) as error:
            self.close()
            raise InputError(f"{self.name}: cannot read the file ({error})") from error

    def close(self):
        if self._owned is not None:
            self._owned.close()


def _read_exact(stream, count: int, where: str) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise InputError(
            f"{where}: the file is truncated: expected {count:,} more bytes, found {len(data):,}"
        )
    return data


def _read_npy(stream, available_bytes: int, where: str, *, kinds: str, max_elements: int,
              budget_setting: str) -> np.ndarray:
    """Read one .npy array after checking its header: dtype kind, shape, budget and length.

    Args:
        stream: binary stream positioned at the magic string.
        available_bytes: bytes from the stream position to the end of this array's file.
        where: name for messages, e.g. "data.npz, member 'value'".
        kinds: accepted dtype kinds ("b", "i", "u", "f", "U", "S").
        max_elements: budget for the element count.
        budget_setting: the Budget field named in the message.

    Returns:
        The array (never an object array: those are refused before reading their bytes).
    """
    start = stream.tell()
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            # Version 3 only allows UTF-8 field names; numeric dtypes read the same as version 2.
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise InputError(f"{where}: unsupported .npy format version {version}; expected 1.0-3.0")
    except InputError:
        raise
    except Exception as error:  # numpy reports bad headers with several exception types
        raise InputError(
            f"{where}: not a valid .npy array ({error}); expected a file written by numpy.save"
        ) from error
    if dtype.hasobject:
        raise InputError(
            f"{where}: holds Python objects (a pickled object array, dtype {dtype}); pickles are "
            "never loaded because they can run code; expected a numeric array"
        )
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in kinds:
        raise InputError(f"{where}: has dtype {dtype}; expected {_kinds_for_message(kinds)}")
    if any(size < 0 for size in shape):
        raise InputError(f"{where}: declares a negative shape {shape}")
    count = math.prod(shape)
    if count > max_elements:
        raise InputError(
            f"{where}: declares shape {shape} = {count:,} elements, over the budget of "
            f"{max_elements:,}; expected a smaller array, or raise Budget.{budget_setting}"
        )
    byte_count = count * dtype.itemsize
    remaining = available_bytes - (stream.tell() - start)
    if byte_count > remaining:
        raise InputError(
            f"{where}: is truncated: its header declares shape {shape} of {dtype} "
            f"({byte_count:,} bytes) but only {max(remaining, 0):,} bytes follow"
        )
    data = _read_exact(stream, byte_count, where)
    array = np.frombuffer(data, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran_order else "C")


def _kinds_for_message(kinds: str) -> str:
    words = {"b": "bool", "i": "integer", "u": "unsigned integer", "f": "float",
             "U": "unicode string", "S": "byte string"}
    return " or ".join(words[kind] for kind in kinds) + " values"


# ----------------------------------------------------------------------------------------------
# Query loaders: each returns (indices [nnz, 3], values [nnz], shape (B, M, Dq), format, notes)
# ----------------------------------------------------------------------------------------------


def _check_query_shape(shape, where: str, budget: Budget):
    if any(size < 1 for size in shape):
        raise InputError(
            f"{where}: the query shape {tuple(shape)} is empty; expected at least one row and "
            "feature"
        )
    batch_size, num_queries, query_dim = shape
    _check_limit(batch_size * num_queries, budget.max_dense_floats, where, "query rows (B*M)",
                 "max_dense_floats")
    _check_limit(query_dim, budget.max_dense_floats, where, "query features (Dq)",
                 "max_dense_floats")


def _require_entries(nnz: int, where: str):
    if nnz == 0:
        raise InputError(f"{where}: the query has no stored entries; expected at least one non-zero")


def _load_npy_queries(source: _Source, budget: Budget):
    array = _read_npy(source.stream, source.size, source.name, kinds="biuf",
                      max_elements=budget.max_dense_floats, budget_setting="max_dense_floats")
    if array.ndim not in (2, 3):
        raise InputError(
            f"{source.name}: a query array of shape {array.shape}; expected 2-D [M, Dq] or "
            "3-D [B, M, Dq]"
        )
    dense = array[None] if array.ndim == 2 else array
    _check_query_shape(dense.shape, source.name, budget)
    if dense.dtype.kind == "f":
        _check_finite(array, source.name)
    dense = _to_float32(dense, source.name)
    indices, values = _sparse_rows_from_dense(dense)
    _require_entries(indices.shape[0], source.name)
    _check_limit(indices.shape[0], budget.max_nonzeros, source.name, "non-zeros", "max_nonzeros")
    note = (
        f"{source.name}: the dense query array {list(array.shape)} was converted to a sparse "
        f"query with {indices.shape[0]:,} non-zeros (density {indices.shape[0] / dense.size:.1%})"
    )
    warnings.warn(note, InputWarning, stacklevel=4)
    return indices, values, dense.shape, "npy-dense", [note]


def _load_mtx_queries(source: _Source, budget: Budget):
    """Matrix Market queries, parsed here rather than by `scipy.io.mmread`.

    scipy 1.17's C++ reader segfaults on some malformed files (e.g. a last value "5E-" at the
    end of the file), which would take the whole app down; this reader accepts the same
    coordinate/array, real/integer/pattern, general/symmetric/skew-symmetric files.
    """
    name = source.name
    lines = _decode_text(source, _csv_byte_limit(max(3 * budget.max_nonzeros, budget.max_dense_floats)),
                         comment=None)
    expected_banner = "'%%MatrixMarket matrix coordinate real general'"
    if not lines or lines[0][0] != 1 or not lines[0][1].lower().startswith("%%matrixmarket"):
        raise InputError(
            f"{name}: not a Matrix Market file (line 1 is not a %%MatrixMarket banner); expected "
            f"a banner such as {expected_banner}"
        )
    banner = lines[0][1].lower().split()
    if (len(banner) != 5 or banner[1] != "matrix" or banner[2] not in ("coordinate", "array")
            or banner[4] not in ("general", "symmetric", "skew-symmetric", "hermitian")):
        raise InputError(
            f"{name}, line 1: banner {lines[0][1][:80]!r} is not a Matrix Market matrix banner; "
            f"expected e.g. {expected_banner}"
        )
    layout, field_kind, symmetry = banner[2:]
    if field_kind not in ("real", "integer", "pattern") or (layout, field_kind) == ("array", "pattern"):
        raise InputError(
            f"{name}, line 1: has {layout} field '{field_kind}'; expected real, integer or pattern "
            "values"
        )
    if symmetry == "hermitian" or (layout == "array" and symmetry != "general"):
        raise InputError(
            f"{name}, line 1: '{layout} {symmetry}' matrices are not supported; expected "
            "'coordinate' with general/symmetric/skew-symmetric, or 'array general'"
        )
    body = [(number, line) for number, line in lines[1:] if not line.lstrip().startswith("%")]
    sizes = "rows columns entries" if layout == "coordinate" else "rows columns"
    if not body:
        raise InputError(f"{name}: has no size line after the banner; expected '{sizes}'")
    size_tokens = body[0][1].split()
    if len(size_tokens) != len(sizes.split()) or not all(
        re.fullmatch(r"[0-9]+", token) for token in size_tokens
    ):
        raise InputError(
            f"{name}, line {body[0][0]}: the size line {body[0][1][:80]!r} is invalid; expected "
            f"'{sizes}' as non-negative integers"
        )
    rows, columns = int(size_tokens[0]), int(size_tokens[1])
    shape = (1, rows, columns)
    _check_query_shape(shape, name, budget)
    entry_lines = body[1:]
    if layout == "array":
        _check_limit(rows * columns, budget.max_dense_floats, name, "dense entries",
                     "max_dense_floats")
        declared = rows * columns
    else:
        declared = int(size_tokens[2])
        # Symmetric files store one triangle; mirroring can double the entries.
        stored = declared * (1 if symmetry == "general" else 2)
        _check_limit(stored, budget.max_nonzeros, name, "declared entries", "max_nonzeros")
    if declared == 0:
        raise InputError(f"{name}: the query has no stored entries; expected at least one non-zero")
    if len(entry_lines) != declared:
        raise InputError(
            f"{name}: the size line declares {declared:,} entries but {len(entry_lines):,} entry "
            "lines follow; the file is truncated or has extra lines"
        )
    width = 1 if layout == "array" else (2 if field_kind == "pattern" else 3)
    table = _parse_numeric_lines(
        entry_lines, name, columns=(width,), delimiter=None, allow_header=False,
        columns_hint="(row col value, 1-based)" if width == 3 else "",
        max_values=width * max(budget.max_nonzeros, budget.max_dense_floats),
        budget_setting="max_nonzeros",
    )
    if layout == "array":
        values = table[:, 0]
        _check_float32_range(values, entry_lines, name)
        dense = values.reshape(columns, rows).T  # array layout is column-major
        indices, stored_values = _sparse_rows_from_dense(dense[None].astype(np.float32))
        _require_entries(indices.shape[0], name)
        note = (
            f"{name}: the dense Matrix Market array [{rows}, {columns}] was converted to a "
            f"sparse query with {indices.shape[0]:,} non-zeros"
        )
        warnings.warn(note, InputWarning, stacklevel=4)
        return indices, stored_values, shape, "mtx", [note]
    row_index = _checked_index_column(table[:, 0], entry_lines, name, "row", low=1, high=rows)
    column_index = _checked_index_column(table[:, 1], entry_lines, name, "column", low=1,
                                         high=columns)
    values = np.ones(table.shape[0]) if field_kind == "pattern" else table[:, 2]
    _check_float32_range(values, entry_lines, name)
    row_index, column_index = row_index - 1, column_index - 1
    if symmetry != "general":
        mirrored = row_index != column_index
        sign = -1.0 if symmetry == "skew-symmetric" else 1.0
        row_index, column_index, values = (
            np.concatenate([row_index, column_index[mirrored]]),
            np.concatenate([column_index, row_index[mirrored]]),
            np.concatenate([values, sign * values[mirrored]]),
        )
    indices = np.stack([np.zeros_like(row_index), row_index, column_index], axis=1)
    indices, stored_values, merged = _canonical_coo(indices, values, name)
    notes = [f"{name}: {merged} duplicate entries were summed"] if merged else []
    return indices, stored_values, shape, "mtx", notes


def _decode_text(source: _Source, max_bytes: int, *, comment: str | None = "#"):
    """The non-blank lines of a text file (less `comment` lines) with 1-based line numbers."""
    if source.size > max_bytes:
        raise InputError(
            f"{source.name}: is {source.size:,} bytes, over the {max_bytes:,} bytes the budget "
            "allows for a text file; expected a smaller file, or raise the Budget"
        )
    raw = _read_exact(source.stream, source.size, source.name)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise InputError(
            f"{source.name}, line {line}: the file is not UTF-8 text (byte {error.start}); "
            "expected a text file"
        ) from error
    return [
        (number, line)
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and (comment is None or not line.lstrip().startswith(comment))
    ]


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _parse_numeric_lines(
    lines, name: str, *, columns: tuple[int, ...] | None, max_values: int, budget_setting: str,
    max_rows: int | None = None, delimiter: str | None = ",", allow_header: bool = True,
    columns_hint: str = "",
) -> np.ndarray:
    """Parse numeric text lines into a float64 table; `lines` is trimmed of a header in place.

    Args:
        lines: list of (line number, text), modified in place: a skipped header is removed, so
            `lines[row]` is the source line of table row `row`.
        name: file name for messages.
        columns: accepted column counts, or None for any (consistent) count.
        max_values: budget on rows * columns.
        budget_setting: the Budget field named in messages.
        max_rows: optional budget on the number of rows.
        delimiter: "," for csv, None for whitespace (Matrix Market).
        allow_header: skip a first line with no numeric token (e.g. "row,col,value").
        columns_hint: what the columns mean, for the message.

    Returns:
        float64 `[rows, columns]`, all finite.
    """
    if allow_header and lines and not any(_is_number(t) for t in lines[0][1].split(delimiter)):
        del lines[0]
    if not lines:
        raise InputError(f"{name}: has no data rows; expected lines of numbers")
    width = len(lines[0][1].split(delimiter))
    if columns is not None and width not in columns:
        raise InputError(
            f"{name}, line {lines[0][0]}: found {width} columns; expected "
            + " or ".join(str(count) for count in columns) + f" columns {columns_hint}".rstrip()
        )
    if max_rows is not None:
        _check_limit(len(lines), max_rows, name, "entries (rows)", budget_setting)
    _check_limit(len(lines) * width, max_values, name, "values", budget_setting)
    try:
        table = np.loadtxt([line for _, line in lines], delimiter=delimiter, dtype=np.float64,
                           ndmin=2, comments=None)
    except ValueError as error:
        raise InputError(_locate_text_problem(lines, width, name, error, delimiter)) from error
    if table.shape != (len(lines), width):
        raise InputError(f"{name}: rows have {table.shape[1]} columns; expected {width}")
    bad = np.argwhere(~np.isfinite(table))
    if bad.size:
        row, column = (int(x) for x in bad[0])
        raise InputError(
            f"{name}, line {lines[row][0]}, column {column + 1}: {table[row, column]} is not a "
            "finite number; expected no NaN or Inf"
        )
    return table


def _locate_text_problem(lines, width: int, name: str, error: Exception, delimiter) -> str:
    # numpy's row numbers skip blank lines and the header; find the real line for the message.
    for number, line in lines:
        tokens = line.split(delimiter)
        if len(tokens) != width:
            return f"{name}, line {number}: found {len(tokens)} columns; expected {width}"
        for column, token in enumerate(tokens, 1):
            if not _is_number(token):
                return (f"{name}, line {number}, column {column}: {token.strip()[:40]!r} is not a "
                        "number; expected numeric values")
    return f"{name}: cannot parse the numbers ({error}); expected numeric values"


def _checked_index_column(values: np.ndarray, lines, name: str, label: str, *, low: int,
                          high: int, high_reason: str = "") -> np.ndarray:
    """Integer indices from a float column: whole numbers in [low, high], else the line is named."""
    bad = np.flatnonzero((values < low) | (values > high) | (values != np.floor(values)))
    if bad.size:
        row = int(bad[0])
        raise InputError(
            f"{name}, line {lines[row][0]}: {label} index {values[row]:g} is invalid; expected an "
            f"integer from {low} to {high:,}{high_reason}"
        )
    return values.astype(np.int64)


def _check_float32_range(values: np.ndarray, lines, name: str):
    too_large = np.flatnonzero(np.abs(values) > np.finfo(np.float32).max)
    if too_large.size:
        row = int(too_large[0])
        raise InputError(
            f"{name}, line {lines[row][0]}: value {values[row]:g} overflows float32; expected "
            "magnitudes below 3.4e38"
        )


def _csv_byte_limit(values: int) -> int:
    # 64 bytes per allowed value is far beyond any sane number formatting; bigger is not a csv we want.
    return 64 * values + 4096


def _load_csv_queries(source: _Source, budget: Budget):
    name = source.name
    lines = _decode_text(source, _csv_byte_limit(4 * budget.max_nonzeros))
    table = _parse_numeric_lines(
        lines, name, columns=(3, 4), columns_hint="(row,col,value or batch,row,col,value)",
        max_values=4 * budget.max_nonzeros, budget_setting="max_nonzeros",
        max_rows=budget.max_nonzeros,
    )
    if table.shape[1] == 3:
        table = np.concatenate([np.zeros((table.shape[0], 1)), table], axis=1)
    # Indices past the budget would make the inferred query shape itself too big.
    largest = budget.max_dense_floats - 1
    coordinates = np.stack(
        [_checked_index_column(table[:, column], lines, name, label, low=0, high=largest,
                               high_reason=" (raise Budget.max_dense_floats for larger shapes)")
         for column, label in enumerate(("batch", "row", "col"))],
        axis=1,
    )
    _check_float32_range(table[:, 3], lines, name)
    shape = tuple(int(size) + 1 for size in coordinates.max(axis=0))
    _check_query_shape(shape, name, budget)
    indices, values, merged = _canonical_coo(coordinates, table[:, 3], name)
    notes = [f"{name}: the query shape {list(shape)} was inferred from the largest indices"]
    if merged:
        notes.append(f"{name}: {merged} duplicate entries were summed")
    return indices, values, shape, "csv-coo", notes


def _load_npz(source: _Source, budget: Budget):
    """Open a .npz and read the headers of all members; returns (zipfile, {member: name})."""
    try:
        archive = zipfile.ZipFile(source.stream)
        names = archive.namelist()
    except Exception as error:  # BadZipFile, OSError, ValueError, ... for damaged archives
        raise InputError(
            f"{source.name}: not a readable .npz archive ({error}); expected a file written by "
            "numpy.savez, scipy.sparse.save_npz or sdattn.save_inputs"
        ) from error
    if len(names) > _MAX_NPZ_MEMBERS:
        raise InputError(
            f"{source.name}: has {len(names):,} members; expected a bundle or sparse matrix"
        )
    members = {member[:-4]: member for member in names if member.endswith(".npy")}
    if not members:
        raise InputError(
            f"{source.name}: holds no .npy arrays; expected an sdattn bundle or a scipy.sparse "
            "matrix"
        )
    return archive, members


def _npz_member(archive, members, key, source_name, *, kinds, max_elements, budget_setting):
    where = f"{source_name}, array '{key}'"
    info = archive.getinfo(members[key])
    with archive.open(info) as stream:
        return _read_npy(stream, info.file_size, where, kinds=kinds, max_elements=max_elements,
                         budget_setting=budget_setting)


def _load_scipy_npz_queries(archive, members, source: _Source, budget: Budget):
    name = source.name
    nnz_limit = budget.max_nonzeros

    def member(key, kinds, limit, setting="max_nonzeros"):
        if key not in members:
            raise InputError(f"{name}: the scipy sparse layout is missing array '{key}'")
        return _npz_member(archive, members, key, name, kinds=kinds, max_elements=limit,
                           budget_setting=setting)

    sparse_format = member("format", "SU", 16)
    try:
        sparse_format = str(sparse_format.item().decode("ascii") if sparse_format.dtype.kind == "S"
                            else sparse_format.item())
    except (UnicodeDecodeError, ValueError) as error:
        raise InputError(f"{name}: array 'format' is not a format name") from error
    if sparse_format not in ("csr", "csc", "coo"):
        raise InputError(
            f"{name}: sparse format '{sparse_format[:16]}' is not supported; expected csr, csc or "
            "coo (convert with .tocsr() before save_npz)"
        )
    shape_array = member("shape", "iu", 3)
    if shape_array.ndim != 1 or shape_array.size not in (2, 3):
        raise InputError(
            f"{name}: array 'shape' is {shape_array.tolist()}; expected (M, Dq) or (B, M, Dq)"
        )
    matrix_shape = tuple(int(size) for size in shape_array)
    shape = (1, *matrix_shape) if len(matrix_shape) == 2 else matrix_shape
    _check_query_shape(shape, name, budget)
    if len(matrix_shape) == 3 and sparse_format != "coo":
        raise InputError(f"{name}: a 3-D shape needs the coo format; found {sparse_format}")
    data = member("data", "biuf", nnz_limit)
    if data.ndim != 1:
        raise InputError(f"{name}: array 'data' has shape {data.shape}; expected 1-D")
    if data.dtype.kind == "f":
        _check_finite(data, f"{name}, array 'data'")
    nnz = data.shape[0]

    def index_array(key, length, upper, limit=nnz_limit):
        array = member(key, "iu", limit)
        if array.ndim != 1 or array.shape[0] != length:
            raise InputError(f"{name}: array '{key}' has shape {array.shape}; expected [{length}]")
        bad = np.flatnonzero((array < 0) | (array >= upper))
        if bad.size:
            position = int(bad[0])
            raise InputError(
                f"{name}, array '{key}' entry {position}: {int(array[position])} is out of range; "
                f"expected 0 <= value < {upper}"
            )
        return array.astype(np.int64)

    num_rows, num_columns = matrix_shape[-2], matrix_shape[-1]
    batch = np.zeros(nnz, dtype=np.int64)
    if sparse_format in ("csr", "csc"):
        outer, inner = (num_rows, num_columns) if sparse_format == "csr" else (num_columns, num_rows)
        pointer = index_array("indptr", outer + 1, nnz + 1, limit=budget.max_dense_floats + 1)
        if pointer[0] != 0 or pointer[-1] != nnz or (np.diff(pointer) < 0).any():
            raise InputError(
                f"{name}: array 'indptr' is not a valid pointer array; expected it to start at 0, "
                f"never decrease, and end at nnz={nnz}"
            )
        minor = index_array("indices", nnz, inner)
        major = np.repeat(np.arange(outer, dtype=np.int64), np.diff(pointer))
        rows, columns = (major, minor) if sparse_format == "csr" else (minor, major)
    elif "coords" in members:
        coords = member("coords", "iu", len(matrix_shape) * nnz_limit)
        if coords.shape != (len(matrix_shape), nnz):
            raise InputError(
                f"{name}: array 'coords' has shape {coords.shape}; expected "
                f"{[len(matrix_shape), nnz]}"
            )
        coords = coords.astype(np.int64)
        for axis, size in enumerate(matrix_shape):
            bad = np.flatnonzero((coords[axis] < 0) | (coords[axis] >= size))
            if bad.size:
                raise InputError(
                    f"{name}, array 'coords' axis {axis} entry {int(bad[0])}: "
                    f"{int(coords[axis, bad[0]])} is out of range; expected 0 <= value < {size}"
                )
        if len(matrix_shape) == 3:
            batch, rows, columns = coords
        else:
            rows, columns = coords
    else:
        rows = index_array("row", nnz, num_rows)
        columns = index_array("col", nnz, num_columns)
    indices = np.stack([batch, rows, columns], axis=1)
    indices, values, merged = _canonical_coo(indices, data, name)
    _require_entries(indices.shape[0], name)
    notes = [f"{name}: {merged} duplicate entries were summed"] if merged else []
    return indices, values, shape, f"scipy-{sparse_format}", notes


# ----------------------------------------------------------------------------------------------
# Keys
# ----------------------------------------------------------------------------------------------


def _load_keys(keys, batch_size: int, query_dim: int, budget: Budget, num_generated_keys: int):
    """Dense keys [B, N, D] from an array, a .npy / dense .csv file, or the fixed-seed generator."""
    if keys is None:
        num_generated_keys = _int_param("num_generated_keys", num_generated_keys)
        _check_limit(batch_size * num_generated_keys * query_dim, budget.max_dense_floats,
                     "the generated keys", "dense floats", "max_dense_floats")
        rng = np.random.default_rng(GENERATED_KEYS_SEED)
        value = rng.standard_normal((batch_size, num_generated_keys, query_dim), dtype=np.float32)
        description = {"generator": "random", "seed": GENERATED_KEYS_SEED,
                       "params": {"num_keys": num_generated_keys, "value_dim": query_dim,
                                  "distribution": "standard normal"}}
        return value, description, None
    if isinstance(keys, np.ndarray):
        name = "keys array"
        if keys.dtype.kind not in _NUMERIC_KINDS:
            raise InputError(f"{name}: has dtype {keys.dtype}; expected a numeric array")
        _check_limit(keys.size, budget.max_dense_floats, name, "dense floats", "max_dense_floats")
        array = keys
        description = {"array": list(keys.shape)}
    else:
        source = _Source(keys, _csv_byte_limit(budget.max_dense_floats))
        name = source.name
        try:
            if source.extension == ".npy":
                array = _read_npy(source.stream, source.size, name, kinds="biuf",
                                  max_elements=budget.max_dense_floats,
                                  budget_setting="max_dense_floats")
            elif source.extension == ".csv":
                lines = _decode_text(source, _csv_byte_limit(budget.max_dense_floats))
                array = _parse_numeric_lines(lines, name, columns=None,
                                             max_values=budget.max_dense_floats,
                                             budget_setting="max_dense_floats")
            else:
                raise InputError(
                    f"{name}: unknown key file type '{source.extension or '(none)'}'; expected "
                    ".npy or a dense .csv"
                )
        finally:
            source.close()
        description = {"file": name}
    if array.ndim not in (2, 3) or 0 in array.shape:
        raise InputError(
            f"{name}: keys of shape {array.shape}; expected a non-empty [N, D] or [B, N, D] array"
        )
    value = array[None] if array.ndim == 2 else array
    if value.dtype.kind == "f":
        _check_finite(value, name)
    value = _to_float32(value, name)
    note = None
    if value.shape[0] != batch_size:
        if value.shape[0] != 1:
            raise InputError(
                f"{name}: keys have batch size {value.shape[0]} but the queries have {batch_size}; "
                "expected the same B, or one set of keys for all"
            )
        _check_limit(batch_size * value[0].size, budget.max_dense_floats, name,
                     "dense floats after repeating per batch item", "max_dense_floats")
        value = np.repeat(value, batch_size, axis=0)
        note = f"{name}: the same keys are used for all {batch_size} batch items"
    return value, description, note


# ----------------------------------------------------------------------------------------------
# Bundles
# ----------------------------------------------------------------------------------------------


def _json_array(payload) -> np.ndarray:
    return np.frombuffer(json.dumps(payload, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)


def _array_json(array: np.ndarray, where: str):
    if array.ndim != 1:
        raise InputError(f"{where}: has shape {array.shape}; expected 1-D UTF-8 JSON bytes")
    try:
        return json.loads(array.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise InputError(f"{where}: is not valid UTF-8 JSON ({error})") from error


def save_inputs(example: Example, path_or_file, extras: dict[str, Any] | None = None) -> None:
    """Write an example (and optional extra arrays) as an sdattn bundle (.npz, no pickles).

    The bundle layout is documented in the README ("Input formats"). `load_inputs` reads it back
    exactly: same arrays, dtypes, labels and metadata.

    Args:
        example: a valid example (checked with `validate_example`).
        path_or_file: a path ending in .npz, or a writable binary file object.
        extras: optional named payloads stored beside the example, e.g. a run's config and
            results. A numpy array (numeric, bool or string dtype) is stored as member
            `extra.<name>`; any other JSON-serialisable value as JSON in `extra_json.<name>`.
            Read them back with `load_inputs(..., return_extras=True)`.

    Raises:
        InputError: invalid or empty example, non-JSON metadata, bad extra name, or an
            object-dtype extra.
    """
    validate_example(example)
    _require_entries(example.nnz, "the example")
    try:
        metadata_json = _json_array(_json_ready(example.metadata))
    except (TypeError, ValueError) as error:
        raise InputError(
            f"metadata is not JSON-serialisable ({error}); expected plain JSON values"
        ) from error
    arrays = {
        "bundle_info": _json_array({"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION}),
        "query_indices": np.asarray(example.query_indices, dtype=np.int64),
        "query_values": np.asarray(example.query_values, dtype=np.float32),
        "query_shape": np.asarray(example.query_shape, dtype=np.int64),
        "value": np.asarray(example.value, dtype=np.float32),
        "query_mask": np.asarray(example.query_mask, dtype=bool),
        "value_mask": np.asarray(example.value_mask, dtype=bool),
        "metadata": metadata_json,
    }
    if example.query_labels is not None:
        arrays["query_labels"] = _json_array(list(example.query_labels))
    if example.key_labels is not None:
        arrays["key_labels"] = _json_array(list(example.key_labels))
    if example.ground_truth is not None:
        arrays["ground_truth"] = np.asarray(example.ground_truth, dtype=np.int32)
    for extra_name, payload in (extras or {}).items():
        if not isinstance(extra_name, str) or not _EXTRA_NAME.match(extra_name):
            raise InputError(
                f"extra name {extra_name!r} is invalid; expected letters, digits, '_', '-' or '.'"
            )
        if isinstance(payload, np.ndarray):
            if payload.dtype.kind not in "biufcUS" or payload.dtype.fields is not None:
                raise InputError(
                    f"extra '{extra_name}' has dtype {payload.dtype}; expected a numeric, bool or "
                    "string array (object arrays would need pickles)"
                )
            arrays[f"extra.{extra_name}"] = payload
        else:
            try:
                arrays[f"extra_json.{extra_name}"] = _json_array(_json_ready(payload))
            except (TypeError, ValueError) as error:
                raise InputError(
                    f"extra '{extra_name}' is neither a numpy array nor JSON-serialisable ({error})"
                ) from error
    if isinstance(path_or_file, (str, os.PathLike)):
        path = pathlib.Path(path_or_file)
        if path.suffix.lower() != ".npz":
            raise InputError(f"{path}: a bundle path must end in .npz")
        with open(path, "wb") as stream:
            np.savez_compressed(stream, **arrays)
    else:
        np.savez_compressed(path_or_file, **arrays)


def _load_bundle(archive, members, source: _Source, budget: Budget):
    name = source.name

    def member(key, kinds, limit, setting="max_dense_floats", required=True):
        if key not in members:
            if required:
                raise InputError(f"{name}: the sdattn bundle is missing array '{key}'")
            return None
        return _npz_member(archive, members, key, name, kinds=kinds, max_elements=limit,
                           budget_setting=setting)

    json_limit = 8 * budget.max_dense_floats  # bytes of label / metadata JSON
    info = _array_json(member("bundle_info", "u", 4096), f"{name}, array 'bundle_info'")
    if not isinstance(info, dict) or info.get("format") != BUNDLE_FORMAT:
        raise InputError(f"{name}: array 'bundle_info' does not describe an sdattn bundle")
    if not isinstance(info.get("version"), int) or info["version"] > BUNDLE_VERSION:
        raise InputError(
            f"{name}: bundle version {info.get('version')!r} is newer than this sdattn reads "
            f"(up to {BUNDLE_VERSION}); expected a bundle from this version"
        )
    shape_array = member("query_shape", "iu", 3)
    if shape_array.shape != (3,):
        raise InputError(f"{name}: array 'query_shape' is {shape_array.tolist()}; expected [B, M, Dq]")
    shape = tuple(int(size) for size in shape_array)
    _check_query_shape(shape, name, budget)
    indices = member("query_indices", "iu", 3 * budget.max_nonzeros, "max_nonzeros")
    values = member("query_values", "biuf", budget.max_nonzeros, "max_nonzeros")
    value = member("value", "biuf", budget.max_dense_floats)
    query_mask = member("query_mask", "b", budget.max_dense_floats)
    value_mask = member("value_mask", "b", budget.max_dense_floats)
    truth = member("ground_truth", "iu", budget.max_dense_floats, required=False)
    metadata = _array_json(member("metadata", "u", json_limit), f"{name}, array 'metadata'")
    labels = {}
    for key in ("query_labels", "key_labels"):
        raw = member(key, "u", json_limit, required=False)
        labels[key] = None if raw is None else _array_json(raw, f"{name}, array '{key}'")
    if indices.ndim != 2 or indices.shape[1:] != (3,):
        raise InputError(f"{name}: array 'query_indices' has shape {indices.shape}; expected [nnz, 3]")
    if values.shape != (indices.shape[0],):
        raise InputError(
            f"{name}: array 'query_values' has shape {values.shape}; expected [{indices.shape[0]}]"
        )
    if value.ndim != 3:
        raise InputError(f"{name}: array 'value' has shape {value.shape}; expected [B, N, D]")
    if values.dtype.kind == "f":
        _check_finite(values, f"{name}, array 'query_values'")
    if value.dtype.kind == "f":
        _check_finite(value, f"{name}, array 'value'")
    _check_index_range(indices, shape, f"{name}, array 'query_indices'", ("b", "m", "d"))
    notes = []
    canonical_indices, canonical_values, merged = _canonical_coo(indices, values, name)
    if merged or not np.array_equal(canonical_indices, indices):
        summed = f" and {merged} duplicates summed" if merged else ""
        notes.append(f"{name}: query entries were sorted{summed}")
    if truth is not None and truth.ndim == 3:
        bad = np.argwhere((truth < -1) | (truth >= max(value.shape[1], 0)))
        if bad.size:
            position = [int(x) for x in bad[0]]
            raise InputError(
                f"{name}, array 'ground_truth' entry {position}: {int(truth[tuple(position)])} is "
                f"out of range; expected -1 or a key position in [0, {value.shape[1]})"
            )
    if not isinstance(metadata, dict):
        raise InputError(f"{name}: array 'metadata' is not a JSON object")
    if notes:
        metadata.setdefault("notes", []).extend(notes)
    example = Example(
        query_indices=canonical_indices,
        query_values=canonical_values,
        query_shape=shape,
        value=_to_float32(value, f"{name}, array 'value'"),
        query_mask=query_mask.astype(bool),
        value_mask=value_mask.astype(bool),
        query_labels=labels["query_labels"],
        key_labels=labels["key_labels"],
        ground_truth=None if truth is None else truth.astype(np.int32),
        metadata=metadata,
    )
    try:
        validate_example(example, budget=budget)
    except InputError as error:
        raise InputError(f"{name}: {error}") from error
    _require_entries(example.nnz, name)
    extras = {}
    for key in members:
        if key.startswith("extra."):
            extras[key[len("extra."):]] = np.array(member(key, "biufcUS", budget.max_dense_floats))
        elif key.startswith("extra_json."):
            extras[key[len("extra_json."):]] = _array_json(
                member(key, "u", json_limit), f"{name}, array '{key}'"
            )
    return example, extras


# ----------------------------------------------------------------------------------------------
# The public loader
# ----------------------------------------------------------------------------------------------


def load_inputs(
    path_or_file,
    *,
    keys=None,
    budget: Budget | None = None,
    num_generated_keys: int = GENERATED_KEYS_COUNT,
    return_extras: bool = False,
):
    """Load an example from a file; every problem raises `InputError`, and nothing is unpickled.

    Formats, by extension (see the README section "Input formats"):
    - `.npz`: an sdattn bundle (from `save_inputs`), or a `scipy.sparse.save_npz` matrix
      (csr, csc or coo; 2-D means B=1, a 3-D coo array is [B, M, Dq]) holding the queries.
    - `.mtx`: Matrix Market queries (as `scipy.io.mmwrite` writes them), B=1.
    - `.csv`: COO triples `row,col,value` (or `batch,row,col,value`), header optional; the query
      shape is inferred from the largest indices.
    - `.npy`: a dense query array [M, Dq] or [B, M, Dq], converted to sparse with an
      `InputWarning` and a note in `metadata["notes"]`.

    Sizes are checked against the budget from headers before anything large is allocated.

    Args:
        path_or_file: a path, or a binary file object with a `.name` (e.g. Streamlit's
            UploadedFile).
        keys: dense keys for query-only formats: an array [N, D] or [B, N, D], or a path / file
            object of a `.npy` or dense `.csv` (one key per line). None generates
            `num_generated_keys` standard-normal keys of size Dq with a fixed seed, recorded in
            `metadata["keys"]`. Ignored (with a warning) for bundles, which carry their keys.
        budget: size limits; default `Budget()` (5M non-zeros, 50M dense floats).
        num_generated_keys: N for generated keys.
        return_extras: also return the bundle's extra payloads (see `save_inputs`).

    Returns:
        The `Example`, or `(example, extras)` when `return_extras` is True (`extras` is empty for
        non-bundle files).

    Raises:
        InputError: an unknown extension, an unreadable, truncated or malicious file, bad values
            or indices, empty inputs, or sizes over the budget.
    """
    if budget is None:
        budget = DEFAULT_BUDGET
    elif not isinstance(budget, Budget):
        raise InputError(f"budget must be an sdattn Budget; received {type(budget).__name__}")
    source = None
    try:
        source = _Source(path_or_file, max(_csv_byte_limit(4 * budget.max_nonzeros),
                                           16 * budget.max_dense_floats))
        example, extras = _load_from_source(source, keys, budget, num_generated_keys)
    except InputError:
        raise
    except Exception as error:  # a bad file must never crash the app: anything else is an input error
        name = getattr(source, "name", "the input")
        raise InputError(
            f"{name}: cannot read the file ({type(error).__name__}: {error}); expected a "
            f"valid {getattr(source, 'extension', '') or 'input'} file"
        ) from error
    finally:
        if source is not None:
            source.close()
    return (example, extras) if return_extras else example


_QUERY_LOADERS = {".npy": _load_npy_queries, ".mtx": _load_mtx_queries, ".csv": _load_csv_queries}


def _load_from_source(source: _Source, keys, budget: Budget, num_generated_keys: int):
    name = source.name
    if source.extension not in (".npz", *_QUERY_LOADERS):
        raise InputError(
            f"{name}: unknown file type '{source.extension or '(none)'}'; expected .npz (bundle or "
            "scipy.sparse), .mtx (Matrix Market), .csv (row,col,value triples) or .npy (dense array)"
        )
    if source.size == 0:
        raise InputError(f"{name}: the file is empty")
    if source.extension == ".npz":
        archive, members = _load_npz(source, budget)
        if "bundle_info" in members:
            if keys is not None:
                warnings.warn(f"{name}: a bundle carries its own keys; `keys` was ignored",
                              InputWarning, stacklevel=3)
            return _load_bundle(archive, members, source, budget)
        if "format" not in members:
            raise InputError(
                f"{name}: holds arrays {sorted(members)[:10]}; expected an sdattn bundle (with "
                "'bundle_info') or a scipy.sparse.save_npz matrix (with 'format', 'shape', 'data')"
            )
        indices, values, shape, query_format, notes = _load_scipy_npz_queries(
            archive, members, source, budget
        )
    else:
        indices, values, shape, query_format, notes = _QUERY_LOADERS[source.extension](source, budget)
    _check_limit(indices.shape[0], budget.max_nonzeros, name, "non-zeros", "max_nonzeros")
    value, keys_description, keys_note = _load_keys(keys, shape[0], shape[2], budget,
                                                    num_generated_keys)
    if keys_note:
        notes.append(keys_note)
    num_queries, num_keys = shape[1], value.shape[1]
    metadata = {
        "generator": None,  # marks data the user brought, as opposed to generate_inputs output
        "source": f"file:{name}",
        "query_format": query_format,
        "keys": keys_description,
        "notes": notes,
    }
    example = _make_example(
        indices, values, shape, value,
        query_labels=_default_labels("q", num_queries) if num_queries <= DEFAULT_LABEL_LIMIT else None,
        key_labels=_default_labels("k", num_keys) if num_keys <= DEFAULT_LABEL_LIMIT else None,
        metadata=metadata,
    )
    validate_example(example, budget=budget)
    return example, {}
