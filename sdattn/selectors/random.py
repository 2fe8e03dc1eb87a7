"""The `random` selector: uniformly random keys without replacement, seeded, shared by all heads.
The baseline every other strategy must beat."""

import keras
import numpy as np
from keras import ops

from sdattn import arguments, backend
from sdattn.selectors.base import Selector, register_selector

#: The seeded draws: "hash" is the same on every backend; "tf_stateless" is the draw of files
#: saved before the backend port (TensorFlow only), kept so they still select the same keys.
_GENERATORS = ("hash", "tf_stateless")


def _mix(x):
    """A 32-bit integer hash (Wellons' lowbias32): uint32 in, well-mixed uint32 out."""
    x = ops.bitwise_xor(x, ops.right_shift(x, 16))
    x = ops.multiply(x, np.uint32(0x7FEB352D))
    x = ops.bitwise_xor(x, ops.right_shift(x, 15))
    x = ops.multiply(x, np.uint32(0x846CA68B))
    return ops.bitwise_xor(x, ops.right_shift(x, 16))


def hashed_uniform(seed, batch, num_queries, start, stop):
    """Uniform floats in [0, 1), float32 `[B, 1, M, stop - start]`, a pure function of the seed and
    of each score's (batch item, query, key) position: identical on TensorFlow and JAX."""
    batch_ids = ops.cast(ops.arange(batch, dtype="int32"), "uint32")[:, None, None, None]  # [B, 1, 1, 1]
    query_ids = ops.cast(ops.arange(num_queries, dtype="int32"), "uint32")[None, None, :, None]  # [1, 1, M, 1]
    key_ids = ops.cast(ops.arange(start, stop, dtype="int32"), "uint32")[None, None, None, :]  # [1, 1, 1, n]
    state = _mix(ops.convert_to_tensor(np.uint32((seed + 0x9E3779B9) % 2**32)))
    state = _mix(state + batch_ids)
    state = _mix(state + query_ids)
    state = _mix(state + key_ids)  # [B, 1, M, n]
    # The top 24 bits: every value is exact in float32, and 1.0 is never reached.
    return ops.cast(ops.right_shift(state, 8), "float32") * (1.0 / 2**24)


@register_selector("random", "Uniformly random keys (seeded): the baseline any strategy must beat.")
class RandomSelector(Selector):
    """Shared uniform random selection without replacement, a baseline.

    Args:
        seed: int for the same selection on every call (reproducible demos), or None for a
            fresh draw on each call.
        generator: the seeded draw: "hash" (default), a counter-based hash that selects the
            same keys on every backend, or "tf_stateless", TensorFlow's stateless generator,
            which `.keras` files saved before the backend port use (TensorFlow only).
    """

    def __init__(self, seed=None, generator="hash", **kwargs):
        seed = arguments.integer("seed", seed, minimum=0, allow_none=True)
        if generator not in _GENERATORS:
            raise ValueError(
                f"Received an invalid value for argument `generator`, expected one of "
                f"{list(_GENERATORS)}. Received: generator={generator!r}")
        super().__init__(**kwargs)
        self.seed = seed
        self.generator = generator
        self._seed_generator = keras.random.SeedGenerator(seed)

    def scores(self, context, start, stop):
        batch = backend.dynamic_shape(context.key)[0]
        num_queries = backend.dynamic_shape(context.projected_query)[1]
        if self.seed is None:
            return keras.random.uniform((batch, 1, num_queries, stop - start),
                                        seed=self._seed_generator, dtype="float32")
        if self.generator == "tf_stateless":
            return backend.legacy_uniform(ops.stack([batch, 1, num_queries, stop - start]),
                                          seed=[self.seed, start])
        return hashed_uniform(self.seed, batch, num_queries, start, stop)

    @classmethod
    def from_config(cls, config):
        # A config without `generator` was saved before the port, with TF's stateless draw.
        config = dict(config)
        config.setdefault("generator", "tf_stateless")
        return cls(**config)

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed, generator=self.generator)
        return config
