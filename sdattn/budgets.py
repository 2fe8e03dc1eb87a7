"""Memory budgets and density thresholds: every size limit the library works to, in one place.
Each says what it bounds and why; the measurements behind them are in benchmarks/NOTES.md."""

# Gathered raw rows [B, M, k, D] above this many elements per batch item (128 MB of float32)
# take the projecting path instead of the folded one.
FOLD_GATHER_ELEMENTS = 2**25

# A sparse query of at most this many elements is also densified (64 MB of float32), for the
# projection when a dense matmul is faster.
DENSIFY_ELEMENTS = 2**24

# Below this non-zero density `sparse_dense_matmul` projects the query faster than a dense
# matmul of its densified copy (the crossover lies between 0.8% and 1.2% on the CPU).
DENSE_PROJECTION_DENSITY = 0.01
