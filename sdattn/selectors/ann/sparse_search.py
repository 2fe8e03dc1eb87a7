"""`ann`'s IVF search for sparse query rows: the inverted lists of a Faiss `IndexIVFFlat`, copied
list after list, searched by a compiled loop that reads only each row's stored features.

Faiss compares every query row with every centroid and every key of a probed list in D
multiply-adds, zeros included. A Config P row has 8 of 256 features, so `ivf_kernel.search_rows`
does 8 instead, for the same inner products (benchmarks/NOTES.md, "`ann`").
"""

import threading
from typing import NamedTuple

import numpy as np

from sdattn import budgets


class InvertedLists(NamedTuple):
    """A flat IVF index's lists in arrays `ivf_kernel.search_rows` reads.

    Attributes:
        centroids_t: float32 `[D, L]`, the coarse quantizer's L centroids as columns.
        offsets: int64 `[L + 1]`, the row where each list starts (in `ids`; in `keys_t` at
            `D·offsets[l]`).
        keys_t: float32 `[n·D]`, the indexed rows (normalised, for cosine) list after list,
            each list of s rows transposed to `[D, s]` (from `D·offsets[l]` on).
        ids: int64 `[n]`, the index id of each row.
    """

    centroids_t: np.ndarray
    offsets: np.ndarray
    keys_t: np.ndarray
    ids: np.ndarray


def inverted_lists(index):
    """A copy of a CPU `IndexIVFFlat`'s lists and centroids, or None for any other index.

    Args:
        index: a Faiss index.

    Returns:
        `InvertedLists`, or None (8-bit codes, HNSW, an exact or a GPU index).
    """
    import faiss

    if not isinstance(index, faiss.IndexIVFFlat):  # GPU indexes are other classes
        return None
    dim, num_lists, lists = index.d, index.nlist, index.invlists
    sizes = np.array([lists.list_size(lst) for lst in range(num_lists)], np.int64)  # [L]
    offsets = np.zeros(num_lists + 1, np.int64)  # [L + 1]
    np.cumsum(sizes, out=offsets[1:])
    keys_t = np.empty(int(offsets[-1]) * dim, np.float32)  # [n·D]
    ids = np.empty(int(offsets[-1]), np.int64)  # [n]
    for lst in np.flatnonzero(sizes):
        size, start = int(sizes[lst]), int(offsets[lst])
        ids[start:start + size] = faiss.rev_swig_ptr(lists.get_ids(int(lst)), size)
        codes = faiss.rev_swig_ptr(lists.get_codes(int(lst)), size * index.code_size)  # uint8 [size·D·4]
        block = keys_t[dim * start:dim * (start + size)].reshape(dim, size)  # [D, size], a view
        block[:] = codes.view(np.float32).reshape(size, dim).T  # [size, D] -> [D, size]
    centroids = index.quantizer.reconstruct_n(0, num_lists)  # [L, D]
    return InvertedLists(np.ascontiguousarray(centroids.T), offsets, keys_t, ids)


def sparse_rows(row_queries, density=None):
    """The rows in CSR form when few enough of their entries are non-zero, else None.

    Args:
        row_queries: float32 `[R, D]` dense query rows.
        density: the largest share of non-zero entries searched sparsely; defaults to
            `budgets.ANN_SPARSE_SEARCH_DENSITY`.

    Returns:
        `(row_ptr, cols, vals)`: int64 `[R + 1]`, int64 `[nnz]`, float32 `[nnz]`; or None.
    """
    density = budgets.ANN_SPARSE_SEARCH_DENSITY if density is None else density
    if np.count_nonzero(row_queries) > density * row_queries.size:
        return None
    rows, cols = np.nonzero(row_queries)  # row-major: rows ascending
    row_ptr = np.zeros(row_queries.shape[0] + 1, np.int64)  # [R + 1]
    np.cumsum(np.bincount(rows, minlength=row_queries.shape[0]), out=row_ptr[1:])
    return row_ptr, cols.astype(np.int64), np.ascontiguousarray(row_queries[rows, cols], np.float32)


def search(lists, rows, fetch, nprobe):
    """What `IndexIVFFlat.search(..., nprobe)` returns, for CSR rows.

    Args:
        lists: `InvertedLists`.
        rows: `(row_ptr, cols, vals)` from `sparse_rows`.
        fetch: results per row.
        nprobe: lists probed per row (at most the number of lists).

    Returns:
        `(scores, ids)`: float32 and int64 `[R, fetch]`, by decreasing score; -inf and -1 in
        slots the probed lists could not fill.
    """
    from sdattn.selectors.ann import ivf_kernel  # imports Numba on first use

    row_ptr, cols, vals = rows
    num_rows = row_ptr.shape[0] - 1
    scores = np.empty((num_rows, fetch), np.float32)  # [R, fetch]
    ids = np.empty((num_rows, fetch), np.int64)  # [R, fetch]
    nprobe = max(1, min(int(nprobe), lists.offsets.shape[0] - 1))
    ivf_kernel.search_rows(row_ptr, cols, vals, lists.centroids_t, lists.offsets, lists.keys_t,
                           lists.ids, nprobe, scores, ids)
    return scores, ids


class LazyLists:
    """An index's `InvertedLists`, copied on the first sparse search (dense queries never pay
    for the copy), once even when several threads search the index at once."""

    def __init__(self, index):
        self._index = index
        self._lists = None
        self._done = False
        self._lock = threading.Lock()

    def get(self):
        """`inverted_lists(index)`, computed on the first call."""
        with self._lock:
            if not self._done:
                self._lists = inverted_lists(self._index)
                self._done = True
            return self._lists
