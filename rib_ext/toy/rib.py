"""RIB on the toy (paper Fig. 2b): per image, K plain SGD steps on L_RIB from the trained weights.

Every evaluated image gets its own copy of the weights; torch.func's vmap steps all copies at
once, which is what makes 100 images x K steps fit in seconds on a CPU. Each step's batch is the
image plus B-1 other toy images drawn afresh (the paper's stabiliser against over-fitting to x).
"""
from __future__ import annotations

import torch
from torch.func import functional_call, grad, vmap

from rib_ext.toy.config import ToyConfig
from rib_ext.toy.data import ToyData
from rib_ext.toy.train import one_hot


def rib_loss(logits: torch.Tensor, targets: torch.Tensor, margin: float) -> torch.Tensor:
    """L_RIB = -sum_c t_c min(m, y_c), summed over the batch: raw logits, no sigmoid."""
    return -(targets * logits.clamp(max=margin)).sum()


def draw_others(index: torch.Tensor, pool_size: int, count: int, gen: torch.Generator) -> torch.Tensor:
    """[len(index), count] distinct pool indices per row, never the row's own image."""
    keys = torch.rand(len(index), pool_size, generator=gen)
    keys[torch.arange(len(index)), index] = float("inf")
    return keys.topk(count, dim=1, largest=False).indices


def rib_g6_maps(model, data: ToyData, index: torch.Tensor, cfg: ToyConfig, seed: int) -> dict:
    """Raw G_6 maps [K + 1, n, H, W] of the images ``index`` (iteration 0 is theta_0) and their
    own-class logits [K + 1, n]; ``model`` itself is left unchanged."""
    params = {k: v.detach().unsqueeze(0).repeat(len(index), *([1] * v.dim()))
              for k, v in model.named_parameters()}
    targets_all = one_hot(data.labels, len(cfg.classes))
    x, t = data.images[index], targets_all[index]

    def batch_loss(p, xb, tb):
        return rib_loss(functional_call(model, p, (xb,)), tb, cfg.rib_margin)

    def own_logit(xi, p, ti):
        return (functional_call(model, p, (xi[None],))[0] * ti).sum()

    step_grads = vmap(grad(batch_loss))
    g6 = vmap(grad(own_logit), in_dims=(0, 0, 0))
    logit = vmap(own_logit, in_dims=(0, 0, 0))
    gen = torch.Generator().manual_seed(seed)
    maps, logits = [g6(x, params, t)[:, 0]], [logit(x, params, t).detach()]
    for _ in range(cfg.rib_steps):
        others = draw_others(index, len(data), cfg.rib_batch - 1, gen)
        xb = torch.cat([x[:, None], data.images[others]], dim=1)
        tb = torch.cat([t[:, None], targets_all[others]], dim=1)
        grads = step_grads(params, xb, tb)
        params = {k: p - cfg.rib_lr * grads[k] for k, p in params.items()}
        maps.append(g6(x, params, t)[:, 0])
        logits.append(logit(x, params, t).detach())
    return {"g6": torch.stack(maps).detach(), "logit": torch.stack(logits)}
