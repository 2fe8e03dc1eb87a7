"""The `random` selector: uniformly random keys without replacement, seeded, shared by all heads.
The baseline every other strategy must beat."""

import keras
import tensorflow as tf

from sdattn.selectors.base import Selector, register_selector


@register_selector("random", "Uniformly random keys (seeded): the baseline any strategy must beat.")
class RandomSelector(Selector):
    """Shared uniform random selection without replacement, a baseline.

    Args:
        seed: int for the same selection on every call (reproducible demos), or None for a
            fresh draw on each call.
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed)

    def scores(self, context, start, stop):
        batch = tf.shape(context.key)[0]
        shape = tf.stack([batch, 1, tf.cast(context.num_queries, tf.int32), stop - start])
        if self.seed is not None:
            return tf.random.stateless_uniform(shape, seed=[self.seed, start])
        return keras.random.uniform(shape, seed=self._seed_generator, dtype="float32")

    def get_config(self):
        config = super().get_config()
        config["seed"] = self.seed
        return config
