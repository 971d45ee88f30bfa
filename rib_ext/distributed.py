"""torch.distributed helpers: a run under ``torchrun`` shards the image list by rank, writes its
results to shared storage, and reduces confusion matrices across ranks.

Waiting: a rank that waits for another (:func:`barrier`, :func:`main_first`) polls the rendezvous
store instead of blocking in a collective, so the wait has no deadline however long the other
rank's work takes (a 2-hour train_cam, a COCO annotation file being read), and it logs what it
waits for every :data:`WAIT_LOG_SECONDS`. The process group's own timeout (``dist_timeout_s``,
default :data:`DEFAULT_TIMEOUT_S`) then only bounds the collectives themselves (DDP's gradient
all-reduce, the confusion-matrix sums), which all ranks enter together.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
import time
from typing import Iterator, Optional, Sequence

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 7200.0  # torch's own default (10 min for NCCL) ends real training runs
WAIT_LOG_SECONDS = 60.0
log = logging.getLogger("rib_ext.distributed")

# The rendezvous store of the default process group (set by init_from_env) and the number of
# barriers passed, which names the next barrier's keys: every rank calls them in the same order.
_state = {"store": None, "barriers": 0, "failed": False}


def init_from_env(timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Initialise the default process group when launched by torchrun (WORLD_SIZE > 1): NCCL on
    CUDA, gloo on the CPU, with a collective timeout of ``timeout_s`` seconds."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        timeout = datetime.timedelta(seconds=float(timeout_s))
        # The env:// rendezvous init_process_group would do, made here to keep its store for the
        # waits below (under torchrun it is the agent's store, shared by every node).
        store, rank_, world = next(dist.rendezvous("env://", timeout=timeout))
        store.set_timeout(timeout)
        dist.init_process_group(backend, store=store, rank=rank_, world_size=world, timeout=timeout)
        _state.update(store=store, barriers=0, failed=False, closed=False)
        atexit.register(close)
    return is_distributed()


def close() -> None:
    """Destroy the process group :func:`init_from_env` made (nothing otherwise); registered to run
    at exit. Gloo's threads still alive when the interpreter is torn down abort a finished run
    ("terminate called without an active exception", exit -6). A rank that failed keeps an NCCL
    group: destroying it while another rank is in a collective can hang.

    The rank that serves the rendezvous store (rank 0 when no torchrun agent serves it) first
    waits, at most :data:`EXIT_WAIT_S`, until every rank has come here too: the others may still
    be polling the store in their last :func:`barrier`, which would fail once it is gone."""
    store = _state["store"]
    if store is None or _state.get("closed"):
        return
    _state["closed"] = True
    if is_distributed() and not _state["failed"]:
        _wait_for_every_rank_at_exit(store)
    if dist.is_initialized() and not (_state["failed"] and dist.get_backend() == "nccl"):
        dist.destroy_process_group()


def leave(code: int) -> None:
    """End a finished rank's process with exit status ``code`` without the interpreter's teardown:
    :func:`close` first (every rank reaches it, the group is destroyed), then ``os._exit``. The
    teardown can still abort a rank whose work is done and written (a C++ thread of torch's
    distributed runtime destroyed while joinable: "terminate called without an active
    exception", exit -6, seen now and then under torchrun), which would fail the whole run."""
    import sys

    close()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


EXIT_WAIT_S = 120.0


def _serves_the_store() -> bool:
    return rank() == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true"


def _wait_for_every_rank_at_exit(store: dist.Store, poll_s: float = 0.2) -> None:
    me, world = rank(), world_size()
    try:
        store.set(_key(f"exit/{me}"), "1")
        if not _serves_the_store():
            return
        keys = [_key(f"exit/{r}") for r in range(world)]
        deadline = time.monotonic() + EXIT_WAIT_S
        while not store.check(keys) and not store.check([_key("failed")]):
            if time.monotonic() >= deadline:
                late = [r for r, k in enumerate(keys) if not store.check([k])]
                log.warning(f"rank {me}: exiting without rank(s) {', '.join(map(str, late))}, "
                            f"still running after {EXIT_WAIT_S:.0f} s")
                return
            time.sleep(poll_s)
    except (RuntimeError, OSError):  # a store already gone: nobody left to wait for
        return


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def shard(items: Sequence, r: int | None = None, w: int | None = None) -> list:
    """This rank's deterministic share: items r, r + w, r + 2w, ... (interleaved, so slow and fast
    images spread evenly)."""
    r = rank() if r is None else r
    w = world_size() if w is None else w
    return list(items[r::w])


# ------------------------------------------------------------------------------------- waiting

def _store() -> dist.Store:
    if _state["store"] is not None:
        return _state["store"]
    # A group made by init_process_group directly (tests, a host program): its default store.
    return dist.distributed_c10d._get_default_store()


def _key(name: str) -> str:
    # A restarted torchrun attempt keeps the agent's store: its barriers must not see ours.
    return f"rib_ext/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{name}"


class RankFailedError(RuntimeError):
    """Another rank failed in work this rank was waiting for (the message says which and why)."""


def barrier(what: str = "", log_every_s: Optional[float] = None, poll_s: float = 0.5) -> None:
    """Wait until every rank has reached this barrier, with no deadline; every ``log_every_s``
    seconds (default :data:`WAIT_LOG_SECONDS`) log ``rank R: waiting N s for rank(s) ...: what``.

    Raises :class:`RankFailedError` when a rank reported a failure (:func:`report_failure`)
    instead of waiting for a rank that will never come.
    """
    if not is_distributed():
        return
    store, me, world = _store(), rank(), world_size()
    n = _state["barriers"]
    _state["barriers"] += 1
    keys = [_key(f"barrier/{n}/{r}") for r in range(world)]
    store.set(keys[me], "1")
    every = WAIT_LOG_SECONDS if log_every_s is None else float(log_every_s)
    t0 = time.monotonic()
    next_log = t0 + every
    sleep = 0.001
    while not store.check(keys):
        if store.check([_key("failed")]):
            raise RankFailedError(store.get(_key("failed")).decode())
        if time.monotonic() >= next_log:
            late = [r for r, k in enumerate(keys) if not store.check([k])]
            log.warning(f"rank {me}: waiting {time.monotonic() - t0:.0f} s for rank"
                        f"{'s' if len(late) > 1 else ''} {', '.join(map(str, late))}"
                        f"{': ' + what if what else ''}")
            next_log += every
        time.sleep(sleep)
        sleep = min(poll_s, sleep * 2)


def report_failure(message: str) -> None:
    """Tell the ranks waiting in :func:`barrier` that this rank failed (they raise instead of
    waiting); harmless when not distributed."""
    if is_distributed():
        _state["failed"] = True
        _store().set(_key("failed"), f"rank {rank()} failed: {message}")


@contextlib.contextmanager
def main_first(what: str, log_every_s: Optional[float] = None) -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks: for work that prepares shared files
    (generating the demo dataset, writing cls_labels.npy or mask caches) that the others then
    only read. The others wait in :func:`barrier`, logging ``what``."""
    if rank() != 0:
        barrier(f"rank 0 is {what}", log_every_s)
        yield
        return
    try:
        yield
    except BaseException as err:
        report_failure(f"{what}: {type(err).__name__}: {err}")
        raise
    barrier(what, log_every_s)


# -------------------------------------------------------------------------------- reductions

def all_reduce_sum(array):
    """Sum a numpy integer/float array over ranks (returns it unchanged when not distributed)."""
    if not is_distributed():
        return array
    import numpy as np

    t = torch.from_numpy(np.ascontiguousarray(array))
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = t.to(backend_device)
    dist.all_reduce(t)
    return t.cpu().numpy()


def all_reduce_tensor(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over ranks (a new tensor on ``t``'s device; ``t`` when not distributed).
    Not differentiable: for counts and logged values."""
    if not is_distributed():
        return t
    out = t.detach().clone()
    dist.all_reduce(out)
    return out


class _SumOverRanks(torch.autograd.Function):
    # The gradient of a sum over ranks, for each rank's input, is the sum over ranks of the
    # gradients of its output (every rank's loss depends on every rank's input).
    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over ranks, differentiable (``t`` itself when not distributed): for
    statistics of a batch split over ranks, such as synced batch norm's."""
    return _SumOverRanks.apply(t) if is_distributed() else t
