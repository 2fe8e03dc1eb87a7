"""The shared worker pool: results in order, and no deadlock when a task maps again."""

import threading

from sdattn import workers


def test_parallel_map_keeps_the_order_and_runs_off_the_calling_thread():
    caller = threading.current_thread().name
    results = workers.parallel_map(lambda a, b: (a * b, threading.current_thread().name), range(6), range(6, 12))
    assert [product for product, _ in results] == [a * b for a, b in zip(range(6), range(6, 12))]
    assert all(name != caller and name.startswith("sdattn-worker") for _, name in results)


def test_a_task_that_maps_again_runs_its_items_inline_instead_of_waiting_for_the_busy_pool():
    """As many outer tasks as workers, each mapping again: had the inner items been queued,
    every worker would wait on items no free worker can take."""
    def outer(item):
        inner = workers.parallel_map(lambda value: (value, threading.current_thread().name), range(3))
        return item, {name for _, name in inner} == {threading.current_thread().name}

    done = threading.Event()
    results = []
    runner = threading.Thread(target=lambda: (results.extend(workers.parallel_map(outer, range(workers.WORKERS))), done.set()),
                              daemon=True)
    runner.start()
    assert done.wait(timeout=30), "parallel_map deadlocked"
    assert results == [(item, True) for item in range(workers.WORKERS)]


def test_parallel_ranges_cover_the_rows_once_in_order_and_never_below_the_minimum():
    for total, minimum in ((0, 16), (5, 16), (100, 16), (1000, 64), (7, 1)):
        ranges = workers.parallel_ranges(lambda start, stop: (start, stop), total, minimum)
        assert ranges[0][0] == 0 and ranges[-1][1] == total
        assert all(stop == start for (_, stop), (start, _) in zip(ranges, ranges[1:]))  # contiguous
        assert len(ranges) <= workers.WORKERS
        assert len(ranges) == 1 or all(stop - start >= minimum for start, stop in ranges)
