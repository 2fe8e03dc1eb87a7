"""Benchmark harness: sdattn selectors against `keras.layers.MultiHeadAttention` on Config P inputs.
`python -m sdattn.bench` prints medians and ratios measured in one run; --json / --markdown save them."""

import argparse
import contextlib
import datetime
import gc
import json
import logging
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# Progress and the results table go through logging; `main` sends them to stdout when the
# caller has not configured logging, so `python -m sdattn.bench` prints them as a CLI should.
_logger = logging.getLogger("sdattn.bench")

# Config P (issue 6): B=2, M=512 sparse queries (8 of 256 features), D=256, H=8, key_dim=32,
# top_k=32, float32; N=1,048,576 runs with M=1,024, for sdattn only.
DEFAULT_SIZES = (4_096, 16_384, 65_536, 1_048_576)
QUICK_SIZES = (4_096, 16_384)
DEFAULT_SELECTORS = ("dot", "cosine", "ann", "random", "window")
# Above this N only the selectors meant for it run (the others cost a dense pass per call).
LARGE_SIZE = 65_536
LARGE_SELECTORS = ("cosine", "ann")
LARGE_QUERIES = 1_024
# From this N on, each method runs in its own process (auto isolation): Keras MHA leaves
# gigabytes in TensorFlow's allocator, which would inflate the peaks of later methods.
ISOLATE_METHODS_FROM = 65_536
# Up to this N the methods of a size are timed again side by side (`interleaved_times`), and
# those medians are the ones reported: on a shared machine a slow phase can last minutes, long
# enough to fall on one method and not on the next (benchmarks/NOTES.md, "Interleaved timing").
INTERLEAVE_UP_TO = 65_536
MIN_REPEATS = 5  # issue 6: the median of at least 5 runs
# Untimed calls first: the first traces the graph; the next few still pay for thread pools
# (Faiss's OpenMP, the hash pool) and allocator growth (benchmarks/NOTES.md, "Warm-up").
WARMUP_CALLS = 3
BASELINES = ("floor", "mha", "naive")
# Tokens per step of the K/V-projection floor: the floor's own memory stays bounded at 1M keys.
FLOOR_CHUNK = 65_536

METHOD_TITLES = {
    "floor": "K/V projection floor",
    "mha": "keras MultiHeadAttention",
    "naive": "naive exact per-head top-k",
}


# ---- memory -----------------------------------------------------------------------------------

