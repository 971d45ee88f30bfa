"""The loss of one RIB step for one target image: its loss-scale views plus the other images.

Each row group (one target scale as [image, flip], or the B other images) has its own CAM size, so
the loss is a sum over groups. ``rib`` with matching GNDRP and clip behaviours runs the fused
pool + loss op; every other combination composes the separate ops. A group's images step together:
:func:`group_grads` takes the gradients of their summed losses.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from rib_ext import ops
from rib_ext.config import RIBConfig
from rib_ext.precision import cudnn_benchmark, tf32_flags

# The paper's ablation of the final mapping: logits squashed to [0, 1] before a BCE loss.
SQUASH = {
    "bce_sigmoid": torch.sigmoid,
    "bce_tanh": lambda y: (torch.tanh(y) + 1) / 2,
    "bce_softsign": lambda y: (F.softsign(y) + 1) / 2,
}


def pooling_tau(cfg: RIBConfig) -> float:
    """The GNDRP threshold; GAP pools with no class normalised (:func:`_present`), where the
    threshold is never read: any valid one (1.0) gives the plain mean."""
    if cfg.pooling == "gap":
        return 1.0
    if cfg.pooling != "gndrp":
        raise ValueError(f"pooling must be 'gndrp' or 'gap', got {cfg.pooling!r}")
    return cfg.tau


def _present(labels: torch.Tensor, cfg: RIBConfig) -> torch.Tensor:
    if cfg.pooling == "gap":
        # The authors' GAP is a plain mean: no class is normalised (an infinite tau alone would
        # still drop the NaN locations of a plane whose max is 0).
        return torch.zeros_like(labels, dtype=torch.bool)
    present = labels > 0
    if cfg.coco_first20_bug:
        # The authors' COCO code normalised only the first 20 classes; the rest became plain GAP.
        present = present.clone()
        present[:, 20:] = False
    return present


def group_loss(cam: torch.Tensor, labels: torch.Tensor, cfg: RIBConfig):
    """(loss, logits [N, K] detached) of one row group; ``cam`` [N, K, h, w] raw, differentiable."""
    tau = pooling_tau(cfg)
    loss_behaviour = "paper" if cfg.clip_loss else "authors"
    if (cfg.loss == "rib" and loss_behaviour == cfg.gndrp_behaviour and not cfg.coco_first20_bug
            and cfg.pooling == "gndrp"):
        return ops.gndrp_margin_loss(cam, labels, tau, cfg.margin, cfg.gndrp_behaviour)
    logits = ops.gndrp_pool(cam, _present(labels, cfg), tau, cfg.gndrp_behaviour)
    if cfg.loss == "rib":
        loss = ops.margin_loss(logits, labels, cfg.margin, loss_behaviour, "sum")
    elif cfg.loss in SQUASH:
        p = SQUASH[cfg.loss](logits).clamp(1e-7, 1 - 1e-7)
        loss = F.binary_cross_entropy(p, labels.to(p.dtype), reduction="sum")
    else:
        raise ValueError(f"unknown RIB loss {cfg.loss!r}")
    return loss, logits.detach()


def step_loss(target_cams, target_label: torch.Tensor, other_cam: torch.Tensor,
              other_labels: torch.Tensor, cfg: RIBConfig):
    """(total loss, stop statistic) of one image's step.

    ``target_cams``: [2, K, h, w] per loss scale (image and flip); the stop statistic is
    |sum of the target rows' labelled logits|, the authors' margin stop, as a 0-d tensor on the
    device (the engine reads a group's statistics with one synchronisation).
    """
    total = 0
    stat = 0
    t2 = target_label.expand(2, -1)
    for cam in target_cams:
        loss, logits = group_loss(cam, t2, cfg)
        total = total + loss
        stat = stat + (t2 * logits).sum()
    if other_cam is not None and other_cam.shape[0] > 0:
        loss, _ = group_loss(other_cam, other_labels, cfg)
        total = total + loss
    return total, torch.as_tensor(stat, dtype=torch.float32, device=target_label.device).abs()


def group_grads(total: torch.Tensor, params: list, target_cams: list, other_cams,
                precision: str, time_others_apart: bool):
    """d ``total`` (a group's summed losses) / d ``params``, under the precision's TF32 flags as
    the forward (float32: TF32 off for cuDNN's convolution gradients too, which PyTorch otherwise
    allows). One backward; or with ``time_others_apart`` two, so that cuDNN times the other
    images' backward (fixed shapes) and not the target's (a new size per image): first to the
    CAMs, then from the target's CAMs and the other images' CAMs apart. ``other_cams`` None: the
    graph replays the other images' backward, and one backward is left."""
    with tf32_flags(precision):
        if not time_others_apart or other_cams is None:
            return torch.autograd.grad(total, params)
        t_cams = [c for cams in target_cams for c in cams]
        g = torch.autograd.grad(total, t_cams + list(other_cams))
        g_t = torch.autograd.grad(t_cams, params, g[:len(t_cams)])
        with cudnn_benchmark(True):
            g_o = torch.autograd.grad(list(other_cams), params, g[len(t_cams):])
        return torch._foreach_add(list(g_t), list(g_o))
