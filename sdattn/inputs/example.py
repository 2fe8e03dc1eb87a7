"""The `Example` container, its validation, and the errors and budgets every input check uses.
An Example holds one canonical sparse query, dense keys/values, masks, labels, ground truth and metadata."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import field

import numpy as np
import scipy.sparse

class InputError(ValueError):
    """A file or example that sdattn cannot use.

    The message says what was wrong, where (file, array, row or line) and what was expected, so a
    person can fix the input. It is a `ValueError`, so generic handlers still catch it.
    """


class InputWarning(UserWarning):
    """An input was accepted after a conversion the user should know about (e.g. dense → sparse)."""


@dataclasses.dataclass(frozen=True)
class Budget:
    """Size limits checked from file headers before anything is allocated or decoded.

    Args:
        max_nonzeros: most stored entries of the sparse query (default 5,000,000).
        max_dense_floats: most elements of any dense array: the keys `[B, N, D]`, a dense query
            file, the masks `[B, M]`, or the feature size `Dq` (default 50,000,000, i.e. 200 MB of
            float32).
        max_bytes: most bytes one file may decode to, all together: every array's
            elements x itemsize, every JSON member, a text file's size, and each zip member's
            declared (and actually inflated) size (default 512 MiB). Checked before the bytes are
            read, so memory stays bounded by the budget rather than by what a file claims.
    """

    max_nonzeros: int = 5_000_000
    max_dense_floats: int = 50_000_000
    max_bytes: int = 512 * 2**20

    def __post_init__(self):
        for name in ("max_nonzeros", "max_dense_floats", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"Received an invalid value for argument `{name}`, expected a positive "
                    f"integer. Received: {name}={value!r}"
                )


DEFAULT_BUDGET = Budget()


def _cut(text: str, limit: int = 60) -> str:
    """`text` itself (no quotes) for a message, cut to about `limit` characters."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _echo(value, limit: int = 60) -> str:
    """`repr(value)` for a message, cut to about `limit` characters: files can hold huge strings."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


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
        # A dict or a set iterates over strings too, but has no order to name rows with.
        if (isinstance(labels, (str, bytes, dict, set, frozenset)) or not hasattr(labels, "__len__")
                or not all(isinstance(label, str) for label in labels)):
            raise InputError(f"{name} is a {type(labels).__name__}; expected a list of strings")
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
        from sdattn.inputs.npy import kinds_for_message  # npy imports this module

        raise InputError(f"{name} has dtype {array.dtype}; expected {kinds_for_message(kinds)}")
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


