"""The `ann` selector: approximate nearest-neighbour key selection through a Faiss index.
Shared by all heads; one index per key set, cached by content, searched on the host (outside the graph)."""

import collections
import math
import threading
import time
import warnings

import numpy as np
import xxhash
from keras import ops

from sdattn import backend, budgets, workers
from sdattn import arguments
from sdattn.selectors.ann import sparse_search
from sdattn.selectors.base import Selector, register_selector
from sdattn.selectors.cosine import CosineSelector

_METRICS = ("cosine", "ip")
_INDEX_TYPES = ("ivf", "hnsw", "exact")
_STORAGES = ("auto", "flat", "sq8")

_gpu_lock = threading.Lock()
_gpu_resources = None


def _faiss():
    # Imported on first use, so that `import sdattn` never pays for (or needs) Faiss.
    import faiss

    return faiss


def _gpu_resource():
    """The process-wide `faiss.StandardGpuResources`, or None when Faiss sees no GPU."""
    global _gpu_resources
    faiss = _faiss()
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() <= 0:
        return None
    with _gpu_lock:
        if _gpu_resources is None:
            _gpu_resources = faiss.StandardGpuResources()
    return _gpu_resources


class _IndexEntry:
    """A built index over one batch item's valid keys, and what searching it needs.

    Attributes:
        index: the Faiss index (ids 0..n-1 in the order the valid keys were added).
        key_ids: int64 `[n]` key positions of the index ids, or None when every key is valid.
        num_valid: n, the number of indexed keys.
        kind: "exact", "ivf" or "hnsw".
        storage: "flat" (the index's scores are exact) or "sq8" (candidates are re-scored).
        key_norms: float32 `[N]` key norms for re-scoring sq8 candidates by cosine, else None.
        build_seconds: wall time spent building it.
        lists: `sparse_search.LazyLists` of the index: its inverted lists as arrays, for
            searching sparse query rows (`get()` is None for any index but a CPU
            `IndexIVFFlat`).
    """

    def __init__(self, index, key_ids, num_valid, kind, storage, key_norms, build_seconds):
        self.index = index
        self.lists = sparse_search.LazyLists(index)
        self.key_ids = key_ids
        self.num_valid = num_valid
        self.kind = kind
        self.storage = storage
        self.key_norms = key_norms
        self.build_seconds = build_seconds


class _IndexCache:
    """A thread-safe bounded LRU of built indexes (MirroredStrategy replicas search concurrently).

    A plain object rather than a dict attribute, so that Keras does not track or serialize it.
    """

    def __init__(self, capacity):
        self.capacity = capacity
        self._entries = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, fingerprint):
        with self._lock:
            entry = self._entries.get(fingerprint)
            if entry is not None:
                self._entries.move_to_end(fingerprint)
            return entry

    def put(self, fingerprint, entry):
        with self._lock:
            self._entries[fingerprint] = entry
            self._entries.move_to_end(fingerprint)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def clear(self):
        with self._lock:
            self._entries.clear()

    def __len__(self):
        with self._lock:
            return len(self._entries)


def _fingerprint(keys, key_valid):
    """A content hash of one batch item's keys (and key mask), cheap enough to take every call.

    XXH3-128 (memory-bandwidth bound, unlike CRC-32) over every byte, the shape and dtype, and
    the key mask: any change to any key finds a different index.
    """
    keys = np.ascontiguousarray(keys)
    digest = xxhash.xxh3_128()
    digest.update(repr((keys.shape, keys.dtype.str)).encode())
    digest.update(memoryview(keys).cast("B"))
    if key_valid is not None:
        digest.update(np.packbits(key_valid).tobytes())
    return digest.digest()


def _single_threaded(function, *args):
    """Runs `function(*args)` with Faiss (OpenMP) limited to the calling thread. OpenMP's
    thread count is per thread, so this leaves other threads' Faiss calls as they were."""
    _faiss().omp_set_num_threads(1)
    return function(*args)


def _fingerprints(keys, key_mask):
    """`_fingerprint` of every batch item, hashed in parallel threads."""
    items = [(keys[item], None if key_mask is None else np.asarray(key_mask[item], bool))
             for item in range(keys.shape[0])]
    return workers.parallel_map(lambda item: _fingerprint(*item), items)


def _fingerprint_rows(keys, key_mask=None):
    """`_fingerprints` as a uint8 `[B, 16]` array, for passing between graph ops."""
    digests = _fingerprints(np.asarray(keys), key_mask)
    return np.frombuffer(b"".join(digests), np.uint8).reshape(len(digests), 16)


