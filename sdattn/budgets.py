"""Memory budgets and density thresholds: every size limit the library works to, in one place.
Each says what it bounds and why; the measurements behind them are in benchmarks/NOTES.md."""

# ---- selection --------------------------------------------------------------------------------

# Scores per batch item in one key block of a shared selector (16 M float32 = 64 MB): bounds
# selection memory at large N whatever the block count.
BLOCK_ELEMENTS = 2**24
# Per-head selectors get 4× that (256 MB per batch item): each block costs a top-k and a merge
# over H·M rows, with a fixed cost per row, so small blocks are slow (NOTES: "Block size").
PER_HEAD_BLOCK_ELEMENTS = 2**26
# `hybrid`: up to this many (key, window-taken key) comparisons in one block, the dot part ranks
# the window's keys last while scoring; above it, fetching w more keys and dropping the taken
# ones afterwards is cheaper (NOTES: "hybrid").
HYBRID_TAKEN_COMPARISONS = 2**26

# ---- the query ------------------------------------------------------------------------------

# A sparse query of at most this many elements may be densified (64 MB of float32), for the
# projection (layer) or the cosine scores (`cosine`) when a dense matmul is faster.
DENSIFY_ELEMENTS = 2**24
# Below this non-zero density `sparse_dense_matmul` projects the query faster than a dense
# matmul of its densified copy; the crossover lies between 0.8% and 1.2% on the CPU (NOTES:
# "Sparse or dense query").
DENSE_PROJECTION_DENSITY = 0.01
# `cosine`'s default `sparse_density`: the same crossover for its query-key scores.
SPARSE_SCORING_DENSITY = 0.01
# Below this non-zero density, `cosine` on TF's CPU scores a sparse query from its stored values
# with a running top-k (`selectors.sparse_cosine`), instead of a dense product and a top-k: the
# compiled loop costs more per multiply-add than a dense matmul, and does density·D of them
# (NOTES: "`cosine`: the sparse path").
FUSED_COSINE_DENSITY = 0.125

# ---- attention --------------------------------------------------------------------------------

# Gathered raw rows [B, M, k, D] above this many elements per batch item (128 MB of float32)
# take the projecting path instead of the folded one.
FOLD_GATHER_ELEMENTS = 2**25
# At inference `dot`'s selected raw value rows are summed by the compiled kernel
# (`sdattn.value_mixing`) from this many selected elements per batch item (H·M·k·Dv; 2 M) up:
# below it TF's ops take less time than loading Numba does, so small calls (the app's default
# sizes) never load it.
VALUE_MIXING_MIN_ELEMENTS = 2**21
# The folded path's logits, softmax and mixing run in the compiled kernel
# (`sdattn.folded_attention`) from this many selected raw elements per batch item (M·k·D; 2 M)
# up, for the same reason.
FOLDED_KERNEL_MIN_ELEMENTS = 2**21

# ---- the `ann` index ----------------------------------------------------------------------------

# Rows normalised and added to an index per step: bounds the temporary copy to 64 MB at D = 256.
ANN_ADD_CHUNK_ROWS = 65_536
# Candidate key elements gathered per step when `ann` re-scores 8-bit candidates exactly (1 M
# float32 = 4 MB): at N = 1M, M = 1,024 the whole [M, 2·k, D] gather would take 64 MB per batch
# item, in each of the batch items' threads at once; 16 MB steps left 25 MiB more at the peak.
ANN_RESCORE_ELEMENTS = 2**20
# Score elements per step of `ann`'s exact NumPy fallback (16 M float32 = 64 MB).
ANN_EXACT_BLOCK_ELEMENTS = 2**24
# Above this many bytes of float32 vectors per batch item (256 MB), `storage="auto"` keeps 8-bit
# codes instead (4× less memory); exact re-scoring of the candidates recovers the ranking.
ANN_AUTO_FLAT_BYTES = 2**28
# At most this share of non-zero query entries, a flat IVF index on the CPU is searched from the
# rows' stored features (`selectors.ann.sparse_search`) instead of by Faiss's dense scan
# (NOTES: "`ann`").
ANN_SPARSE_SEARCH_DENSITY = 0.125
