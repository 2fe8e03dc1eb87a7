"""GPU benchmark on Keras's JAX backend: sdattn (`dot`, `cosine`, `ann` or its exact stand-in) against
Keras MHA with and without flash attention, each figure also as a fraction of the machine's limits.

Run by `run_gpu_check.sh`; alone: `KERAS_BACKEND=jax python benchmarks/device/gpu_bench.py`.
Without a GPU it says so and runs small sizes on the CPU, so the script itself can be checked.
"""

import argparse
import datetime
import importlib.util
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import sparse as jax_sparse  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from sdattn.layer import SparseDenseMultiHeadAttention  # noqa: E402

# NVIDIA's published H200 SXM figures: HBM3e bandwidth, and dense (not 2:4 sparse) bf16 tensor-core rate.
H200_HBM_BYTES_PER_S = 4.8e12
H200_BF16_FLOPS = 989e12

GPU_SIZES = (16_384, 65_536, 262_144, 1_048_576)
CPU_SIZES = (1_024, 4_096)
# Config P, as `python -m sdattn.bench`: D = 256, H = 8, key_dim = 32, top_k = 32, 8 non-zero
# features per sparse query row, one batch item.
DIM, HEADS, KEY_DIM, TOP_K, NONZEROS, BATCH = 256, 8, 32, 32, 8, 1


def on_gpu():
    return jax.default_backend() == "gpu"


def sparse_queries(rng, num_queries, dtype):
    """A BCOO `[1, M, D]` query with NONZEROS features per row, what `keras.Input(sparse=True)` gives."""
    columns = np.stack([rng.choice(DIM, NONZEROS, replace=False) for _ in range(num_queries)])  # [M, nnz]
    rows = np.repeat(np.arange(num_queries), NONZEROS)
    indices = np.stack([np.zeros_like(rows), rows, columns.ravel()], axis=1)  # [M·nnz, 3]
    values = rng.random(len(rows)).astype(np.float32) + 0.5
    dense = np.zeros((BATCH, num_queries, DIM), np.float32)
    dense[tuple(indices.T)] = values
    return (jax_sparse.BCOO((jax.numpy.asarray(values, dtype), jax.numpy.asarray(indices, np.int32)),
                            shape=(BATCH, num_queries, DIM)),
            jax.numpy.asarray(dense, dtype))


def flops(method, num_queries, num_keys):
    """Multiply-adds ×2 each method cannot avoid: projections and scores (the matmul floor)."""
    per_token = 2 * DIM * HEADS * KEY_DIM  # one token through one of the K, Q or V kernels
    attend_all = 2 * num_queries * num_keys * HEADS * KEY_DIM  # q·k (or weights·v) over all N
    attend_k = 2 * num_queries * TOP_K * HEADS * KEY_DIM
    if method.startswith("keras MHA"):
        return 2 * num_keys * per_token + 2 * attend_all + num_queries * per_token
    if method == "sdattn dot":  # every key projected and scored per head, then k selected
        return num_keys * per_token + attend_all + 2 * attend_k + 2 * num_queries * TOP_K * per_token
    # cosine / ann / exact: raw-space scores M·N·D, then the k selected keys folded per query
    return 2 * num_queries * num_keys * DIM + 2 * attend_k + 2 * num_queries * TOP_K * per_token


