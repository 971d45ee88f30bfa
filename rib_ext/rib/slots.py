"""The weights of the G images a RIB group adapts, as the rows of one [G, P] tensor.

Under ``rib.cuda_graphs`` every image's weights must live where the captured graph reads them, so
an image takes a slot (a row) when it starts and leaves it when it is finished; the next image
starts from θ0 in the same row. The SGD step of all G slots is then one kernel
(:func:`rib_ext.ops.sgd_step_`) that reads the learning rates, the slots that step and the slots
on their first step from the device: the update never waits for the host, and what the host sends
is a few numbers per step, copied behind the work already queued.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from rib_ext import ops


def _layout(base: Sequence[torch.Tensor]) -> list[int]:
    """Each parameter's offset in a row (its values in memory order, so that a view with the
    parameter's strides, channels_last included, covers exactly its segment)."""
    offsets, at = [], 0
    for p in base:
        if not (p.is_contiguous() or (p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last))):
            raise ValueError(f"a weight slot needs contiguous or channels_last parameters, got "
                             f"shape {tuple(p.shape)} with strides {p.stride()}")
        offsets.append(at)
        at += p.numel()
    return offsets


def _second_rate_start(base: Sequence[torch.Tensor], lr_mults: Sequence[float]) -> int:
    """Where the second learning rate starts in a row: the parameters take at most two
    multipliers, the second (the classifier's) on the last ones."""
    change = [i for i in range(1, len(lr_mults)) if lr_mults[i] != lr_mults[i - 1]]
    if len(change) > 1:
        raise ValueError(f"weight slots take two learning rates, the second on the last "
                         f"parameters; got multipliers {list(lr_mults)}")
    first = change[0] if change else len(base)
    return sum(p.numel() for p in base[:first])


class WeightSlots:
    """G rows of weights, momentum buffers and gradients, with each row's parameters as leaf
    views that autograd differentiates (``leaves[slot]``, in ``base``'s order and layouts).

    Args:
        base: θ0's trainable parameters (each image starts from them).
        lr_mults: the learning-rate multiplier of each parameter (at most two values, the second
            on the last parameters).
        group_size: G.
    """

    def __init__(self, base: Sequence[torch.Tensor], lr_mults: Sequence[float], group_size: int):
        self.group_size = group_size
        self.offsets = _layout(base)
        self.split = _second_rate_start(base, lr_mults)
        self.mults = (lr_mults[0], lr_mults[-1]) if lr_mults else (1.0, 1.0)
        width = sum(p.numel() for p in base)
        ref = base[0]
        self.params = ref.new_empty((group_size, width))
        self.bufs = ref.new_zeros((group_size, width))
        self.grads = ref.new_zeros((group_size, width))
        self.leaves = [[v.detach().requires_grad_() for v in self.views(self.params, s, base)]
                       for s in range(group_size)]
        self.grad_views = [self.views(self.grads, s, base) for s in range(group_size)]
        self.theta0 = ref.new_empty(width)
        torch._foreach_copy_(self.views(self.theta0[None], 0, base), list(base))
        self.free = list(range(group_size))
        self._no = torch.zeros((), dtype=torch.bool, device=ref.device)

    def views(self, rows: torch.Tensor, slot: int, base) -> list[torch.Tensor]:
        """Row ``slot`` of ``rows`` as tensors shaped and laid out as ``base``'s parameters."""
        start = rows.storage_offset() + slot * rows.shape[1]
        return [rows.as_strided(p.shape, p.stride(), start + off) for p, off in zip(base, self.offsets)]

    def take(self) -> int:
        """A free slot, holding θ0 (its buffer is overwritten by the first step)."""
        if not self.free:
            raise RuntimeError(f"all {self.group_size} weight slots are taken")
        slot = self.free.pop(0)
        self.params[slot].copy_(self.theta0)
        return slot

    def give_back(self, slot: int) -> None:
        self.free.append(slot)
        self.free.sort()

    def _to_device(self, values, dtype) -> torch.Tensor:
        t = torch.tensor(values, dtype=dtype)
        if self.params.is_cuda:
            return t.pin_memory().to(self.params.device, non_blocking=True)
        return t.to(self.params.device)

    @torch.no_grad()
    def step(self, slots: Sequence[int], grads: Sequence[torch.Tensor],
             go: Sequence[Optional[torch.Tensor]], lr: float, factors: Sequence[float],
             first: Sequence[bool], weight_decay: float, momentum: float) -> None:
        """One SGD step of the images in ``slots``: ``grads`` their gradients (per image, its
        parameters' in order, one list), ``go`` their device masks (None: they all step), ``lr``
        times each multiplier times ``factors`` their learning rates (the engine's product, in
        its order), ``first`` whether it is their first step. The other slots are left as they
        are."""
        if len(grads) != len(self.offsets) * len(slots):
            raise ValueError(f"{len(grads)} gradients for {len(slots)} slots of {len(self.offsets)}")
        torch._foreach_copy_([v for s in slots for v in self.grad_views[s]], list(grads))
        lrs = [[0.0, 0.0] for _ in range(self.group_size)]
        fresh = [False] * self.group_size
        for s, factor, f in zip(slots, factors, first):
            lrs[s] = [lr * m * factor for m in self.mults]
            fresh[s] = f
        if go and go[0] is not None:
            parts = [self._no] * self.group_size
            for s, g in zip(slots, go):
                parts[s] = g
            go_t = torch.stack(parts)
        else:
            live = [False] * self.group_size
            for s in slots:
                live[s] = True
            go_t = self._to_device(live, torch.bool)
        ops.sgd_step_(self.params, self.bufs, self.grads, self._to_device(lrs, self.params.dtype),
                      go_t, self._to_device(fresh, torch.bool), self.split, weight_decay, momentum)
