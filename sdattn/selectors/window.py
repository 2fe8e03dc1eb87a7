"""The `window` selector: the k keys nearest the query's proportional position (local attention).
Shared by all heads; equidistant keys go to the lower index."""

from keras import ops

from sdattn import backend

from sdattn.selectors.base import Selector, register_selector


@register_selector("window", "The k keys nearest the query's proportional position: local attention.")
class WindowSelector(Selector):
    """Shared local selection: the k keys nearest to position round(i·(N−1)/max(M−1, 1)).

    Query i of M is mapped to a proportional position among the N keys, so a short query
    sequence still spans the whole key sequence. Equidistant keys: the lower index wins.
    Rounding is half-to-even, as Python's `round`.
    """

    def scores(self, context, start, stop):
        centre = self._centres(context)  # [M]
        key_position = ops.arange(start, stop, dtype="int32")  # [n]
        # float32 even under float16 policies: distances up to N must stay distinct.
        negative_distance = ops.cast(-ops.abs(key_position[None, :] - centre[:, None]), "float32")  # [M, n]
        batch = backend.dynamic_shape(context.key)[0]
        num_queries = backend.dynamic_shape(context.projected_query)[1]
        return ops.broadcast_to(negative_distance[None, None], (batch, 1, num_queries, stop - start))  # [B, 1, M, n]

    @staticmethod
    def _centres(context):
        """round_half_even(i·(N−1) / max(M−1, 1)) for each query i, in int32 arithmetic.

        Exact where a float32 ratio would not be (JAX has no float64 by default): with
        N−1 = a·d + r (d = max(M−1, 1)), i·(N−1) = i·a·d + i·r, and only i·r < M² is divided.
        """
        num_queries, num_keys = context.num_queries, context.num_keys
        if isinstance(num_queries, int) and isinstance(num_keys, int):
            divisor = max(num_queries - 1, 1)  # Python ints: static shapes stay static
            whole, remainder = divmod(num_keys - 1, divisor)
        else:  # a TF graph with unknown M or N
            num_queries = ops.cast(num_queries, "int32")
            divisor = ops.maximum(num_queries - 1, 1)
            whole, remainder = ops.floor_divide(num_keys - 1, divisor), ops.mod(num_keys - 1, divisor)
        query_position = ops.arange(num_queries, dtype="int32")  # [M]
        carried = query_position * remainder  # [M], below M²
        quotient = query_position * whole + ops.floor_divide(carried, divisor)
        twice_left = 2 * ops.mod(carried, divisor)
        # Half-way rounds to the even neighbour, as Python's `round` does.
        rounds_up = ops.logical_or(twice_left > divisor,
                                   ops.logical_and(twice_left == divisor, ops.mod(quotient, 2) == 1))
        return quotient + ops.cast(rounds_up, "int32")  # [M]