def make_method(method, num_keys, dtype, faiss_present):
    """`(layer, sparse query?)` for one row of the table."""
    block_size = max(num_keys // 8, 4096)  # few blocks: plenty of HBM, and XLA compiles faster
    if method.startswith("keras MHA"):
        return keras.layers.MultiHeadAttention(HEADS, KEY_DIM, dtype=dtype), False
    selector = {"sdattn dot": {"name": "dot", "block_size": block_size},
                "sdattn cosine": {"name": "cosine", "block_size": block_size},
                "sdattn ann": {"name": "ann", "index_type": "ivf"},
                "sdattn exact (ann stand-in)": {"name": "ann", "index_type": "exact"}}[method]
    if method.endswith("stand-in)") and not faiss_present:
        selector = {"name": "cosine", "block_size": block_size}  # the same exact cosine top-k
    return SparseDenseMultiHeadAttention(HEADS, KEY_DIM, TOP_K, selector=selector, dtype=dtype), True


def time_method(method, num_queries, num_keys, dtype, repeats, faiss_present, rng):
    if method == "keras MHA (flash)":
        keras.config.enable_flash_attention()
    else:
        keras.config.disable_flash_attention()
    layer, takes_sparse = make_method(method, num_keys, dtype, faiss_present)
    sparse_query, dense_query = sparse_queries(rng, num_queries, dtype)
    value = jax.numpy.asarray(rng.standard_normal((BATCH, num_keys, DIM)).astype(np.float32), dtype)
    query = sparse_query if takes_sparse else dense_query
    layer(query, value)  # build
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    @jax.jit
    def forward(trainable, non_trainable, query, value):
        output, _ = layer.stateless_call(trainable, non_trainable, query, value)
        return output

    start = time.perf_counter()
    forward(trainable, non_trainable, query, value).block_until_ready()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward(trainable, non_trainable, query, value).block_until_ready()
        times.append(time.perf_counter() - start)
    return statistics.median(times), compile_s


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", help="comma-separated N (default: 16K..1M on a GPU, 1K,4K on a CPU)")
    parser.add_argument("--queries", type=int, help="M (default 1,024 on a GPU, 128 on a CPU)")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results_gpu"),
                        help="path stem: writes STEM.json and STEM.md")
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="stop starting new rows after this many seconds")
    args = parser.parse_args(argv)
    gpu = on_gpu()
    device = jax.devices()[0]
    if not gpu:
        print(f"No GPU visible to JAX (backend {jax.default_backend()!r}): running small sizes on "
              "the CPU to check the script; fractions are of the H200's limits, so not meaningful here.")
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(GPU_SIZES if gpu else CPU_SIZES)
    num_queries = args.queries or (1024 if gpu else 128)
    faiss_present = importlib.util.find_spec("faiss") is not None
    methods = ["sdattn dot", "sdattn cosine", "sdattn ann" if faiss_present else "sdattn exact (ann stand-in)",
               "keras MHA (flash)", "keras MHA (no flash)"]
    rng = np.random.default_rng(0)
    records, started = [], time.monotonic()
    for dtype in args.dtypes.split(","):
        for num_keys in sizes:
            for method in methods:
                record = {"method": method, "dtype": dtype, "N": num_keys, "M": num_queries}
                if time.monotonic() - started > args.budget_s:
                    record["error"] = "skipped: time budget spent"
                    records.append(record)
                    continue
                try:
                    seconds, compile_s = time_method(method, num_queries, num_keys, dtype,
                                                     args.repeats, faiss_present, rng)
                except Exception as error:  # OOM at large N, or a kernel the platform lacks
                    record["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
                else:
                    itemsize = np.dtype(jax.numpy.dtype(dtype)).itemsize
                    kv_floor = BATCH * num_keys * DIM * itemsize / H200_HBM_BYTES_PER_S  # K = V, read once
                    flop_floor = BATCH * flops(method, num_queries, num_keys) / H200_BF16_FLOPS
                    record.update(ms=seconds * 1e3, compile_s=compile_s,
                                  kv_read_fraction=kv_floor / seconds, matmul_fraction=flop_floor / seconds)
                records.append(record)
                print(json.dumps(record), flush=True)
    keras.config.disable_flash_attention()
    meta = {"date": datetime.date.today().isoformat(), "device": str(device), "platform": jax.default_backend(),
            "gpu": gpu, "jax": jax.__version__, "keras": keras.__version__, "python": platform.python_version(),
            "faiss": faiss_present, "config": {"B": BATCH, "D": DIM, "H": HEADS, "key_dim": KEY_DIM,
                                                "top_k": TOP_K, "nonzeros_per_query": NONZEROS, "M": num_queries},
            "limits": {"hbm_bytes_per_s": H200_HBM_BYTES_PER_S, "bf16_flops": H200_BF16_FLOPS},
            "matmul_precision": os.environ.get("JAX_DEFAULT_MATMUL_PRECISION", "default")}
    stem = pathlib.Path(args.output)
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    stem.with_suffix(".md").write_text(markdown(meta, records))
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")


def markdown(meta, records):
    where = (f"on {meta['device']}" if meta["gpu"] else
             f"on the CPU ({meta['device']}): **no GPU was visible**, so these are small sizes checking the script")
    lines = [f"sdattn vs Keras MHA on Keras {meta['keras']} / JAX {meta['jax']}, {where}, {meta['date']}. "
             f"B={BATCH}, D={DIM}, H={HEADS}, key_dim={KEY_DIM}, top_k={TOP_K}, M={meta['config']['M']}, "
             f"{NONZEROS} non-zero features per sparse query; jitted forward pass, median of the repeats after "
             "one compiling call.", "",
             "| dtype | N | method | time (ms) | compile (s) | K/V read floor / time | matmul floor / time |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['dtype']} | {r['N']:,} | {r['method']} | {r['error']} | | | |")
        else:
            lines.append(f"| {r['dtype']} | {r['N']:,} | {r['method']} | {r['ms']:.2f} | {r['compile_s']:.1f} | "
                         f"{r['kv_read_fraction']:.3g} | {r['matmul_fraction']:.3g} |")
    lines += ["", "K/V read floor: reading the N×D keys (= values) once at the H200's 4.8 TB/s; matmul floor: "
              "the method's unavoidable projection and score multiply-adds at 989 TFLOP/s dense bf16 (also for "
              "float32 rows, so those fractions are upper bounds on what float32 could reach). A fraction of 1 "
              "would be the machine's limit."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
