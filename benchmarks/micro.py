"""Micro-benchmarks behind the numbers in benchmarks/NOTES.md: each subcommand measures one choice.
Run from the repository root: `python benchmarks/micro.py SUBCOMMAND --help`."""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _median_ms(call, repeats, warmup=3):
    """Median wall time of `call()` in ms after `warmup` untimed calls; also the spread."""
    for _ in range(warmup):
        np.asarray(call())
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        np.asarray(call())
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times), min(times), max(times)


def _report(label, timing):
    median, fastest, slowest = timing
    print(f"{label:<58} {median:9.2f} ms  (min {fastest:.2f}, max {slowest:.2f})")


def top_k(args):
    """TF's `top_k` against the compiled CPU kernel on random rows: µs of wall time per row."""
    import tensorflow as tf

    from sdattn.selectors import cpu_top_k

    rng = np.random.default_rng(0)
    scores = tf.constant(rng.standard_normal((args.rows, args.keys), dtype=np.float32))
    tf_top_k = tf.function(lambda x: tf.math.top_k(x, k=args.k))
    kernel = tf.function(lambda x: cpu_top_k.top_k(x, args.k))
    for label, call in (("tf.math.top_k", tf_top_k), ("cpu_top_k kernel", kernel)):
        timing = _median_ms(lambda: call(scores)[1], args.repeats)
        _report(f"{label}: {args.rows} rows of {args.keys}, k={args.k}", timing)
        print(f"{'':<58} {timing[0] * 1e3 / args.rows:9.2f} µs per row")


