"""Prototype, not used by sdattn: fused sparse-query cosine scoring + exact top-k in one Numba pass.
Threads split the keys; each keeps its own running top-k per row; the two are merged at the end.
Run: python benchmarks/fused_cosine_prototype.py (benchmarks/NOTES.md, "Exact cosine")."""
import sys, time, numpy as np, numba
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__))))

@numba.njit(nogil=True, cache=False)
def fused(query, keys, start, stop, k, tile, out_values, out_indices):
    # query [M, D] unit rows (dense, mostly zero); keys [N, D] raw; keys [start, stop) scored.
    M, D = query.shape
    cols = np.empty((M, D), np.int32); vals = np.empty((M, D), np.float32); counts = np.zeros(M, np.int32)
    for m in range(M):
        c = 0
        for d in range(D):
            if query[m, d] != 0:
                cols[m, c] = d; vals[m, c] = query[m, d]; c += 1
        counts[m] = c
    buffer = np.empty((D, tile), np.float32); scale = np.empty(tile, np.float32)
    scores = np.empty(tile, np.float32)
    out_values[:] = -np.inf; out_indices[:] = -1
    for t0 in range(start, stop, tile):
        n = min(tile, stop - t0)
        for j in range(n):  # transpose the tile, with each key's 1/norm
            s = 0.0
            for d in range(D):
                x = keys[t0 + j, d]; buffer[d, j] = x; s += x * x
            scale[j] = 1.0 / (np.sqrt(s) + 1e-9)
        for m in range(M):
            scores[:n] = 0
            for p in range(counts[m]):
                v = vals[m, p]; row = buffer[cols[m, p]]
                for j in range(n):
                    scores[j] += v * row[j]
            slot_values = out_values[m]; slot_idx = out_indices[m]
            worst = slot_values[k - 1]
            for j in range(n):
                value = scores[j] * scale[j]
                if value > worst or slot_idx[k - 1] < 0:
                    slot = k - 1
                    while slot > 0 and (slot_values[slot - 1] < value or slot_idx[slot - 1] < 0):
                        slot_values[slot] = slot_values[slot - 1]; slot_idx[slot] = slot_idx[slot - 1]; slot -= 1
                    slot_values[slot] = value; slot_idx[slot] = t0 + j
                    worst = slot_values[k - 1]

from sdattn.inputs import generate_inputs
from sdattn import bench
from concurrent.futures import ThreadPoolExecutor
pool = ThreadPoolExecutor(2)
def run(q, keys, k=32, tile=2048):
    M, N = q.shape[0], keys.shape[0]
    half = (N // 2 // tile) * tile or N
    parts = [(0, half), (half, N)] if half < N else [(0, N)]
    outs = [(np.empty((M, k), np.float32), np.empty((M, k), np.int64)) for _ in parts]
    list(pool.map(lambda a: fused(q, keys, a[0][0], a[0][1], k, tile, a[1][0], a[1][1]), zip(parts, outs)))
    if len(outs) == 1: return outs[0][1]
    v = np.concatenate([o[0] for o in outs], 1); i = np.concatenate([o[1] for o in outs], 1)
    order = np.lexsort((i, -v), axis=-1)[:, :k]
    return np.take_along_axis(i, order, 1)
for n in (16384, 65536):
    ex = generate_inputs("config_p", seed=0, num_keys=n)
    q = ex.dense_query(); v = ex.value
    qn = (q / (np.linalg.norm(q, axis=-1, keepdims=True) + 1e-9)).astype(np.float32)
    run(qn[0], v[0])  # compile
    exact = bench.exact_cosine_indices(q, v, 32)
    got = np.stack([run(qn[b], v[b]) for b in range(2)])
    print(n, "recall vs exact", bench.recall_at_k(got, exact), "same order rows", np.mean((np.sort(got, -1) == np.sort(exact, -1)).all(-1)))
    ts = []
    for _ in range(7):
        s = time.perf_counter(); [run(qn[b], v[b]) for b in range(2)]; ts.append((time.perf_counter() - s) * 1e3)
    print(n, f"fused both items: median {np.median(ts):.1f} ms, min {min(ts):.1f}", flush=True)
