"""The `lsh` selector: random-hyperplane hashing (SimHash, as in Reformer), seeded and shared by all heads.
A query sees the keys of its own bucket first, ranked by cosine, then the keys of the nearest buckets."""

import numpy as np
from keras import ops

from sdattn import arguments, backend
from sdattn.selectors.base import register_selector
from sdattn.selectors.cosine import CosineSelector

# Cosine lies in [-1, 1], so a step of 4 per Hamming bit keeps every key of a nearer bucket ahead
# of every key of a farther one, whatever their cosines (with margin for rounding).
_BUCKET_STEP = 4.0


@register_selector("lsh", "Random-hyperplane hash buckets (Reformer-style), nearest buckets first, seeded; shared.")
class LSHSelector(CosineSelector):
    """Shared selection by locality-sensitive hashing with random hyperplanes.

    Each of `num_tables` tables draws `num_bits` random hyperplanes; a vector's code in a table
    is the side of each hyperplane it lies on, and its bucket is that code. Vectors with a small
    angle between them agree on most bits (P[bit differs] = angle / π), so the Hamming distance
    between codes is a cheap estimate of the angle.

    For each query, keys are ranked first by their bucket distance: the smallest Hamming
    distance between the query's and the key's codes over the tables (0 means "same bucket in
    some table"), and then, within equal distance, by the cosine similarity. So the k keys are
    the best keys of the query's own bucket, falling back to the nearest buckets when that
    bucket holds fewer than k allowed keys. Masked keys are never preferred over allowed ones.

    Vectors are hashed in the raw space when the query and key feature sizes match (Dq == Dk),
    otherwise in the head-averaged projected space, exactly the vectors `cosine` compares.

    This reproduces *which* keys bucketed attention would see, for debugging; it scores every
    key (streamed in blocks), so it is not faster than `cosine`.

    Args:
        num_bits: hyperplanes per table; 2**num_bits buckets. More bits give smaller buckets and
            more precise but less forgiving matches. 8 gives 256 buckets, a few keys per bucket
            at N in the thousands.
        num_tables: independent hash tables; a key counts as near when it is near in any table
            (more tables, higher recall).
        seed: seed of the hyperplanes. None draws one at construction and keeps it in the config,
            so the same instance (and a saved and reloaded model) always hashes the same way.
        epsilon: added to norms in the cosine (see `cosine`).
        block_size: keys scored per block (see `Selector`).
    """

    def __init__(self, num_bits=8, num_tables=1, seed=None, epsilon=1e-9, block_size=None, **kwargs):
        num_bits = arguments.positive_int("num_bits", num_bits, maximum=64)
        num_tables = arguments.positive_int("num_tables", num_tables)
        seed = arguments.integer("seed", seed, minimum=0, allow_none=True)
        if seed is None:
            seed = int(np.random.default_rng().integers(2**31))
        super().__init__(epsilon=epsilon, block_size=block_size, **kwargs)
        self.num_bits = num_bits
        self.num_tables = num_tables
        self.seed = int(seed)

    def hyperplanes(self, dim):
        """The normals of the hash hyperplanes in a `dim`-dimensional space.

        Args:
            dim: the size of the hashed vectors.

        Returns:
            float32 array `[num_tables, dim, num_bits]`; the same for the same seed.
        """
        rng = np.random.default_rng(self.seed)
        return rng.standard_normal((self.num_tables, dim, self.num_bits)).astype(np.float32)

    def _flat_hyperplanes(self, dim):
        normals = self.hyperplanes(dim)  # [T, dim, bits]
        return ops.convert_to_tensor(np.transpose(normals, (1, 0, 2)).reshape(dim, -1))  # [dim, T·bits]

    def _codes(self, projections, leading_shape):
        """±1 codes from projections onto the normals: `[..., T·bits]` → `[..., T, bits]`."""
        signs = ops.where(projections >= 0, 1.0, -1.0)
        return ops.reshape(signs, tuple(leading_shape) + (self.num_tables, self.num_bits))  # [B, L, T, bits]

    def _query_codes(self, context):
        if "lsh_query_codes" in context.cache:
            return context.cache["lsh_query_codes"]
        if self._raw_space(context):
            query = context.query
            dim = int(query.shape[-1])
            normals = self._flat_hyperplanes(dim)
            if backend.is_sparse(query):
                projections = backend.sparse_matmul(backend.cast_sparse(query, "float32"), normals)  # [B, M, T·bits]
            else:
                projections = ops.einsum("bmd,dc->bmc", ops.cast(query, "float32"), normals)  # [B, M, T·bits]
            leading = backend.dynamic_shape(projections)[:2]
        else:
            mean_query = ops.mean(ops.cast(context.projected_query, "float32"), axis=2)  # [B, M, kd]
            normals = self._flat_hyperplanes(int(mean_query.shape[-1]))
            projections = ops.einsum("bmd,dc->bmc", mean_query, normals)  # [B, M, T·bits]
            leading = backend.dynamic_shape(mean_query)[:2]
        codes = self._codes(projections, leading)  # [B, M, T, bits]
        context.cache["lsh_query_codes"] = codes
        return codes

    def bucket_distance(self, context, start, stop):
        """Smallest Hamming distance over the tables between query and key codes, float32 `[B, M, n]`."""
        query_codes = self._query_codes(context)  # [B, M, T, bits]
        if self._raw_space(context):
            key_block = ops.cast(context.key[:, start:stop], "float32")  # [B, n, Dk]
        else:
            key_block = ops.mean(ops.cast(context.projected_key[:, start:stop], "float32"), axis=2)  # [B, n, kd]
        normals = self._flat_hyperplanes(int(key_block.shape[-1]))
        projections = ops.einsum("bnd,dc->bnc", key_block, normals)  # [B, n, T·bits]
        key_codes = self._codes(projections, backend.dynamic_shape(key_block)[:2])  # [B, n, T, bits]
        agreement = ops.einsum("bmtc,bntc->bmnt", query_codes, key_codes)  # [B, M, n, T]
        hamming = (float(self.num_bits) - agreement) / 2.0
        return ops.min(hamming, axis=-1)  # [B, M, n]

    def scores(self, context, start, stop):
        cosine = ops.cast(super().scores(context, start, stop), "float32")  # [B, 1, M, n]
        # In a graph, `cosine`'s sparse-norm path loses the static rank; restore it for top_k.
        cosine = backend.ensure_shape(cosine, [None, 1, None, None])
        distance = self.bucket_distance(context, start, stop)[:, None]  # [B, 1, M, n]
        return cosine - _BUCKET_STEP * distance

    def get_config(self):
        config = super().get_config()
        config.update(num_bits=self.num_bits, num_tables=self.num_tables, seed=self.seed)
        return config
