"""Plain SGD with momentum as torch.optim.SGD computes it (dampening 0, no Nesterov), and the poly
learning-rate decay of IRN and RIB.

The RIB engine steps many functional weight copies with these functions instead of an optimizer
object (one optimizer per image would cost a launch per parameter per image);
:class:`rib_ext.optim.PolyOptimizer` is torch.optim.SGD itself and takes the poly factor and the
momentum rule from here, so the trainers and the engine decay and carry momentum alike. They sit
with the foundations so that both ``rib_ext.optim`` and ``rib_ext.rib`` may import them.
"""
from __future__ import annotations

import torch


def poly_factor(step: int, total: int, power: float) -> float:
    """The learning rate's factor after ``step`` of ``total`` steps: ``(1 - step / total) ** power``,
    0 from ``total`` on."""
    return max(0.0, 1.0 - step / total) ** power


def sgd_momentum(weight_decay: float, momentum: float, authors_momentum: bool) -> float:
    """The momentum the authors' optimizer ends up with: their ``PolyOptimizer`` passes the weight
    decay where torch.optim.SGD takes the momentum, so with ``authors_momentum`` the momentum is
    the weight decay value (1e-4: practically none); without, ``momentum``."""
    return weight_decay if authors_momentum else momentum


def sgd_update_(params, grads, bufs, lrs, weight_decay: float, momentum: float) -> None:
    """torch.optim.SGD's update, in place, op for op, one parameter at a time (each stays in cache
    through its update). ``bufs[i]`` None: the momentum buffer, created by this first step."""
    for i, (p, g) in enumerate(zip(params, grads)):
        d = g.add(p, alpha=weight_decay) if weight_decay else g
        if momentum:
            if bufs[i] is None:
                bufs[i] = torch.clone(d).detach()
            else:
                bufs[i].mul_(momentum).add_(d)
            d = bufs[i]
        p.add_(d, alpha=-lrs[i])


def _decayed(grads, params, weight_decay: float) -> list:
    """The gradients with weight decay added (a new list; the gradients themselves untouched)."""
    return torch._foreach_add(list(grads), params, alpha=weight_decay) if weight_decay else list(grads)


def _start_buffers(d, bufs) -> list[int]:
    """Momentum buffers a first step creates (a copy of d, as torch.optim.SGD does); returns the
    indices of the buffers that existed before."""
    old = [i for i, b in enumerate(bufs) if b is not None]
    for i, b in enumerate(bufs):
        if b is None:
            bufs[i] = torch.clone(d[i]).detach()
    return old


def _step_by_lr_(params, d, lrs) -> None:
    """params[i] -= lrs[i] * d[i]: one foreach call per learning rate (alpha is one scalar per call)."""
    by_lr: dict[float, list[int]] = {}
    for i, lr in enumerate(lrs):
        by_lr.setdefault(float(lr), []).append(i)
    for lr, idx in by_lr.items():
        torch._foreach_add_([params[i] for i in idx], [d[i] for i in idx], alpha=-lr)


def sgd_update_foreach_(params, grads, bufs, lrs, weight_decay: float, momentum: float,
                        masks=None) -> None:
    """:func:`sgd_update_` over any number of parameters (a whole group's) in a few
    ``torch._foreach_*`` calls: the same operations per element, so the same result bit for bit.

    ``masks``: per parameter a 0-d bool tensor on the device, or None (all step). Where False that
    parameter and its momentum buffer are left as they are, a non-finite gradient included; where
    True the same operations as without masks. A buffer this step creates belongs to a parameter
    on its first step, which always steps (no stop precedes a first update)."""
    if not params:
        return
    d = _decayed(grads, params, weight_decay)
    if momentum:
        old = _start_buffers(d, bufs)
        if old and masks is None:
            kept = [bufs[i] for i in old]
            torch._foreach_mul_(kept, momentum)
            torch._foreach_add_(kept, [d[i] for i in old])
        elif old:
            # Computed aside and copied where the mask holds, so a masked-out buffer keeps its bits.
            new = torch._foreach_mul([bufs[i] for i in old], momentum)
            torch._foreach_add_(new, [d[i] for i in old])
            for i, n in zip(old, new):
                bufs[i].copy_(torch.where(masks[i], n, bufs[i]))
        d = list(bufs)
    if masks is not None:
        d = [torch.where(m, x, 0) for m, x in zip(masks, d)]
    _step_by_lr_(params, d, lrs)