def projection(args):
    """Projecting a sparse query: `sparse_dense_matmul` against scatter + dense matmul."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    kernel = tf.constant(rng.standard_normal((args.dim, args.width), dtype=np.float32))
    for density in args.densities:
        dense = rng.standard_normal((args.rows, args.dim)).astype(np.float32)
        dense[rng.random(dense.shape) >= density] = 0
        sparse = tf.sparse.from_dense(dense)
        by_sparse = tf.function(lambda q: tf.sparse.sparse_dense_matmul(q, kernel))
        by_dense = tf.function(lambda q: tf.matmul(tf.sparse.to_dense(q), kernel))
        _report(f"density {density:.3f}: sparse_dense_matmul", _median_ms(lambda: by_sparse(sparse), args.repeats))
        _report(f"density {density:.3f}: densify + matmul", _median_ms(lambda: by_dense(sparse), args.repeats))


def _set_constants(assignments):
    """Applies `module.NAME=value` overrides (e.g. `sdattn.budgets.BLOCK_ELEMENTS=4194304`)."""
    import importlib

    for assignment in assignments or []:
        target, value = assignment.split("=", 1)
        module_name, name = target.rsplit(".", 1)
        module = importlib.import_module(module_name)
        setattr(module, name, type(getattr(module, name))(eval(value, {}, {})))
        print(f"set {target} = {getattr(module, name)!r}")


def _config_p(args):
    from sdattn import bench

    cfg = bench.config(args.keys, args.queries)
    inputs = bench.make_inputs(cfg, args.seed)
    _, weights = bench._reference_weights(cfg, args.seed)
    return cfg, inputs, weights


def _layer(cfg, weights, selector, fast_paths=True):
    from sdattn.layer import SparseDenseMultiHeadAttention

    layer = SparseDenseMultiHeadAttention(cfg["heads"], cfg["key_dim"], cfg["top_k"], selector=selector,
                                          fast_paths=fast_paths)
    layer.build((cfg["batch"], cfg["num_queries"], cfg["dim"]), (cfg["batch"], cfg["num_keys"], cfg["dim"]))
    layer.set_weights(weights + [w.numpy() for w in layer.weights[len(weights):]])
    return layer


def layer(args):
    """The whole layer on Config P under `tf.function`, with optional constant overrides."""
    import tensorflow as tf

    _set_constants(args.set)
    cfg, (sparse_query, _, value), weights = _config_p(args)
    selector = {"name": args.selector, **({"block_size": args.block_size} if args.block_size else {})}
    attention = _layer(cfg, weights, selector, fast_paths=not args.standard_path)
    if hasattr(attention.selector, "index_keys"):
        attention.selector.index_keys(value)
    forward = tf.function(lambda q, v: attention(q, v), autograph=False)
    _report(f"{args.selector} at N={args.keys:,}, M={cfg['num_queries']}", _median_ms(lambda: forward(sparse_query, value), args.repeats))


def profile(args):
    """Where a selector's time goes on Config P: the layer, its selection alone, and the floor of
    attending over k gathered keys (the same layer over a fixed selection)."""
    import tensorflow as tf

    import sdattn
    from sdattn import plan as plan_lib

    cfg, (sparse_query, dense_query, value), weights = _config_p(args)
    k = min(cfg["top_k"], cfg["num_keys"])
    attention = _layer(cfg, weights, args.selector)
    if hasattr(attention.selector, "index_keys"):
        attention.selector.index_keys(value)
    print(f"plan: {attention.attention_plan(sparse_query, value)}")
    forward = tf.function(lambda q, v: attention(q, v), autograph=False)
    _report(f"{args.selector}: whole layer", _median_ms(lambda: forward(sparse_query, value), args.repeats))
    _, _, selected = attention(sparse_query, value, return_attention_scores=True)
    fixed = selected.numpy()[:, :1] if not attention.selector.per_head else selected.numpy()

    class Fixed(sdattn.Selector):
        """The same selection, as a constant: the layer then times attention alone."""
        per_head = attention.selector.per_head

        def select(self, context, k):
            return tf.constant(fixed)

    floor = _layer(cfg, weights, Fixed())
    floor_forward = tf.function(lambda q, v: floor(q, v), autograph=False)
    floor_ms = _median_ms(lambda: floor_forward(sparse_query, value), args.repeats)
    _report(f"floor: attention over the same {k} keys per query", floor_ms)

    if args.selector == "ann":
        from sdattn.selectors.ann import index as ann_index

        selector = attention.selector
        keys = np.asarray(value)
        query = np.asarray(dense_query)
        _report("ann: content hash of the keys (both items, threads)",
                _median_ms(lambda: ann_index._fingerprint_rows(keys), args.repeats))
        fingerprints = ann_index._fingerprints(keys, None)
        _report("ann: search_numpy (normalise, Faiss search, ties)",
                _median_ms(lambda: selector.search_numpy(query, keys, k, fingerprints=fingerprints), args.repeats))
        entry, _ = selector._entry(keys[0], None, fingerprints[0])
        unit = query[0] / (np.linalg.norm(query[0], axis=-1, keepdims=True) + 1e-9)
        _report("ann: one Faiss search, one item (M rows)",
                _median_ms(lambda: selector._search(entry, unit, k), args.repeats))
    else:
        context_plan = attention.attention_plan(sparse_query, value)

        @tf.function(autograph=False)
        def selection(q, v):
            from sdattn.masking import AttentionMask

            projected = attention._project_query(q) * attention._key_dim ** -0.5
            context = sdattn.SelectionContext(q, v, projected, lambda: attention._key_dense(v),
                                              AttentionMask(cfg["num_queries"], cfg["num_keys"]),
                                              cfg["heads"], cpu_top_k=context_plan.cpu_top_k)
            return attention.selector.select(context, k)

        _report(f"{args.selector}: selection alone (query projection included)",
                _median_ms(lambda: selection(sparse_query, value), args.repeats))
        if plan_lib.REUSED_LOGITS == context_plan.path:
            print("(the layer reuses the selected scores as logits: no key gather after selection)")


def recall(args):
    """`ann`'s recall@k against exact cosine on Config P, and its `search_numpy` time, per nprobe."""
    from sdattn import bench
    from sdattn.inputs import generate_inputs
    from sdattn.selectors.ann import AnnSelector

    for num_keys in args.keys:
        example = generate_inputs("config_p", seed=args.seed, num_keys=num_keys)
        query, keys = example.dense_query(), example.value
        exact = bench.exact_cosine_indices(query, keys, args.k)
        for nprobe in args.nprobe:
            selector = AnnSelector(nprobe=nprobe or None)
            selector.index_keys(keys)
            started = time.perf_counter()
            selected = selector.search_numpy(query, keys, args.k)
            elapsed = (time.perf_counter() - started) * 1e3
            print(f"N={num_keys:,} nprobe={nprobe or 'default'}: recall@{args.k} "
                  f"{bench.recall_at_k(selected[:, 0], exact):.3f}, search {elapsed:.1f} ms")


