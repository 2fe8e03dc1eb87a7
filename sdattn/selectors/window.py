"""The `window` selector: the k keys nearest the query's proportional position (local attention).
Shared by all heads; equidistant keys go to the lower index."""

import tensorflow as tf

from sdattn.selectors.base import Selector, register_selector


@register_selector("window", "The k keys nearest the query's proportional position: local attention.")
class WindowSelector(Selector):
    """Shared local selection: the k keys nearest to position round(i·(N−1)/max(M−1, 1)).

    Query i of M is mapped to a proportional position among the N keys, so a short query
    sequence still spans the whole key sequence. Equidistant keys: the lower index wins.
    Rounding is half-to-even, as Python's `round`.
    """

    def scores(self, context, start, stop):
        num_queries = tf.cast(context.num_queries, tf.float64)
        num_keys = tf.cast(context.num_keys, tf.float64)
        query_position = tf.range(num_queries, dtype=tf.float64)
        centre = tf.round(query_position * (num_keys - 1.0) / tf.maximum(num_queries - 1.0, 1.0))  # [M]
        key_position = tf.range(start, stop, dtype=tf.float64)  # [n]
        distance = tf.abs(key_position[None, :] - centre[:, None])  # [M, n]
        batch = tf.shape(context.key)[0]
        # float32 even under float16 policies: distances up to N must stay distinct.
        negative_distance = tf.cast(-distance, tf.float32)[None, None]  # [1, 1, M, n]
        return tf.tile(negative_distance, [batch, 1, 1, 1])  # [B, 1, M, n]
