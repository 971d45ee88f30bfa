"""One SGD step of many weight slots in one pass, everything it reads on the device.

RIB adapts a copy of the classifier's head per image, G images at a time, each with its own
learning rate (the poly decay runs per image) and its own stop. ``sgd_step_`` updates all G copies,
kept as the rows of one [G, P] tensor, in one kernel: the learning rates, the slots that step and
the slots on their first step are device tensors, so the update neither waits for the host nor
changes between steps, and a CUDA graph can hold it. Semantics: csrc/sgd_step.h.
"""
from __future__ import annotations

import torch

from . import oracle
from ._extension import HAS_C, use_compiled


def sgd_step_(params: torch.Tensor, bufs: torch.Tensor, grads: torch.Tensor, lrs: torch.Tensor,
              go: torch.Tensor, first: torch.Tensor, split: int, weight_decay: float,
              momentum: float) -> None:
    """torch.optim.SGD's step (dampening 0, no Nesterov) of G weight slots, in place.

    Args:
        params, bufs: ``[G, P]`` float32 or float64, contiguous: slot ``s``'s weights and momentum
            buffer are row ``s`` (updated in place).
        grads: ``[G, P]``, params' dtype: the gradients (a slot that does not step is not read).
        lrs: ``[G, 2]``, params' dtype: each slot's learning rate of elements ``[0, split)`` and of
            ``[split, P)`` (RIB: the backbone's and the classifier's).
        go: bool ``[G]``: the slots that step (the others keep their weights and buffer).
        first: bool ``[G]``: the slots on their first step (the buffer starts as the step).
        split: where the second learning rate starts.
        weight_decay, momentum: as torch.optim.SGD's.

    The compiled kernels compute what :func:`rib_ext.sgd.sgd_update_foreach_` computes with masks
    (the RIB engine's eager update), bit for bit; without the extension the plain-PyTorch
    reference runs, equal to a rounding.
    Raises:
        RuntimeError: a wrong shape, dtype, device or split (the message names it).
    """
    if use_compiled("sgd_step_", params):
        torch.ops.rib_ext.sgd_step_.default(params, bufs, grads, lrs, go, first, int(split),
                                            float(weight_decay), float(momentum))
    else:
        oracle.sgd_step_(params, bufs, grads, lrs, go, first, int(split), weight_decay, momentum)


if HAS_C:

    @torch.library.register_fake("rib_ext::sgd_step_")
    def _sgd_step_fake(params, bufs, grads, lrs, go, first, split, weight_decay, momentum):
        return None