def _status_mb(field):
    """A `VmRSS`/`VmHWM` line of /proc/self/status in MiB, or None off Linux."""
    try:
        with open("/proc/self/status") as status:
            match = re.search(rf"^{field}:\s+(\d+)\s+kB", status.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def reset_peak_rss():
    """Resets the kernel's peak-RSS mark to the current RSS; returns whether it could.

    Linux resets VmHWM when "5" is written to /proc/self/clear_refs, so one process can measure
    the peak of each configuration in turn. Elsewhere peaks are cumulative (`ru_maxrss`).
    """
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb():
    """Peak resident memory of this process in MB (since the last `reset_peak_rss`)."""
    peak = _status_mb("VmHWM")
    if peak is None:
        # ru_maxrss is KB on Linux and bytes on macOS.
        scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return peak


def current_rss_mb():
    return _status_mb("VmRSS")




def total_memory_gb():
    """Physical memory in GB (for the dense-baseline limit)."""
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return 16.0


# ---- inputs and reference -------------------------------------------------------------------------

def config(num_keys, num_queries=None, batch=2, dim=256, heads=8, key_dim=32, top_k=32):
    """The benchmark configuration of one size: Config P, with M=1,024 above `LARGE_SIZE`."""
    if num_queries is None:
        num_queries = LARGE_QUERIES if num_keys > LARGE_SIZE else 512
    return {"num_keys": int(num_keys), "num_queries": int(num_queries), "batch": int(batch),
            "dim": int(dim), "heads": int(heads), "key_dim": int(key_dim), "top_k": int(top_k)}


def score_tensor_gb(cfg):
    """Size of the dense `[B, H, M, N]` float32 score tensor that MHA and the naive baseline build."""
    return cfg["batch"] * cfg["heads"] * cfg["num_queries"] * cfg["num_keys"] * 4 / 2**30


def make_inputs(cfg, seed):
    """Config P inputs as TF tensors: `(sparse query, dense query, value)`; the NumPy copy is freed."""
    import tensorflow as tf

    from sdattn.inputs import generate_inputs

    example = generate_inputs("config_p", seed=seed, batch_size=cfg["batch"], num_queries=cfg["num_queries"],
                              num_keys=cfg["num_keys"], dim=cfg["dim"])
    sparse_query = example.to_sparse_tensor()
    dense_query = tf.constant(example.dense_query())
    value = tf.constant(example.value)
    example.value = None  # keep one copy of the keys (2 GB at N = 1M), the tensor's
    return sparse_query, dense_query, value


def exact_cosine_indices(dense_query, value, k, block=16_384):
    """NumPy exact cosine top-k, streamed over key blocks: int `[B, M, k]` (the recall reference)."""
    query = np.asarray(dense_query, np.float32)
    keys = np.asarray(value)  # shares the tensor's buffer
    query = query / (np.linalg.norm(query, axis=-1, keepdims=True) + 1e-9)
    batch, num_queries, _ = query.shape
    result = np.zeros((batch, num_queries, k), np.int64)
    for item in range(batch):
        best_scores = np.full((num_queries, 0), -np.inf, np.float32)
        best_ids = np.zeros((num_queries, 0), np.int64)
        for start in range(0, keys.shape[1], block):
            key_block = keys[item, start:start + block]  # [n, D]
            scores = query[item] @ key_block.T / (np.linalg.norm(key_block, axis=-1) + 1e-9)  # [M, n]
            ids = np.broadcast_to(np.arange(start, start + key_block.shape[0]), scores.shape)
            merged_scores = np.concatenate([best_scores, scores], axis=1)
            merged_ids = np.concatenate([best_ids, ids], axis=1)
            keep = np.argpartition(-merged_scores, min(k, merged_scores.shape[1]) - 1, axis=1)[:, :k]
            best_scores = np.take_along_axis(merged_scores, keep, axis=1)
            best_ids = np.take_along_axis(merged_ids, keep, axis=1)
        result[item] = best_ids
    return result


def recall_at_k(selected, exact):
    """Mean over query rows of |selected ∩ exact| / k, for `[B, M, k]` index arrays (-1 = empty)."""
    selected = np.asarray(selected).reshape(-1, selected.shape[-1])  # [B·M, k]
    exact = np.asarray(exact).reshape(-1, exact.shape[-1])  # [B·M, k]
    hits = (selected[:, :, None] == exact[:, None, :]) & (selected[:, :, None] >= 0)
    return float(hits.any(axis=2).sum(axis=1).mean() / exact.shape[1])


# ---- the measured callables -------------------------------------------------------------------------

def _reference_weights(cfg, seed):
    """Keras MHA weights every method shares, drawn once from a seeded initializer."""
    import keras

    mha = keras.layers.MultiHeadAttention(cfg["heads"], cfg["key_dim"],
                                          kernel_initializer=keras.initializers.GlorotUniform(seed=seed))
    mha.build((cfg["batch"], cfg["num_queries"], cfg["dim"]), (cfg["batch"], cfg["num_keys"], cfg["dim"]))
    return mha, [w.numpy() for w in mha.weights]


def _build_method(method, cfg, weights, inputs, seed):
    """Returns `(call, layer_or_None, build_seconds)` for one method; `call()` runs one forward pass."""
    import tensorflow as tf

    sparse_query, dense_query, value = inputs
    build_seconds = None
    if method == "mha":
        import keras

        mha = keras.layers.MultiHeadAttention(cfg["heads"], cfg["key_dim"])
        mha.build(tuple(dense_query.shape), tuple(value.shape))
        mha.set_weights(weights)
        forward = tf.function(lambda q, v: mha(q, v), autograph=False)
        return (lambda: forward(dense_query, value)), None, None
    if method == "floor":
        key_kernel, key_bias, value_kernel, value_bias = (tf.constant(w) for w in weights[2:6])

        @tf.function
        def floor(v):
            # Projecting every token with the key and value kernels, as any attention must once;
            # in chunks, reduced, so the floor itself never holds [B, N, H, d] at 1M tokens.
            total = tf.constant(0.0)
            for start in range(0, v.shape[1], FLOOR_CHUNK):
                chunk = v[:, start:start + FLOOR_CHUNK]  # [B, n, D]
                projected_key = tf.einsum("bnd,dhe->bnhe", chunk, key_kernel) + key_bias  # [B, n, H, kd]
                projected_value = tf.einsum("bnd,dhe->bnhe", chunk, value_kernel) + value_bias  # [B, n, H, vd]
                total += tf.reduce_sum(projected_key) + tf.reduce_sum(projected_value)
            return total

        return (lambda: floor(value)), None, None
    if method == "naive":
        query_kernel, query_bias, key_kernel, key_bias, value_kernel, value_bias, output_kernel, output_bias = (
            tf.constant(w) for w in weights)
        top_k = min(cfg["top_k"], cfg["num_keys"])
        scale = cfg["key_dim"] ** -0.5

        @tf.function
        def naive(q, v):
            projected_query = (tf.einsum("bmd,dhe->bmhe", q, query_kernel) + query_bias) * scale  # [B, M, H, kd]
            projected_key = tf.einsum("bnd,dhe->bnhe", v, key_kernel) + key_bias  # [B, N, H, kd]
            projected_value = tf.einsum("bnd,dhe->bnhe", v, value_kernel) + value_bias  # [B, N, H, vd]
            scores = tf.einsum("bmhd,bnhd->bhmn", projected_query, projected_key)  # [B, H, M, N]
            logits, indices = tf.math.top_k(scores, k=top_k)  # [B, H, M, k]
            by_head = tf.transpose(projected_value, [0, 2, 1, 3])  # [B, H, N, vd]
            batch, heads, queries = tf.shape(indices)[0], tf.shape(indices)[1], tf.shape(indices)[2]
            flat = tf.reshape(indices, [batch, heads, -1])  # [B, H, M·k]
            selected = tf.gather(by_head, flat, batch_dims=2)  # [B, H, M·k, vd]
            selected = tf.reshape(selected, [batch, heads, queries, top_k, -1])  # [B, H, M, k, vd]
            attention = tf.nn.softmax(logits, axis=-1)
            context = tf.einsum("bhmk,bhmkd->bmhd", attention, selected)  # [B, M, H, vd]
            return tf.einsum("bmhd,hdo->bmo", context, output_kernel) + output_bias  # [B, M, D]

        return (lambda: naive(dense_query, value)), None, None
    from sdattn.layer import SparseDenseMultiHeadAttention

    selector = {"name": "random", "seed": seed} if method == "random" else method
    layer = SparseDenseMultiHeadAttention(cfg["heads"], cfg["key_dim"], cfg["top_k"], selector=selector)
    layer.build(tuple(sparse_query.shape), tuple(value.shape))
    layer.set_weights(weights + [w.numpy() for w in layer.weights[len(weights):]])
    if hasattr(layer.selector, "index_keys"):
        # Built once per key set, apart from query time (issue 6: "the index already built").
        build_seconds = layer.selector.index_keys(value)
    forward = tf.function(lambda q, v: layer(q, v), autograph=False)
    return (lambda: forward(sparse_query, value)), layer, build_seconds


def _gpu_names():
    import tensorflow as tf

    return [device.name.replace("/physical_device:", "") for device in tf.config.list_physical_devices("GPU")]


def measure(method, cfg, weights, inputs, repeats, seed, reference=None):
    """Times one method on one configuration: `WARMUP_CALLS` untimed calls, then `repeats` timed ones.

    Args:
        method: "floor", "mha", "naive" or a selector name.
        cfg: the configuration dict (see `config`).
        weights: MHA-ordered weights shared by every method.
        inputs: `(sparse query, dense query, value)` tensors.
        repeats: timed calls (the median is reported).
        seed: seed for the random selector.
        reference: callable returning exact cosine indices `[B, M, k]`, for recall; or None.

    Returns:
        dict with `median_ms`, `times_ms`, `build_s`, `recall`, `peak_rss_mb`, `baseline_rss_mb`,
        `peak_gpu_mb`, and `indices` (`[B, M, k]` for shared selectors, else None).
    """
    import tensorflow as tf

    gpus = _gpu_names()
    for gpu in gpus:
        with contextlib.suppress(Exception):
            tf.config.experimental.reset_memory_stats(gpu)
    gc.collect()  # the previous method's layer and graphs, before the peak mark is reset
    resettable = reset_peak_rss()
    baseline = current_rss_mb()
    call, layer, build_seconds = _build_method(method, cfg, weights, inputs, seed)
    for _ in range(WARMUP_CALLS):
        np.asarray(call())  # warm-up: traces the graph, fills caches, starts thread pools
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        np.asarray(call())  # .numpy() waits for the device
        times.append((time.perf_counter() - started) * 1e3)
    record = {
        "median_ms": statistics.median(times), "times_ms": times, "build_s": build_seconds,
        "peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": baseline, "peak_is_cumulative": not resettable,
        "peak_gpu_mb": None, "recall": None, "indices": None,
    }
    if gpus:
        with contextlib.suppress(Exception):
            record["peak_gpu_mb"] = max(tf.config.experimental.get_memory_info(gpu)["peak"] for gpu in gpus) / 2**20
    if layer is not None and not layer.selector.per_head:
        sparse_query, _, value = inputs
        _, _, indices = layer(sparse_query, value, return_attention_scores=True)
        record["indices"] = indices.numpy()[:, 0]  # [B, M, k]
        if reference is not None:
            record["recall"] = recall_at_k(record["indices"], reference())
    return record


def interleaved_times(cfg, methods, weights, inputs, repeats, seed):
    """Times several methods side by side on one configuration.

    Every method is built and warmed up (`WARMUP_CALLS` untimed calls), then each of `repeats`
    rounds takes every method in turn, starting one method further along each round: an
    untimed call, then the timed one. A slow or fast phase of the machine then falls on all of
    them alike, and the ratios between their medians compare like with like; and each timed
    call follows a call of the same method, as in a method's own run, so it finds the caches
    as that run does (not emptied by the method before it, which would slow most the methods
    whose data fits in cache).

    Args:
        methods: method names (see `measure`), each already measured once on its own.
        cfg, weights, inputs, repeats, seed: as for `measure`.

    Returns:
        `{method: [ms per timed call, ...]}`.
    """
    calls = {}
    for method in methods:
        call, _, _ = _build_method(method, cfg, weights, inputs, seed)
        for _ in range(WARMUP_CALLS):
            np.asarray(call())
        calls[method] = call
    times = {method: [] for method in methods}
    for round_index in range(repeats):
        shift = round_index % len(methods)
        for method in methods[shift:] + methods[:shift]:
            np.asarray(calls[method]())  # back in cache after the previous method
            started = time.perf_counter()
            np.asarray(calls[method]())
            times[method].append((time.perf_counter() - started) * 1e3)
    return times


def apply_interleaved(records, times):
    """Makes the interleaved timings the reported ones: `median_ms` and `times_ms` come from
    `times` (`interleaved_times`), the method's own run is kept as `sequential_median_ms` and
    `sequential_times_ms`, and `timing` says which is which."""
    for record in records:
        measured = times.get(record["method"])
        if record.get("status") != "ok" or not measured:
            continue
        record["sequential_median_ms"], record["sequential_times_ms"] = record["median_ms"], record["times_ms"]
        record.update(median_ms=statistics.median(measured), times_ms=measured, timing="interleaved")


def _measured_methods(records):
    """The methods of `records` that were measured (status "ok"), in order."""
    return [record["method"] for record in records if record.get("status") == "ok"]


def _interleaves(cfg, records):
    """Whether a size's measured methods are timed again side by side (`INTERLEAVE_UP_TO`)."""
    return cfg["num_keys"] <= INTERLEAVE_UP_TO and len(_measured_methods(records)) > 1


# ---- one size, in this process ------------------------------------------------------------------------

def methods_for(cfg, selectors, dense_limit_gb):
    """`(methods to run, [(method, reason) not run])` for one configuration."""
    run, skipped = [], []
    score_gb = score_tensor_gb(cfg)
    for method in BASELINES:
        if method in ("mha", "naive") and score_gb > dense_limit_gb:
            skipped.append((method, f"not run (score tensor would be {score_gb:.1f} GB)"))
        else:
            run.append(method)
    for selector in selectors:
        if cfg["num_keys"] > LARGE_SIZE and selector not in LARGE_SELECTORS:
            skipped.append((selector, f"not run (above N={LARGE_SIZE:,} only {', '.join(LARGE_SELECTORS)} run)"))
        else:
            run.append(selector)
    # The floor, then cosine (its indices are the others' recall reference), the other
    # selectors, and the dense baselines last: what they leave in the allocator cannot inflate
    # the peaks of the methods measured after them.
    from sdattn import selectors as selectors_lib

    def rank(method):
        if method in ("floor", "cosine", "naive", "mha"):
            return {"floor": 0, "cosine": 1, "naive": 4, "mha": 5}[method]
        return 3 if selectors_lib.get(method).per_head else 2

    run.sort(key=rank)
    return run, skipped


def run_size(cfg, methods, repeats, seed, reference_dir=None, log=None, interleave=True):
    """Runs `methods` on one configuration in this process, on the same inputs: list of records.

    Each method is measured on its own (`measure`: its time, peak RSS and recall); then, with
    `interleave` and up to `INTERLEAVE_UP_TO`, all of them are timed again side by side
    (`interleaved_times`) and those times are reported (`apply_interleaved`)."""
    import sdattn  # noqa: F401  (registers the built-in selectors)

    log = log or (lambda message: None)
    inputs = make_inputs(cfg, seed)
    _, weights = _reference_weights(cfg, seed)
    reference_path = None if reference_dir is None else os.path.join(
        reference_dir, f"cosine_{cfg['num_keys']}_{cfg['num_queries']}.npy")
    cache = {}

    def reference():
        if "exact" not in cache:
            if reference_path and os.path.exists(reference_path):
                cache["exact"] = np.load(reference_path, allow_pickle=False)
            else:
                cache["exact"] = exact_cosine_indices(inputs[1], inputs[2], min(cfg["top_k"], cfg["num_keys"]))
        return cache["exact"]

    records = []
    for method in methods:
        record = {**cfg, "method": method, "status": "ok"}
        try:
            measured = measure(method, cfg, weights, inputs, repeats, seed,
                               reference=None if method == "cosine" else reference)
        except Exception as error:  # a failed method is reported, the others still run
            record.update(status="failed", note=f"{type(error).__name__}: {error}"[:300])
            records.append(record)
            log(f"N={cfg['num_keys']:,} {method}: FAILED {record['note']}")
            continue
        indices = measured.pop("indices")
        if method == "cosine" and indices is not None:
            cache["exact"] = indices
            measured["recall"] = 1.0
            if reference_path:
                np.save(reference_path, indices, allow_pickle=False)
        record.update(measured)
        records.append(record)
        log(f"N={cfg['num_keys']:,} {method}: {record['median_ms']:.1f} ms, peak RSS {record['peak_rss_mb']:.0f} MB"
            + ("" if record["build_s"] is None else f", index build {record['build_s']:.2f} s")
            + ("" if record["recall"] is None else f", recall@k {record['recall']:.3f}"))
    if interleave and _interleaves(cfg, records):
        apply_interleaved(records, _timed_side_by_side(cfg, records, weights, inputs, repeats, seed, log))
    return records


def _timed_side_by_side(cfg, records, weights, inputs, repeats, seed, log):
    """`interleaved_times` of the records' measured methods, logged; `{}` if it fails (the
    sequential times then stand)."""
    methods = _measured_methods(records)
    gc.collect()  # the last method's layer and graphs
    try:
        times = interleaved_times(cfg, methods, weights, inputs, repeats, seed)
    except Exception as error:  # the sequential times still stand
        log(f"N={cfg['num_keys']:,} interleaved timing FAILED ({type(error).__name__}: {error}"[:300] + ")")
        return {}
    log(_interleaved_summary(cfg, times))
    return times


def _interleaved_summary(cfg, times):
    """The progress line of a size's side-by-side timing: each method's median."""
    return f"N={cfg['num_keys']:,} interleaved: " + ", ".join(
        f"{method} {statistics.median(measured):.1f} ms" for method, measured in times.items())


def interleave_size(cfg, methods, repeats, seed):
    """`interleaved_times` of `methods` on a fresh copy of one configuration's inputs (the
    worker of a size whose methods were measured in separate processes)."""
    import sdattn  # noqa: F401  (registers the built-in selectors)

    inputs = make_inputs(cfg, seed)
    _, weights = _reference_weights(cfg, seed)
    return interleaved_times(cfg, methods, weights, inputs, repeats, seed)


# ---- orchestration --------------------------------------------------------------------------------------

def _worker_command(cfg, methods, args, out_path, reference_dir, interleave_only=False):
    return [sys.executable, "-m", "sdattn.bench", "--worker", "--sizes", str(cfg["num_keys"]),
            "--queries", str(cfg["num_queries"]), "--batch", str(cfg["batch"]), "--dim", str(cfg["dim"]),
            "--heads", str(cfg["heads"]), "--key-dim", str(cfg["key_dim"]), "--top-k", str(cfg["top_k"]),
            "--methods", ",".join(methods), "--repeats", str(args.repeats), "--seed", str(args.seed),
            "--reference-dir", reference_dir, "--worker-out", out_path,
            "--interleave" if args.interleave else "--no-interleave"] + (["--interleave-only"] if interleave_only else [])


def _run_in_subprocess(cfg, methods, args, reference_dir, log, interleave_only=False):
    """Runs methods in a fresh Python, so that its peak RSS belongs to this configuration alone.

    Returns:
        The records; with `interleave_only`, `{method: times}` from `interleave_size` instead
        (`{}` if the worker failed)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out_path = handle.name
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    try:
        completed = subprocess.run(_worker_command(cfg, methods, args, out_path, reference_dir, interleave_only), env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   timeout=args.timeout)
        for line in completed.stdout.splitlines():
            if line.startswith("[bench]"):
                log(line[len("[bench] "):])
        if completed.returncode == 0:
            with open(out_path) as results:
                return json.load(results)
        reason = f"worker exited with {completed.returncode}" + (
            " (killed: out of memory?)" if completed.returncode in (-9, 137) else "")
        tail = completed.stdout.strip().splitlines()[-3:]
        note = reason + (": " + " | ".join(tail) if tail else "")
    except subprocess.TimeoutExpired:
        note = f"worker timed out after {args.timeout} s"
    finally:
        with contextlib.suppress(OSError):
            os.unlink(out_path)
    log(f"N={cfg['num_keys']:,} {','.join(methods)}{' (interleaved)' if interleave_only else ''}: FAILED {note}")
    if interleave_only:
        return {}
    return [{**cfg, "method": method, "status": "failed", "note": note[:300]} for method in methods]


def add_ratios(records):
    """Adds `speedup_vs_mha`, `speedup_vs_naive` and `floor_multiple` to each measured record."""
    by_size = {}
    for record in records:
        if record.get("status") == "ok":
            by_size.setdefault((record["num_keys"], record["num_queries"]), {})[record["method"]] = record["median_ms"]
    for record in records:
        times = by_size.get((record["num_keys"], record["num_queries"]), {})
        own = record.get("median_ms") if record.get("status") == "ok" else None
        record["speedup_vs_mha"] = times["mha"] / own if own and "mha" in times else None
        record["speedup_vs_naive"] = times["naive"] / own if own and "naive" in times else None
        record["floor_multiple"] = own / times["floor"] if own and "floor" in times else None
    return records


def _format(value, pattern, missing="—"):
    return missing if value is None else pattern.format(value)


def markdown_table(records, environment):
    """The results as a Markdown table (what the README embeds), with the run's environment."""
    first = records[0] if records else config(DEFAULT_SIZES[0])
    lines = [
        f"Config P (B={first['batch']}, D={first['dim']}, H={first['heads']}, key_dim={first['key_dim']}, "
        f"top_k={first['top_k']}, float32; sparse queries, 8 non-zero features each); forward pass "
        f"under `tf.function`, median of {environment['repeats']} runs after {WARMUP_CALLS} warm-up calls"
        + (f"; up to N={INTERLEAVE_UP_TO:,} the runs are interleaved: each round takes every method of "
           "the size in turn, the order rotated by one each round, and times its second call in a row"
           if environment.get("interleave") else "")
        + f". Measured {environment['date']} on {environment['machine']}, TensorFlow {environment['tensorflow']}.",
        "",
        "| N | M | method | time (ms) | × faster than MHA | × faster than naive top-k | × K/V floor "
        "| recall@k vs cosine | index build (s) | peak RSS (MiB) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for record in records:
        name = METHOD_TITLES.get(record["method"], f"sdattn `{record['method']}`")
        if record.get("status") != "ok":
            lines.append(f"| {record['num_keys']:,} | {record['num_queries']:,} | {name} "
                         f"| {record.get('note', record.get('status'))} | | | | | | |")
            continue
        lines.append(
            f"| {record['num_keys']:,} | {record['num_queries']:,} | {name} | {record['median_ms']:.1f} "
            f"| {_format(record['speedup_vs_mha'], '{:.1f}×')} | {_format(record['speedup_vs_naive'], '{:.1f}×')} "
            f"| {_format(record['floor_multiple'], '{:.2f}')} | {_format(record['recall'], '{:.3f}')} "
            f"| {_format(record['build_s'], '{:.2f}')} | {record['peak_rss_mb']:.0f} |")
    lines += [
        "",
        "× faster = the baseline's median time / this method's; × K/V floor = this method's time / the "
        "time of projecting all N tokens with the key and value kernels (the work no attention over "
        "all tokens avoids). Peak RSS includes the inputs; each size runs in a fresh process (each "
        "method from N=65,536 on), the peak mark reset before each method, dense baselines last; "
        "the peaks come from each method's own run, before any interleaved timing (whose process "
        "holds every method of the size), and the JSON keeps that run's median as "
        "`sequential_median_ms`. Index build time is not in the query time. `random` (seeded here) and `window` depend only on "
        "static shapes, so TensorFlow's graph optimiser folds their selection into a constant: their "
        "rows time attention over a fixed selection.",
        "",
        f"Reproduce: `{environment['command']}`",
    ]
    return "\n".join(lines) + "\n"


def environment_info(args, argv):
    import tensorflow as tf

    gpus = _gpu_names()
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            match = re.search(r"model name\s*:\s*(.+)", cpuinfo.read())
            cpu = match.group(1).strip() if match else cpu
    machine = f"{os.cpu_count()} CPU cores ({cpu}), {total_memory_gb():.0f} GB RAM" + (
        f", GPU: {', '.join(gpus)}" if gpus else ", no GPU")
    return {"date": datetime.date.today().isoformat(), "machine": machine, "tensorflow": tf.__version__,
            "python": platform.python_version(), "repeats": args.repeats, "interleave": args.interleave,
            "command": "python -m sdattn.bench " + " ".join(argv)}


def _parse_list(text, cast=str):
    return [cast(item.strip()) for item in text.split(",") if item.strip()]


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m sdattn.bench",
        description="Time sdattn selectors against keras.layers.MultiHeadAttention on Config P inputs.")
    parser.add_argument("--sizes", default=None, help="comma-separated N (default: 4096,16384,65536,1048576)")
    parser.add_argument("--selectors", default=",".join(DEFAULT_SELECTORS),
                        help="comma-separated selector names, or 'all' for every registered one")
    parser.add_argument("--repeats", type=int, default=MIN_REPEATS, help="timed runs per method (>= 5)")
    parser.add_argument("--quick", action="store_true", help="N in {4096, 16384} only")
    parser.add_argument("--json", dest="json_path", help="write the records as JSON here")
    parser.add_argument("--markdown", dest="markdown_path", help="write the Markdown table here")
    parser.add_argument("--isolate", choices=["auto", "size", "method", "none"], default="auto",
                        help="fresh process per size, per method (auto: per method from N=65,536), or none")
    parser.add_argument("--queries", type=int, default=None, help="M (default 512; 1024 above N=65,536)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--key-dim", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dense-limit-gb", type=float, default=None,
                        help="skip MHA and the naive baseline when their score tensor exceeds this "
                             "(default: a quarter of physical memory)")
    parser.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=True,
                        help=f"up to N={INTERLEAVE_UP_TO:,}, time each size's methods again side by side, "
                             "one call of each per round, and report those medians (default: on)")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per worker process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--methods", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--reference-dir", help=argparse.SUPPRESS)
    parser.add_argument("--interleave-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < MIN_REPEATS:
        parser.error(f"Received an invalid value for argument `--repeats`, expected at least {MIN_REPEATS}. "
                     f"Received: --repeats={args.repeats}")
    sizes = args.sizes or ",".join(map(str, QUICK_SIZES if args.quick else DEFAULT_SIZES))
    try:
        args.sizes = _parse_list(sizes, int)
    except ValueError:
        parser.error(f"Received an invalid value for argument `--sizes`, expected comma-separated "
                     f"integers. Received: --sizes={sizes!r}")
    if not args.sizes or min(args.sizes) < 1:
        parser.error(f"Received an invalid value for argument `--sizes`, expected positive integers. "
                     f"Received: --sizes={sizes!r}")
    if args.dense_limit_gb is None:
        args.dense_limit_gb = total_memory_gb() / 4
    return args


def _resolve_selectors(text):
    import sdattn

    available = sdattn.available_selectors()
    if text == "all":
        return available
    selectors = _parse_list(text)
    unknown = [name for name in selectors if name not in available]
    if unknown:
        raise SystemExit(f"Received an invalid value for argument `--selectors`, expected names from "
                         f"{available}. Received: --selectors={text!r}")
    return selectors


def main(argv=None):
    """CLI entry point; returns the list of records."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)

    if not _logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        _logger.addHandler(handler)
        _logger.setLevel(logging.INFO)
        _logger.propagate = False

    def log(message):
        # Workers' lines carry this prefix; the parent process re-logs them (`_run_in_subprocess`).
        _logger.info("[bench] %s", message)

    if args.worker:
        cfg = config(args.sizes[0], args.queries, args.batch, args.dim, args.heads, args.key_dim, args.top_k)
        if args.interleave_only:
            results = interleave_size(cfg, _parse_list(args.methods), args.repeats, args.seed)
        else:
            results = run_size(cfg, _parse_list(args.methods), args.repeats, args.seed, args.reference_dir, log,
                               interleave=args.interleave)
        with open(args.worker_out, "w") as out:
            json.dump(results, out)
        return results

    selectors = _resolve_selectors(args.selectors)
    records = []
    with tempfile.TemporaryDirectory(prefix="sdattn-bench-") as reference_dir:
        for size in args.sizes:
            cfg = config(size, args.queries, args.batch, args.dim, args.heads, args.key_dim, args.top_k)
            methods, skipped = methods_for(cfg, selectors, args.dense_limit_gb)
            isolate = args.isolate
            if isolate == "auto":
                isolate = "method" if size >= ISOLATE_METHODS_FROM else "size"
            log(f"N={size:,} M={cfg['num_queries']:,}: {', '.join(methods)} ({isolate} isolation)")
            if isolate == "none":
                size_records = run_size(cfg, methods, args.repeats, args.seed, reference_dir, log, args.interleave)
            elif isolate == "size":
                size_records = _run_in_subprocess(cfg, methods, args, reference_dir, log)
            else:
                size_records = []
                for method in methods:
                    size_records += _run_in_subprocess(cfg, [method], args, reference_dir, log)
                if args.interleave and _interleaves(cfg, size_records):
                    # Each method's peak RSS came from its own process; the side-by-side times
                    # come from one more, which holds them all.
                    times = _run_in_subprocess(cfg, _measured_methods(size_records), args, reference_dir, log,
                                               interleave_only=True)
                    apply_interleaved(size_records, times)
                    if times:
                        log(_interleaved_summary(cfg, times))
            records += size_records
            records += [{**cfg, "method": method, "status": "not run", "note": reason} for method, reason in skipped]
            for method, reason in skipped:
                log(f"N={size:,} {method}: {reason}")
    add_ratios(records)
    environment = environment_info(args, argv)
    table = markdown_table(records, environment)
    _logger.info("\n%s", table)
    if args.json_path:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_path)), exist_ok=True)
        with open(args.json_path, "w") as out:
            json.dump({"environment": environment, "records": records}, out, indent=1)
    if args.markdown_path:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown_path)), exist_ok=True)
        with open(args.markdown_path, "w") as out:
            out.write(table)
    return records


if __name__ == "__main__":
    main()
