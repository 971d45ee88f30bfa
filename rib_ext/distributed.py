"""torch.distributed helpers: a run under ``torchrun`` shards the image list by rank, writes its
results to shared storage, and reduces confusion matrices across ranks."""
from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.distributed as dist


def init_from_env() -> bool:
    """Initialise the default process group when launched by torchrun (WORLD_SIZE > 1)."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return is_distributed()


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


def barrier() -> None:
    if is_distributed():
        dist.barrier()


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