def _add_to_exact_lists(index, rows_of, chunks):
    """Adds rows to an IVF index as `index.add` would (same lists, same order, same codes), with
    each inverted list allocated once at its final size.

    `index.add` appends chunk after chunk, and each list's buffer grows by doubling: at 1M keys
    that left about 112 MB of unused capacity per sq8 index (376 MB for 264 MB of codes and ids).
    Here a first pass assigns every row to its list, each list is sized exactly, and a second pass
    encodes the rows and writes each chunk's rows of a list in one call.

    Args:
        index: a trained, empty `faiss.IndexIVF*` with array inverted lists.
        rows_of: `(start, stop)` → float32 rows `[stop - start, D]` (ids start..stop - 1).
        chunks: the `(start, stop)` ranges covering the rows, in order.
    """
    faiss = _faiss()
    ivf = faiss.extract_index_ivf(index)
    lists = np.concatenate([ivf.quantizer.assign(rows_of(start, stop), 1).ravel()
                            for start, stop in chunks]).astype(np.int64)  # [n]
    counts = np.bincount(lists, minlength=ivf.nlist)
    invlists = ivf.invlists
    for list_no in np.flatnonzero(counts):
        invlists.resize(int(list_no), int(counts[list_no]))
    filled = np.zeros(ivf.nlist, np.int64)
    for start, stop in chunks:
        rows = np.ascontiguousarray(rows_of(start, stop), np.float32)
        chunk_lists = np.ascontiguousarray(lists[start:stop])
        codes = np.empty((stop - start, invlists.code_size), np.uint8)
        ivf.encode_vectors(stop - start, faiss.swig_ptr(rows), faiss.swig_ptr(chunk_lists), faiss.swig_ptr(codes), False)
        order = np.argsort(chunk_lists, kind="stable")  # each list's rows in id order, as add keeps them
        sorted_lists = chunk_lists[order]
        ids = np.ascontiguousarray(np.arange(start, stop, dtype=np.int64)[order])
        codes = np.ascontiguousarray(codes[order])
        firsts = np.flatnonzero(np.r_[True, sorted_lists[1:] != sorted_lists[:-1]])
        for first, last in zip(firsts, np.r_[firsts[1:], sorted_lists.size]):
            list_no, count = int(sorted_lists[first]), int(last - first)
            invlists.update_entries(list_no, int(filled[list_no]), count,
                                    faiss.swig_ptr(ids[first:last]), faiss.swig_ptr(codes[first:last]))
            filled[list_no] += count
    index.ntotal = ivf.ntotal = int(lists.size)


@register_selector(
    "ann", "Approximate nearest neighbours of the raw query among the raw keys (Faiss IVF or "
    "HNSW, cosine or inner product), shared by all heads: the fast path at large N.")
