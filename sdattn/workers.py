"""The process-wide thread pool for work done outside TF's own threads: Faiss searches, content
hashes and the CPU top-k kernel. Each of these releases the GIL, so threads run in parallel."""

import concurrent.futures
import os
import threading

#: Threads in the pool: one per core, at most 8.
WORKERS = min(8, os.cpu_count() or 1)

_pool = None
_pool_lock = threading.Lock()


def thread_pool():
    """The shared `ThreadPoolExecutor` of `WORKERS` threads, created on first use.

    Returns:
        A `concurrent.futures.ThreadPoolExecutor`.
    """
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=WORKERS, thread_name_prefix="sdattn")
    return _pool

