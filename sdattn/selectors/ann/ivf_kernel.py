"""The compiled loop of `ann`'s sparse IVF search: inverted-file search of sparse query rows, in
Numba.

Imported only when that search first runs, so `import sdattn` does not pay for Numba. Compiled
on first call and cached on disk (`cache=True`).
"""

import numba
import numpy as np

from sdattn.selectors.cosine_kernel import _insert


@numba.njit(nogil=True, cache=True)
def search_rows(row_ptr, cols, vals, centroids_t, list_offsets, list_keys_t, list_ids, nprobe,
                out_scores, out_ids):
    """Writes each query row's `fetch` best keys (`fetch = out_scores.shape[1]`) among the keys
    of its `nprobe` nearest lists.

    A query row with z stored values is compared with a list's centroid, and with each key of
    the lists it probes, in z multiply-adds instead of the D of a dense inner product: only the
    row's own features are read, each as a contiguous run of the list's transposed keys. This
    is what Faiss's `IndexIVFFlat.search` computes, with inner products, for a dense row.

    Lists are probed by decreasing centroid score (the lower list first on ties). Keys arrive in
    list order, and a full row takes a key only when it scores strictly above the row's last
    slot; equal scores are put in position order afterwards (`AnnSelector._ties_by_position`).

    Args:
        row_ptr: int64 `[R + 1]`, CSR row starts of the query rows.
        cols: int64 `[nnz]` feature of each stored value.
        vals: float32 `[nnz]` stored values (the rows as the index expects them: unit norm for
            the cosine metric).
        centroids_t: float32 `[D, L]`, the L list centroids as columns.
        list_offsets: int64 `[L + 1]`, where each list's keys start (in rows).
        list_keys_t: float32 `[n·D]`, the indexed rows list after list, each list of s rows
            stored transposed (`[D, s]`, from `D·list_offsets[l]` on): a stored value of a row
            then adds one contiguous run of s floats to the list's scores.
        list_ids: int64 `[n]`, the index id of each of those rows.
        nprobe: lists probed per row, 1 <= nprobe <= L.
        out_scores: float32 `[R, fetch]`, written: inner products by decreasing value, -inf in
            slots left empty (the probed lists held fewer than `fetch` keys).
        out_ids: int64 `[R, fetch]`, written: index ids, -1 in slots left empty.
    """
    rows = row_ptr.shape[0] - 1
    num_lists = list_offsets.shape[0] - 1
    coarse = np.empty(num_lists, np.float32)
    probe_scores = np.empty(nprobe, np.float32)
    probe_lists = np.empty(nprobe, np.int64)
    dim = centroids_t.shape[0]
    longest = 0
    for lst in range(num_lists):
        longest = max(longest, list_offsets[lst + 1] - list_offsets[lst])
    list_scores = np.empty(longest, np.float32)
    for r in range(rows):
        first, last = row_ptr[r], row_ptr[r + 1]
        # Centroid scores: one contiguous row of centroids_t per stored value.
        coarse[:] = 0.0
        for p in range(first, last):
            weight = vals[p]
            centroid_row = centroids_t[cols[p]]
            for lst in range(num_lists):
                coarse[lst] += weight * centroid_row[lst]
        probed = 0
        for lst in range(num_lists):
            if probed < nprobe or coarse[lst] > probe_scores[nprobe - 1]:
                probed = _insert(probe_scores, probe_lists, probed, coarse[lst], lst)
        # The probed lists' keys, scored a list at a time, then into the row's sorted slots.
        slot_scores = out_scores[r]
        slot_ids = out_ids[r]
        fetch = slot_scores.shape[0]
        filled = 0
        for a in range(probed):
            lst = probe_lists[a]
            start, stop = list_offsets[lst], list_offsets[lst + 1]
            size = stop - start
            scores = list_scores[:size]
            scores[:] = 0.0
            for p in range(first, last):
                weight = vals[p]
                run = list_keys_t[dim * start + cols[p] * size:dim * start + (cols[p] + 1) * size]
                for i in range(size):
                    scores[i] += weight * run[i]
            for i in range(size):
                if filled < fetch or scores[i] > slot_scores[fetch - 1]:
                    filled = _insert(slot_scores, slot_ids, filled, scores[i], list_ids[start + i])
        for slot in range(filled, fetch):
            slot_scores[slot] = -np.inf
            slot_ids[slot] = -1
