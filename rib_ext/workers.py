"""Pools of worker processes for the CPU-bound per-image work (the dense CRF of crf and ir_label),
and the signals of a run: the one place that owns the workers' lifetime.

Workers die with their parent: on Linux the kernel kills them when it dies (``PR_SET_PDEATHSIG``),
elsewhere, and as a fallback, a thread in each worker exits when its parent is gone. They leave
the signals to the parent (Ctrl-C and SIGTERM stop the run there, which lets the images in hand
finish and shuts the pool down) and hold none of its files open that matter: the run lock is closed
in every forked child (:mod:`rib_ext.runlock`). :func:`stop_on_sigterm` makes SIGTERM stop a run
as Ctrl-C does: :class:`Terminated`, a ``KeyboardInterrupt``, raised in the main thread.

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

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
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


PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_S = 0.5


def _die_with_parent(parent: int) -> None:
    """Exit when process ``parent`` is gone: the kernel's parent-death signal on Linux, and a
    thread that polls the parent (any platform; also covers a parent that died before the
    signal was set)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the thread below still watches
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _init(fn: Callable, context: Any, parent: int) -> None:
    _die_with_parent(parent)
    # The parent owns the signals: a worker finishes its image and goes when the pool shuts down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
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
                               initializer=_init, initargs=(fn, context, os.getpid()))
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


# ------------------------------------------------------------------------------------ signals

class Terminated(KeyboardInterrupt):
    """The run got SIGTERM: stopped as by Ctrl-C (outputs are atomic, a rerun resumes)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def stop_on_sigterm():
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (elsewhere, or
    from another thread, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
