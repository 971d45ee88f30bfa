"""Test processes as torch.distributed ranks on this machine (gloo, CPU), as torchrun would start them."""
from __future__ import annotations

import contextlib
import os
import socket

import torch
import torch.distributed as dist


def free_port() -> int:
    """A free TCP port on the loopback for the ranks' rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> None:
    """torchrun's variables for rank ``rank`` of ``world`` on one machine, and its one intra-op
    thread (torchrun's OMP_NUM_THREADS=1)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)


@contextlib.contextmanager
def gloo_rank(rank: int, world: int, port: int):
    """This process as rank ``rank`` of a gloo group of ``world`` for the block."""
    rank_env(rank, world, port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()