class AnnSelector(Selector):
    """Shared selection by approximate nearest-neighbour search in a Faiss index.

    The raw query rows (a sparse query is densified row by row, in NumPy) are searched among
    the raw key rows, by cosine similarity or inner product, so no key is projected to select.
    When the query and key feature sizes differ it falls back to the head-averaged projected
    query and keys (as `cosine` does); those change with the weights, so the index is then
    rebuilt whenever they do.

    One index is built per batch item over its valid keys and kept in a bounded LRU cache keyed
    by a content hash of the keys (and key mask), so calling the layer again on the same tokens
    only searches. With float32 storage the index's scores are the exact similarities; with
    8-bit codes the candidates are re-scored exactly from the raw keys, so the order of the
    selected keys is exact either way.
    Masks are honoured: padded keys are never indexed; causal and explicit attention masks
    filter the candidates (more than k are fetched), and a query left with fewer allowed
    candidates than it could have is answered by an exact search over its allowed keys, so a
    slot is only empty when fewer than k keys are allowed at all. Masked query rows get -1.

    Selection runs outside the graph, on the host: eagerly in NumPy, or through the backend's
    host callback (`sdattn.backend.host_callback`: TF's `numpy_function` inside a TF graph,
    JAX's `pure_callback` under jit); on TF it then cannot be compiled with XLA, and it gives
    no gradient, as no selection does. With a GPU that Faiss sees, IVF and exact indexes move to it.
    On the CPU, sparse query rows (at most `budgets.ANN_SPARSE_SEARCH_DENSITY` of the entries
    non-zero) searched in a flat IVF index are compared from their stored features only
    (`sparse_search`): the same inner products as Faiss's, for a copy of the index's lists
    made on the first such search.

    Args:
        metric: `"cosine"` (rows are L2-normalised) or `"ip"` (raw inner product).
        index_type: `"ivf"` (inverted lists, Faiss `IndexIVFFlat`/`IndexIVFScalarQuantizer`),
            `"hnsw"` (graph, `IndexHNSWFlat`/`IndexHNSWSQ`) or `"exact"` (`IndexFlatIP`).
        nlist: IVF lists; None gives round(sqrt(n)), which balances the two costs of a
            query, comparing it with every list's centroid (nlist·D) and scanning the keys of
            a probed list (n/nlist·D).
        nprobe: IVF lists searched per query; None gives the largest of ceil(nlist / 256)
            and ceil(4·k·nlist / n) (lists holding about 4·k keys): enough at large N, where
            a topic spans several lists (recall on Config P: benchmarks/NOTES.md). A row whose
            probed lists hold fewer than k keys (lists are uneven) is searched again with 4×
            the lists.
        ef_search: HNSW search breadth; None gives max(64, 2·k).
        hnsw_neighbors: HNSW graph degree (Faiss's M).
        exact_threshold: at most this many valid keys, search exactly: an index would not
            be faster, and k-means needs data to train. With the cosine metric and a static
            N at most this, the exact search stays in TF (the `cosine` selector's streamed
            top-k, which needs no copy out of TF and no index); otherwise Faiss searches an
            `IndexFlatIP`.
        storage: `"flat"` (float32 vectors), `"sq8"` (8-bit codes, 4× smaller) or `"auto"`
            (flat up to 256 MB of vectors per batch item, sq8 above: N = 1M at D = 256 fits
            in 256 MB per item instead of 1 GB).
        oversample: with masks to filter or 8-bit codes to re-score, fetch ceil(k·oversample)
            candidates instead of k.
        train_points_per_centroid: IVF k-means trains on at most this many keys per list:
            32 (Faiss's default is 256) bounds the build at 1M keys to a sample of 32K keys,
            at no recall cost on Config P (benchmarks/NOTES.md).
        kmeans_iterations: IVF k-means iterations (10: cheaper than Faiss's 25, same recall on
            Config P).
        cache_size: indexes kept (one per batch item and key set) before the least recently
            used is dropped.
        use_gpu: move IVF and exact indexes to the GPU when Faiss sees one.
        epsilon: added to norms, so that all-zero rows score 0, not NaN (as `cosine`).
        **kwargs: base `Selector` / `keras.layers.Layer` arguments.
    """

    # Faiss searches in a host callback. (At most `exact_threshold` keys the search runs in TF,
    # where the ordering costs nothing either.)
    selects_outside_tf = True

    def __init__(self, metric="cosine", index_type="ivf", nlist=None, nprobe=None, ef_search=None,
                 hnsw_neighbors=32, exact_threshold=8192, storage="auto", oversample=2.0,
                 train_points_per_centroid=32, kmeans_iterations=10, cache_size=8, use_gpu=True,
                 epsilon=1e-9, **kwargs):
        super().__init__(**kwargs)
        self.metric = arguments.choice("metric", metric, _METRICS)
        self.index_type = arguments.choice("index_type", index_type, _INDEX_TYPES)
        self.nlist = arguments.integer("nlist", nlist, minimum=1, allow_none=True)
        self.nprobe = arguments.integer("nprobe", nprobe, minimum=1, allow_none=True)
        self.ef_search = arguments.integer("ef_search", ef_search, minimum=1, allow_none=True)
        self.hnsw_neighbors = arguments.integer("hnsw_neighbors", hnsw_neighbors, minimum=2)
        self.exact_threshold = arguments.integer("exact_threshold", exact_threshold, minimum=0)
        self.storage = arguments.choice("storage", storage, _STORAGES)
        self.oversample = arguments.real("oversample", oversample, low=1)
        self.train_points_per_centroid = arguments.integer("train_points_per_centroid", train_points_per_centroid, minimum=1)
        self.kmeans_iterations = arguments.integer("kmeans_iterations", kmeans_iterations, minimum=1)
        self.cache_size = arguments.integer("cache_size", cache_size, minimum=1)
        self.use_gpu = arguments.boolean("use_gpu", use_gpu)
        self.epsilon = arguments.real("epsilon", epsilon, low=0, expected="a non-negative number")
        self._index_cache = _IndexCache(self.cache_size)
        # The small-N exact fallback in TF (same cosine, same epsilon, same tie order).
        self._exact_cosine = CosineSelector(epsilon=self.epsilon)

    def build(self, query_shape=None, key_shape=None, num_heads=None, key_dim=None):
        # The exact fallback has no weights; built with this selector, so that Keras (JAX's
        # `predict`, which builds any unbuilt layer on a batch first) finds every layer built.
        self._exact_cosine.build(query_shape, key_shape, num_heads, key_dim)
        self.built = True

    # ---- graph side ---------------------------------------------------------------------

    def _raw_space(self, context):
        return context.query.shape[-1] is not None and context.query.shape[-1] == context.key.shape[-1]

    def _exact_in_tf(self, num_keys):
        """Whether N keys are searched exactly in TF: cosine metric, and a static N of at most
        `exact_threshold` (there is then no index to build)."""
        return (self.metric == "cosine" and self.index_type != "exact"
                and isinstance(num_keys, int) and num_keys <= self.exact_threshold)

    def scores(self, context, start, stop):
        """Cosine scores for the exact TF fallback (see `exact_threshold`): `[B, 1, M, n]`."""
        return self._exact_cosine.scores(context, start, stop)

    def select(self, context, k):
        """Returns int32 `[B, S, M, k]` key positions (S = 1, or H under a per-head attention mask).

        Args:
            context: the `SelectionContext`.
            k: the static number of slots.
        """
        if self._exact_in_tf(context.num_keys):
            return self._exact_cosine.select(context, k)  # its sparse path, where it applies
        query = context.query
        if self._raw_space(context):
            keys = context.key  # [B, N, Dk]
        else:
            query = ops.mean(context.projected_query, axis=2)  # [B, M, kd]
            keys = ops.mean(context.projected_key, axis=2)  # [B, N, kd]
        keys = ops.stop_gradient(ops.cast(keys, "float32"))
        sparse = backend.is_sparse(query)
        if sparse:
            query_parts = [backend.sparse_indices(query),
                           ops.stop_gradient(ops.cast(backend.sparse_values(query), "float32")),
                           backend.sparse_dense_shape(query)]
        else:
            query_parts = [ops.stop_gradient(ops.cast(query, "float32"))]
        mask = context.mask
        optional = {"key_mask": mask.key_mask, "query_mask": mask.query_mask,
                    "attention_mask": mask.attention_mask}
        present = [name for name, tensor in optional.items() if tensor is not None]
        inputs = query_parts + [keys] + [ops.cast(optional[name], "bool") for name in present]
        causal = bool(mask.causal)

        def search(*arrays, fingerprints=None):
            arrays = list(arrays)
            if sparse:
                indices, values, dense_shape = arrays[:3]
                dense_query = np.zeros(tuple(int(s) for s in dense_shape), np.float32)
                np.add.at(dense_query, tuple(np.asarray(indices).T), values)  # duplicates add up, as in TF
                rest = arrays[3:]
            else:
                dense_query, rest = np.asarray(arrays[0], np.float32), arrays[1:]
            named = dict(zip(present, rest[1:]))
            if fingerprints is not None:
                named["fingerprints"] = [bytes(row) for row in np.asarray(fingerprints)]
            return self.search_numpy(dense_query, rest[0], k, causal=causal, **named)

        mask_heads = mask.num_mask_heads  # 1, H, or None when unknown
        batch = keys.shape[0]
        num_queries = context.num_queries if isinstance(context.num_queries, int) else None
        selected_shape = (batch, mask_heads, num_queries, k)  # [B, S, M, k]
        if backend.executing_eagerly():
            # On the tensors' own buffers: a graph callback would copy the keys (2 GB at
            # N = 1M), which is exactly the memory the fast path exists to save.
            return backend.host_callback(search, inputs, "int32", selected_shape)
        # The content hash needs the keys only: as an op of its own it runs while the query
        # side (densifying, projection) is still being computed.
        hash_inputs = [keys] + ([ops.cast(mask.key_mask, "bool")] if mask.key_mask is not None else [])
        fingerprints = backend.host_callback(_fingerprint_rows, hash_inputs, "uint8", (batch, 16))  # [B, 16]
        return backend.host_callback(lambda *arrays: search(*arrays[:-1], fingerprints=arrays[-1]),
                                     inputs + [fingerprints], "int32", selected_shape)  # [B, S, M, k]

    # ---- NumPy side -----------------------------------------------------------------------

    def index_keys(self, keys, key_mask=None):
        """Builds (or finds in the cache) the index of every batch item's keys, ahead of calls.

        Lets a benchmark or a server pay the build once, apart from query time. Only the raw
        key space is indexed here (the layer's case when Dq == Dk).

        Args:
            keys: float `[B, N, D]` array or tensor, the layer's `key` (or `value`).
            key_mask: optional bool `[B, N]`, True for a valid key.

        Returns:
            float, the seconds spent building indexes that were not cached yet.
        """
        keys = np.asarray(keys, np.float32)
        if keys.ndim != 3:
            raise ValueError(f"Argument `keys` must have rank 3, [B, N, D]. Received: keys.shape={keys.shape}")
        key_mask = None if key_mask is None else np.asarray(key_mask, bool)
        seconds = 0.0
        if self._exact_in_tf(int(keys.shape[1])):
            return seconds  # searched exactly in TF: there is no index to build
        for batch_item in range(keys.shape[0]):
            valid = None if key_mask is None else key_mask[batch_item]
            _, built_seconds = self._entry(keys[batch_item], valid)
            seconds += built_seconds
        return seconds

    def clear_cache(self):
        """Drops every cached index."""
        self._index_cache.clear()

    def search_numpy(self, query, keys, k, key_mask=None, query_mask=None, attention_mask=None,
                     causal=False, fingerprints=None):
        """The selection itself, in NumPy: the k most similar allowed keys of every query.

        Args:
            query: float32 `[B, M, D]` dense query rows.
            keys: float32 `[B, N, D]` key rows.
            k: slots per query.
            key_mask: bool `[B, N]` or None; False keys are never indexed nor selected.
            query_mask: bool `[B, M]` or None; False rows select nothing.
            attention_mask: bool `[B|1, H|1, M, N]` or None.
            causal: whether query i may only select keys j <= i.
            fingerprints: the `_fingerprint` of each batch item's keys and key mask, when the
                caller has them already (the graph hashes while the query side is computed).

        Returns:
            int32 `[B, S, M, k]` key positions by decreasing similarity (ties: lower position
            first), -1 in slots left empty; S is the attention mask's head count, else 1.
        """
        query = np.asarray(query, np.float32)
        keys = np.asarray(keys, np.float32)
        batch, num_queries, _ = query.shape
        num_keys = keys.shape[1]
        mask_heads = 1 if attention_mask is None else attention_mask.shape[1]
        selected = np.full((batch, mask_heads, num_queries, k), -1, np.int32)  # [B, S, M, k]
        if num_keys == 0 or k == 0:
            return selected
        if self.metric == "cosine":
            query = query / (np.linalg.norm(query, axis=-1, keepdims=True) + np.float32(self.epsilon))
        if fingerprints is None:
            fingerprints = _fingerprints(keys, key_mask)

        def select(batch_item):
            rows = (np.arange(num_queries) if query_mask is None
                    else np.flatnonzero(np.asarray(query_mask[batch_item])))
            key_valid = None if key_mask is None else np.asarray(key_mask[batch_item], bool)
            if rows.size == 0 or (key_valid is not None and not key_valid.any()):
                return
            item_mask = None if attention_mask is None else attention_mask[min(batch_item, attention_mask.shape[0] - 1)]
            selected[batch_item] = self._select_item(
                query[batch_item], keys[batch_item], key_valid, rows, item_mask, causal, k, mask_heads,
                fingerprints[batch_item])

        if batch > 1 and not (self.use_gpu and _gpu_resource() is not None):
            # One batch item per thread, each searching with one OpenMP thread, rather than
            # items in turn with all OpenMP threads each, whose barriers stall whenever TF's
            # own threads take a core.
            workers.parallel_map(lambda item: _single_threaded(select, item), range(batch))
        else:
            for batch_item in range(batch):
                select(batch_item)
        return selected

    def _rescored(self, entry, keys, positions, row_queries):
        """Exact similarity of queries with the keys at `positions`: `[r, c]` from `[r, c]` ids.

        The candidate rows are gathered a few query rows at a time, so the temporary `[r', c, D]`
        stays within `budgets.ANN_RESCORE_ELEMENTS` whatever the number of queries.
        """
        scores = np.empty(positions.shape, np.float32)  # [r, c]
        step = max(1, budgets.ANN_RESCORE_ELEMENTS // max(positions.shape[1] * keys.shape[1], 1))
        for start in range(0, positions.shape[0], step):
            rows = slice(start, start + step)
            scores[rows] = np.einsum("rcd,rd->rc", keys[positions[rows]], row_queries[rows])  # gathers [r', c, D]
        if entry.key_norms is not None:
            scores /= entry.key_norms[positions] + np.float32(self.epsilon)
        return scores

    def _select_item(self, query, keys, key_valid, rows, item_mask, causal, k, mask_heads, fingerprint=None):
        """Selection for one batch item: `[S, M, k]` int32, -1 where empty."""
        num_queries, num_keys = query.shape[0], keys.shape[0]
        result = np.full((mask_heads, num_queries, k), -1, np.int32)
        num_valid = num_keys if key_valid is None else int(key_valid.sum())
        row_queries = query[rows]  # [r, D]
        pair_masked = causal or item_mask is not None
        kind, storage = self._build_signature(keys, num_valid)
        # Fetch extra candidates when masks will filter some, or 8-bit scores will be corrected.
        fetch = math.ceil(k * self.oversample) if (pair_masked or storage == "sq8") else k
        if fetch >= num_valid:
            # Every valid key would be a candidate: exact blocked search instead (the small-N
            # and oracle case), which never gathers an [r, N, D] candidate tensor.
            for head in range(mask_heads):
                head_mask = None if item_mask is None else item_mask[head]
                result[head, rows] = self._exact_rows(keys, key_valid, row_queries, rows, causal, head_mask, k)
            return result
        entry, _ = self._entry(keys, key_valid, fingerprint)
        scores, candidates = self._search(entry, row_queries, fetch)  # [r, fetch] each
        if entry.key_ids is not None:
            candidates = np.where(candidates >= 0, entry.key_ids[np.maximum(candidates, 0)], -1)
        found = candidates >= 0
        safe_candidates = np.where(found, candidates, 0)
        if entry.storage == "sq8":
            scores = self._rescored(entry, keys, safe_candidates, row_queries)
        # With float32 storage the index's inner products (of normalised rows, for cosine) are
        # the exact similarities already.
        if not pair_masked and entry.storage != "sq8" and fetch == k and found.all():
            # Faiss returns every row full and by decreasing score: only equal scores may
            # still need ordering by position.
            result[0, rows] = self._ties_by_position(scores, candidates)
            return result
        for head in range(mask_heads):
            allowed = found.copy()
            if causal:
                allowed &= safe_candidates <= rows[:, None]
            if item_mask is not None:
                allowed &= item_mask[head][rows[:, None], safe_candidates]
            ranked = np.where(allowed, scores, -np.inf)
            # Sort by decreasing score, then by increasing position (as TensorFlow's `top_k` ties).
            order = np.lexsort((safe_candidates, -ranked), axis=-1)[:, :k]
            chosen = np.take_along_axis(safe_candidates, order, axis=-1)
            chosen_allowed = np.take_along_axis(allowed, order, axis=-1)
            chosen = np.where(chosen_allowed, chosen, -1)
            head_mask = None if item_mask is None else item_mask[head]
            possible = self._allowed_counts(num_valid, key_valid, rows, causal, head_mask)
            short = np.flatnonzero(chosen_allowed.sum(-1) < np.minimum(possible, k))
            if short.size:
                chosen[short] = self._exact_rows(keys, key_valid, row_queries[short], rows[short],
                                                 causal, head_mask, k)
            result[head, rows] = chosen
        return result

    @staticmethod
    def _ties_by_position(scores, candidates):
        """Candidates `[r, k]` sorted by decreasing score already, equal scores put in
        increasing position (as TensorFlow's `top_k` breaks ties); only rows with a tie are sorted."""
        tied = np.flatnonzero((scores[:, 1:] == scores[:, :-1]).any(axis=-1))
        if tied.size:
            candidates = candidates.copy()
            order = np.lexsort((candidates[tied], -scores[tied]), axis=-1)
            candidates[tied] = np.take_along_axis(candidates[tied], order, axis=-1)
        return candidates

    @staticmethod
    def _allowed_counts(num_valid, key_valid, rows, causal, head_mask):
        """How many keys each query row may select at all: `[r]`."""
        if head_mask is None and not causal:
            return np.full(rows.size, num_valid)
        num_keys = head_mask.shape[-1] if head_mask is not None else (
            key_valid.size if key_valid is not None else None)
        if head_mask is None:
            # Causal only: valid keys among positions 0..i.
            if key_valid is None:
                return np.minimum(rows + 1, num_valid)
            prefix = np.cumsum(key_valid)
            return prefix[np.minimum(rows, key_valid.size - 1)]
        allowed = head_mask[rows]  # [r, N]
        if key_valid is not None:
            allowed = allowed & key_valid[None, :]
        if causal:
            allowed = allowed & (np.arange(num_keys)[None, :] <= rows[:, None])
        return allowed.sum(-1)

    def _exact_rows(self, keys, key_valid, row_queries, rows, causal, head_mask, k):
        """Exact top-k over all allowed keys for a few rows, in key blocks: `[r, k]` int."""
        num_keys = keys.shape[0]
        limit = min(num_keys, int(rows.max()) + 1) if causal else num_keys
        block = max(1, budgets.ANN_EXACT_BLOCK_ELEMENTS // max(rows.size, 1))
        best_scores = np.full((rows.size, 0), -np.inf, np.float32)
        best_ids = np.zeros((rows.size, 0), np.int64)
        for start in range(0, limit, block):
            stop = min(start + block, limit)
            block_keys = keys[start:stop]  # [n, D]
            scores = row_queries @ block_keys.T  # [r, n]
            if self.metric == "cosine":
                scores /= np.linalg.norm(block_keys, axis=-1)[None, :] + np.float32(self.epsilon)
            allowed = np.ones(scores.shape, bool)
            if key_valid is not None:
                allowed &= key_valid[None, start:stop]
            if causal:
                allowed &= np.arange(start, stop)[None, :] <= rows[:, None]
            if head_mask is not None:
                allowed &= head_mask[rows, start:stop]
            scores = np.where(allowed, scores, -np.inf)
            ids = np.broadcast_to(np.arange(start, stop), scores.shape)
            merged_scores = np.concatenate([best_scores, scores], axis=1)
            merged_ids = np.concatenate([best_ids, ids], axis=1)
            order = np.lexsort((merged_ids, -merged_scores), axis=-1)[:, :k]
            best_scores = np.take_along_axis(merged_scores, order, axis=-1)
            best_ids = np.take_along_axis(merged_ids, order, axis=-1)
        chosen = np.where(np.isfinite(best_scores), best_ids, -1)
        if chosen.shape[1] < k:
            chosen = np.pad(chosen, ((0, 0), (0, k - chosen.shape[1])), constant_values=-1)
        return chosen

    # ---- building indexes ------------------------------------------------------------------

    def _build_signature(self, keys, num_valid):
        """`(kind, storage)` of the index for `num_valid` keys of this selector's settings."""
        if self.index_type == "exact" or num_valid <= self.exact_threshold:
            return "exact", "flat"
        storage = self.storage
        if storage == "auto":
            storage = "flat" if num_valid * keys.shape[1] * 4 <= budgets.ANN_AUTO_FLAT_BYTES else "sq8"
        return self.index_type, storage

    def _entry(self, keys, key_valid, fingerprint=None):
        """The cached index of one batch item's keys, building it on a miss: `(entry, seconds)`.

        `fingerprint` is the keys' `_fingerprint` when the caller has it already."""
        num_valid = keys.shape[0] if key_valid is None else int(key_valid.sum())
        kind, storage = self._build_signature(keys, num_valid)
        fingerprint = (fingerprint or _fingerprint(keys, key_valid), self.metric, kind, storage, self.nlist,
                       self.hnsw_neighbors, self.train_points_per_centroid, self.kmeans_iterations)
        entry = self._index_cache.get(fingerprint)
        if entry is not None:
            return entry, 0.0
        started = time.perf_counter()
        key_ids = None if key_valid is None else np.flatnonzero(key_valid).astype(np.int64)
        index = self._build_index(keys, key_ids, num_valid, kind, storage)
        key_norms = None
        if storage == "sq8" and self.metric == "cosine":
            key_norms = np.concatenate([
                np.linalg.norm(keys[start:start + budgets.ANN_ADD_CHUNK_ROWS], axis=-1)
                for start in range(0, keys.shape[0], budgets.ANN_ADD_CHUNK_ROWS)]).astype(np.float32)
        seconds = time.perf_counter() - started
        entry = _IndexEntry(index, key_ids, num_valid, kind, storage, key_norms, seconds)
        self._index_cache.put(fingerprint, entry)
        return entry, seconds

    def _rows(self, keys, key_ids, start, stop):
        """Index rows `[start, stop)` as float32, normalised for cosine: `[n, D]`."""
        block = keys[start:stop] if key_ids is None else keys[key_ids[start:stop]]
        block = np.array(block, np.float32, copy=True, order="C")
        if self.metric == "cosine":
            block /= np.linalg.norm(block, axis=-1, keepdims=True) + np.float32(self.epsilon)
        return block

    def _build_index(self, keys, key_ids, num_valid, kind, storage):
        faiss = _faiss()
        dim = keys.shape[1]
        inner_product = faiss.METRIC_INNER_PRODUCT
        if kind == "exact":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            if storage == "sq8":
                index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, self.hnsw_neighbors, inner_product)
            else:
                index = faiss.IndexHNSWFlat(dim, self.hnsw_neighbors, inner_product)
        else:
            nlist = self.nlist or max(1, round(math.sqrt(num_valid)))
            nlist = min(nlist, num_valid)
            coarse = faiss.IndexFlatIP(dim)
            if storage == "sq8":
                index = faiss.IndexIVFScalarQuantizer(coarse, dim, nlist, faiss.ScalarQuantizer.QT_8bit, inner_product)
            else:
                index = faiss.IndexIVFFlat(coarse, dim, nlist, inner_product)
            index.cp.niter = self.kmeans_iterations
            index.cp.min_points_per_centroid = 1  # we choose the sample size; silence Faiss's warning
            index.cp.max_points_per_centroid = self.train_points_per_centroid
        if not index.is_trained:
            train_size = num_valid
            if kind == "ivf":
                train_size = min(num_valid, index.nlist * self.train_points_per_centroid)
            sample = np.sort(np.random.default_rng(0).choice(num_valid, size=train_size, replace=False))
            positions = sample if key_ids is None else key_ids[sample]
            index.train(self._rows(keys, positions, 0, train_size))
        chunks = [(start, min(start + budgets.ANN_ADD_CHUNK_ROWS, num_valid))
                  for start in range(0, num_valid, budgets.ANN_ADD_CHUNK_ROWS)]
        if kind == "ivf":
            _add_to_exact_lists(index, lambda start, stop: self._rows(keys, key_ids, start, stop), chunks)
        else:
            for start, stop in chunks:
                index.add(self._rows(keys, key_ids, start, stop))
        if self.use_gpu and kind != "hnsw":
            resource = _gpu_resource()
            if resource is not None:
                try:
                    index = faiss.index_cpu_to_gpu(resource, 0, index)
                except RuntimeError as error:  # e.g. a build without GPU support for this index
                    warnings.warn(f"ann: keeping the Faiss index on the CPU ({error})", stacklevel=2)
        return index

    def _search(self, entry, row_queries, fetch):
        """`(scores, ids)`, each `[r, fetch]`: index ids, -1 where the index found too few.

        An IVF row whose probed lists hold fewer than `fetch` keys (lists are uneven) is
        searched again with 4× the lists, up to all of them, rather than left short.
        """
        faiss = _faiss()
        row_queries = np.ascontiguousarray(row_queries, np.float32)
        if entry.kind != "ivf":
            params = None
            if entry.kind == "hnsw":
                params = faiss.SearchParametersHNSW(efSearch=self.ef_search or max(64, 2 * fetch))
            return entry.index.search(row_queries, fetch, params=params)
        nlist = faiss.extract_index_ivf(entry.index).nlist
        default = max(1, math.ceil(nlist / 256), math.ceil(4 * fetch * nlist / max(entry.num_valid, 1)))
        nprobe = min(self.nprobe or default, nlist)
        scores, ids = self._search_ivf(entry, row_queries, fetch, nprobe)
        short = np.flatnonzero(ids[:, -1] < 0)  # Faiss fills from the front, -1 after the last hit
        while short.size and nprobe < nlist and fetch <= entry.num_valid:
            nprobe = min(nlist, 4 * nprobe)
            scores[short], ids[short] = self._search_ivf(entry, row_queries[short], fetch, nprobe)
            short = short[ids[short, -1] < 0]
        return scores, ids

    @staticmethod
    def _search_ivf(entry, row_queries, fetch, nprobe):
        """One IVF search with `nprobe` lists: `(scores, ids)`, each `[r, fetch]`.

        Sparse rows of a flat index on the CPU (most entries zero: see
        `budgets.ANN_SPARSE_SEARCH_DENSITY`) are searched by `sparse_search`, from their stored
        features only; the first such search copies the index's lists (as much memory again
        as the index's vectors). Other rows go to Faiss.
        """
        faiss = _faiss()
        if entry.storage == "flat":
            rows = sparse_search.sparse_rows(row_queries)
            lists = None if rows is None else entry.lists.get()
            if lists is not None:
                return sparse_search.search(lists, rows, fetch, nprobe)
        if type(entry.index).__name__.startswith("Gpu"):
            # GPU indexes take their search breadth as an attribute, not per call.
            entry.index.nprobe = nprobe
            return entry.index.search(row_queries, fetch)
        return entry.index.search(row_queries, fetch, params=faiss.SearchParametersIVF(nprobe=nprobe))

    def get_config(self):
        config = super().get_config()
        config.update({
            "metric": self.metric,
            "index_type": self.index_type,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "ef_search": self.ef_search,
            "hnsw_neighbors": self.hnsw_neighbors,
            "exact_threshold": self.exact_threshold,
            "storage": self.storage,
            "oversample": self.oversample,
            "train_points_per_centroid": self.train_points_per_centroid,
            "kmeans_iterations": self.kmeans_iterations,
            "cache_size": self.cache_size,
            "use_gpu": self.use_gpu,
            "epsilon": self.epsilon,
        })
        return config