def ann_search(args):
    """`ann`'s IVF search of one batch item's rows: Faiss's dense scan against `sparse_search`, on
    Config P's rows and on random unit rows with more stored features (the density crossover)."""
    import faiss

    from sdattn.inputs import generate_inputs
    from sdattn.selectors.ann import AnnSelector, sparse_search

    faiss.omp_set_num_threads(1)  # as the layer searches: one thread per batch item
    for num_keys in args.keys:
        example = generate_inputs("config_p", seed=args.seed, num_keys=num_keys, num_queries=512)
        keys = example.value[0].astype(np.float32)
        entry, _ = AnnSelector()._entry(keys, None)
        lists = sparse_search.inverted_lists(entry.index)
        print(f"N={num_keys:,}: {entry.index.nlist} lists, nprobe 1, {args.k} results per row")
        config_p = example.dense_query()[0].astype(np.float32)
        rng = np.random.default_rng(args.seed)
        cases = [("Config P (8 of 256 features)", config_p)]
        for stored in args.stored:
            rows = rng.standard_normal(config_p.shape).astype(np.float32)
            rows[np.argsort(rng.random(rows.shape), axis=-1) >= stored] = 0  # `stored` per row
            cases.append((f"random, {stored} of 256 features", rows))
        for label, rows in cases:
            rows = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
            params = faiss.SearchParametersIVF(nprobe=1)
            _report(f"  {label}: Faiss", _median_ms(lambda: entry.index.search(rows, args.k, params=params)[1],
                                                     args.repeats))
            _report(f"  {label}: sparse_search (CSR included)", _median_ms(
                lambda: sparse_search.search(lists, sparse_search.sparse_rows(rows, 1.0), args.k, 1)[1],
                args.repeats))


