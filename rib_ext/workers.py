"""Pools of worker processes for the CPU-bound per-image work (the dense CRF of crf and ir_label).

A rank's share of the images is spread over ``workers`` processes of one machine. Each image is
computed alone and written atomically by the process that computed it, and what the parent sums
(confusion counts) are integers, so the outputs do not depend on the number of workers or on the
order in which they finish.

Start method: ``fork`` where the platform has it (Linux). The tasks run numpy, PIL and pydensecrf
only (no torch threads, no CUDA), and fork hands the workers the dataset as it is in memory; a COCO
dataset holds its whole annotation file, which ``spawn`` would pickle into every worker. Elsewhere
``spawn`` (the task function and its context must then pickle).
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator, Optional, Tuple

# The task of the pool this process works for: (function, context), set once by the initializer.
_TASK: dict = {}


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a cgroup)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers() -> int:
    """The cores available, shared among the ranks torchrun started on this machine (so two ranks
    on 16 cores take 8 workers each instead of 32 processes fighting for 16 cores)."""
    local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, available_cores() // local_ranks)


def resolve_workers(requested: Optional[int]) -> int:
    """``None`` -> :func:`default_workers`; 0 and 1 both mean: in this process, no pool."""
    if requested is None:
        return default_workers()
    if requested < 0:
        raise ValueError(f"worker count must be >= 0 (or None for the cores available), got {requested}")
    return max(1, int(requested))


def _context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _init(fn: Callable, context: Any) -> None:
    _TASK["fn"], _TASK["context"] = fn, context


def _call(item):
    return _TASK["fn"](_TASK["context"], item)


def run_tasks(fn: Callable[[Any, Any], Any], context: Any, items: Iterable, workers: int,
              window: Optional[int] = None) -> Iterator[Tuple[Any, Any]]:
    """``(item, fn(context, item))`` for every item, in the order they finish.

    ``workers`` <= 1 runs them here, one after the other; otherwise a pool of ``workers``
    processes does, with at most ``window`` items in flight (default 4 per worker: enough to keep
    them busy, few enough that an error stops the run soon). An exception in a task is raised here
    (with the worker's traceback as its cause) after the pending tasks are cancelled.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield item, fn(context, item)
        return
    window = window or 4 * workers
    pool = ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=_context(),
                               initializer=_init, initargs=(fn, context))
    try:
        pending = {}
        queue = iter(items)
        for item in queue:
            pending[pool.submit(_call, item)] = item
            if len(pending) >= window:
                break
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                item = pending.pop(future)
                result = future.result()
                nxt = next(queue, _END)
                if nxt is not _END:
                    pending[pool.submit(_call, nxt)] = nxt
                yield item, result
    finally:
        # On an error (or a consumer that stops early) nothing new starts; running tasks finish
        # their image (each writes atomically) before the pool goes away.
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()
