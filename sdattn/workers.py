"""The process-wide thread pool for work done outside TF's own threads: Faiss searches, content
hashes and the compiled CPU kernels. Each of these releases the GIL, so threads run in parallel."""

import concurrent.futures
import os
import threading

#: Threads in the pool: one per core, at most 8.
WORKERS = min(8, os.cpu_count() or 1)

_THREAD_PREFIX = "sdattn-worker"

_pool = None
_pool_lock = threading.Lock()


def _thread_pool():
    """The shared `ThreadPoolExecutor` of `WORKERS` threads, created on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=WORKERS, thread_name_prefix=_THREAD_PREFIX)
    return _pool


def parallel_map(function, *iterables):
    """`[function(*args) for args in zip(*iterables)]`, run on the shared pool.

    A single item runs in the calling thread (no hand-over to pay for). So does everything
    when called from one of the pool's own threads: a task that waited for tasks queued behind
    it could deadlock a busy pool.

    Returns:
        The results, in order.
    """
    arguments = list(zip(*iterables))
    if len(arguments) < 2 or threading.current_thread().name.startswith(_THREAD_PREFIX):
        return [function(*args) for args in arguments]
    return list(_thread_pool().map(lambda args: function(*args), arguments))


def parallel_ranges(function, total, min_per_range):
    """`function(start, stop)` over `[0, total)` cut into equal ranges, one per worker, each at
    least `min_per_range` long (one range when `total` is shorter): for kernels that release
    the GIL and write their share of an output array.

    Returns:
        The results, in range order.
    """
    ranges = max(1, min(WORKERS, total // max(min_per_range, 1)))
    bounds = [total * part // ranges for part in range(ranges + 1)]
    return parallel_map(function, bounds[:-1], bounds[1:])