def dot_tiles(args):
    """`dot`'s scores and top-k at Config P's sizes: TF's einsum of the whole score tensor, then
    the compiled top-k on it, against the same product a tile of rows at a time (NumPy's BLAS)
    with the top-k of each tile while it is in cache, on two threads. Run with
    OPENBLAS_NUM_THREADS=1, so that each thread's products stay on its own core."""
    import concurrent.futures

    import tensorflow as tf

    from sdattn.selectors import cpu_top_k, top_k_kernel

    batch, queries, heads, key_dim, k = 2, 512, 8, 32, 32
    rng = np.random.default_rng(0)
    query = rng.standard_normal((batch, heads, queries, key_dim)).astype(np.float32)  # [B, H, M, kd]
    keys_t = rng.standard_normal((batch, heads, key_dim, args.keys)).astype(np.float32)  # [B, H, kd, N]
    scores_op = tf.function(lambda q, kt: tf.matmul(q, kt))  # [B, H, M, N]
    _report(f"TF: scores [B, H, M, N] = {batch}·{heads}·{queries}·{args.keys:,}",
            _median_ms(lambda: scores_op(query, keys_t), args.repeats))
    scores = scores_op(query, keys_t).numpy()
    _report("compiled top-k of that tensor (2 threads)",
            _median_ms(lambda: cpu_top_k.top_k_numpy(scores, k)[1], args.repeats))
    groups = cpu_top_k._num_groups(args.keys, k)
    values = np.empty((batch, heads, queries, k), np.float32)
    indices = np.empty((batch, heads, queries, k), np.int32)
    pairs = [(b, h) for b in range(batch) for h in range(heads)]

    def tiles(part, rows=args.tile_rows):
        for b, h in part:
            for start in range(0, queries, rows):
                tile = query[b, h, start:start + rows] @ keys_t[b, h]  # [rows, N], in cache
                top_k_kernel.top_k_rows(tile, k, groups, values[b, h, start:start + rows],
                                        indices[b, h, start:start + rows])

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        halves = [pairs[:len(pairs) // 2], pairs[len(pairs) // 2:]]
        _report(f"tiles of {args.tile_rows} rows: product + top-k in cache (2 threads)",
                _median_ms(lambda: list(pool.map(tiles, halves)) and indices, args.repeats))


def floor(args):
    """The folded attention's steps one by one, on random data of Config P's sizes."""
    import tensorflow as tf

    batch, queries, heads, key_dim, dim, k = 2, 512, 8, 32, 256, 32
    rng = np.random.default_rng(0)
    keys = tf.constant(rng.standard_normal((batch, args.keys, dim), dtype=np.float32))
    query = tf.constant(rng.standard_normal((batch, queries, heads, key_dim), dtype=np.float32))
    indices = tf.constant(rng.integers(0, args.keys, (batch, queries * k)).astype(np.int32))
    key_kernel, value_kernel = (tf.constant(rng.standard_normal((dim, heads, key_dim), dtype=np.float32))
                                for _ in range(2))
    output_kernel = tf.constant(rng.standard_normal((heads, key_dim, dim), dtype=np.float32))
    selected = tf.reshape(tf.gather(keys, indices, batch_dims=1), [batch, queries, k, dim])  # [B, M, k, D]
    folded = tf.einsum("bmhe,dhe->bmhd", query, key_kernel)  # [B, M, H, D]
    weights = tf.nn.softmax(tf.matmul(folded, selected, transpose_b=True))  # [B, M, H, k]
    mixed = tf.matmul(weights, selected)  # [B, M, H, D]
    context = tf.einsum("bmhd,dhe->bmhe", mixed, value_kernel)  # [B, M, H, vd]
    steps = {
        "gather [B, M, k, D]": (lambda: tf.gather(keys, indices, batch_dims=1)),
        "fold the query into key space": (lambda: tf.einsum("bmhe,dhe->bmhd", query, key_kernel)),
        "logits": (lambda: tf.matmul(folded, selected, transpose_b=True)),
        "softmax": (lambda: tf.nn.softmax(weights)),
        "mixing": (lambda: tf.matmul(weights, selected)),
        "value kernel": (lambda: tf.einsum("bmhd,dhe->bmhe", mixed, value_kernel)),
        "output projection": (lambda: tf.einsum("bmhd,hdo->bmo", context, output_kernel)),
    }
    for label, step in steps.items():
        _report(label, _median_ms(tf.function(step), args.repeats))


def _comma_separated(kind):
    """An argparse `type` for a comma-separated list of `kind` values."""
    return lambda text: [kind(part) for part in text.split(",")]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python benchmarks/micro.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--repeats", type=int, default=9)
    p = sub.add_parser("top-k", parents=[common], help=top_k.__doc__)
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--keys", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.set_defaults(run=top_k)
    p = sub.add_parser("projection", parents=[common], help=projection.__doc__)
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--densities", type=_comma_separated(float), default=[0.008, 0.012, 0.031])
    p.set_defaults(run=projection)
    # `recall` and `ann-search` both search Config P keys of several sizes.
    searches = argparse.ArgumentParser(add_help=False, parents=[common])
    searches.add_argument("--keys", type=_comma_separated(int), default=[16_384, 65_536])
    searches.add_argument("--k", type=int, default=32)
    searches.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("recall", parents=[searches], help=recall.__doc__)
    p.add_argument("--nprobe", type=_comma_separated(int), default=[0, 2, 4], help="0 = the default")
    p.set_defaults(run=recall)
    p = sub.add_parser("ann-search", parents=[searches], help=ann_search.__doc__)
    p.add_argument("--stored", type=_comma_separated(int), default=[16, 32, 64, 128])
    p.set_defaults(run=ann_search)
    p = sub.add_parser("dot-tiles", parents=[common], help=dot_tiles.__doc__)
    p.add_argument("--keys", type=int, default=4_096)
    p.add_argument("--tile-rows", type=int, default=128)
    p.set_defaults(run=dot_tiles)
    p = sub.add_parser("floor", parents=[common], help=floor.__doc__)
    p.add_argument("--keys", type=int, default=16_384)
    p.set_defaults(run=floor)
    for name, run in (("layer", layer), ("profile", profile)):
        p = sub.add_parser(name, parents=[common], help=run.__doc__)
        p.add_argument("--selector", default="cosine")
        p.add_argument("--keys", type=int, default=16_384)
        p.add_argument("--queries", type=int, default=None)
        p.add_argument("--seed", type=int, default=0)
        if name == "layer":
            p.add_argument("--block-size", type=int, default=None)
            p.add_argument("--standard-path", action="store_true", help="fast_paths=False")
            p.add_argument("--set", action="append", help="module.NAME=value, e.g. sdattn.selectors.top_k._MERGE_EVERY=1")
        p.set_defaults(run=run)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
