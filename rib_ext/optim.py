"""The optimizer of IRN / RIB's released code: SGD with polynomial lr decay, and its momentum quirk.

The authors' ``PolyOptimizer(torch.optim.SGD)`` calls ``super().__init__(params, lr, weight_decay)``:
SGD's third positional argument is *momentum*, so the weight decay value (1e-4) becomes the momentum
and the real weight decay comes from each parameter group. The effect is SGD with momentum 1e-4,
i.e. practically none. ``authors_momentum=True`` (the default, it produced the published figures)
reproduces that; ``False`` gives the momentum that was presumably intended.
"""
from __future__ import annotations

from typing import Iterable

import torch

from rib_ext.sgd import poly_factor, sgd_momentum


class PolyOptimizer(torch.optim.SGD):
    """SGD whose group lrs follow ``initial_lr * (1 - step / max_step) ** power`` (stepped per batch).

    Args:
        param_groups: dicts with ``params``, ``lr`` and ``weight_decay`` (as the authors pass them).
        lr: default lr of groups that do not set one.
        weight_decay: the authors' third argument; with ``authors_momentum`` it becomes the momentum.
        max_step: number of steps over which the lr decays to 0.
        momentum: the momentum used when ``authors_momentum`` is False.
    """

    def __init__(self, param_groups: Iterable[dict], lr: float, weight_decay: float, max_step: int,
                 power: float = 0.9, momentum: float = 0.9, authors_momentum: bool = True):
        # torch.optim.SGD's own update (the RIB engine computes the same with rib_ext.sgd); the
        # momentum follows the authors' quirk, as the engine's does.
        super().__init__(param_groups, lr=lr,
                         momentum=sgd_momentum(weight_decay, momentum, authors_momentum))
        self.global_step = 0
        self.max_step = max(1, int(max_step))
        self.power = power
        self.initial_lrs = [group["lr"] for group in self.param_groups]

    def lr_factor(self) -> float:
        return poly_factor(self.global_step, self.max_step, self.power)

    def step(self, closure=None):
        if self.global_step < self.max_step:
            factor = self.lr_factor()
            for group, lr in zip(self.param_groups, self.initial_lrs):
                group["lr"] = lr * factor
        loss = super().step(closure)
        self.global_step += 1
        return loss

    def state_dict(self):
        state = super().state_dict()
        state["poly"] = {"global_step": self.global_step, "max_step": self.max_step,
                         "initial_lrs": self.initial_lrs}
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        poly = state_dict.pop("poly", None)
        super().load_state_dict(state_dict)
        if poly is not None:
            self.global_step = poly["global_step"]
            self.max_step = poly["max_step"]
            self.initial_lrs = poly["initial_lrs"]
