"""Pure-PyTorch references of every operator: the tests' oracle and the fallback without _C.

Written for clarity, vectorised, in the input's accumulation dtype (float32 for half inputs).
Semantics are documented in csrc/gndrp.h, csrc/margin_loss.h and csrc/cam_maps.h.
"""
from __future__ import annotations

import torch


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gndrp_kept_mask(cam: torch.Tensor, present: torch.Tensor, tau: float, paper: bool):
    """(kept [N,K,H,W] bool, plane_max [N,K]) of GNDRP; the max is detached.

    Reference mode divides by the max without a guard (a max <= 0 gives ratios >= 1, -inf or NaN,
    as in the authors' code); paper mode keeps every location of a plane whose max is <= 0.
    """
    x = cam.detach().to(_acc_dtype(cam.dtype))
    plane_max = x.amax(dim=(2, 3))
    m = plane_max[..., None, None]
    ratio = x / m
    below = ratio <= tau if paper else ratio < tau
    normalised = present.bool()[..., None, None]
    if paper:
        normalised = normalised & (m > 0)
    return torch.where(normalised, below, torch.ones_like(below)), plane_max


def gndrp_pool(cam: torch.Tensor, present: torch.Tensor, tau: float = 0.4,
               paper: bool = False) -> torch.Tensor:
    """GNDRP logits [N, K]: masked sum over H*W (authors) or over the kept count (paper)."""
    kept, _ = gndrp_kept_mask(cam, present, tau, paper)
    x = cam.to(_acc_dtype(cam.dtype))
    keptf = kept.to(x.dtype)
    total = (x * keptf).sum(dim=(2, 3))
    if paper:
        count = keptf.sum(dim=(2, 3))
        pooled = torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
    else:
        pooled = total / (cam.shape[2] * cam.shape[3])
    return pooled.to(cam.dtype)


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, margin: float = 600.0,
                paper: bool = False) -> torch.Tensor:
    """Elementwise loss: -t*min(m, y) with zero gradient where y >= m (paper), -t*y (authors)."""
    t = labels.to(logits.dtype)
    if not paper:
        return -t * logits
    clipped = torch.where(logits < margin, logits, torch.full_like(logits, margin))
    return -t * clipped


def gndrp_margin_loss(cam: torch.Tensor, labels: torch.Tensor, tau: float = 0.4,
                      margin: float = 600.0, paper: bool = False):
    """(loss = sum of margin_loss over rows and classes, logits [N, K]) with presence = labels > 0."""
    logits = gndrp_pool(cam, labels > 0, tau, paper)
    acc = _acc_dtype(cam.dtype)
    loss = margin_loss(logits.to(acc), labels.to(acc), margin, paper).sum()
    return loss, logits


def cam_flip_merge(cam: torch.Tensor, cam_flip: torch.Tensor) -> torch.Tensor:
    """relu(cam) + relu(cam_flip) flipped back along W, in the accumulation dtype."""
    acc = _acc_dtype(cam.dtype)
    return torch.relu(cam.to(acc)) + torch.relu(cam_flip.to(acc)).flip(-1)


def cam_max_normalize(maps: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """maps / (per-plane max + eps), IRN's normalisation (max over the last two dims)."""
    x = maps.to(_acc_dtype(maps.dtype))
    m = x.amax(dim=(-2, -1), keepdim=True)
    return (x / (m + eps)).to(maps.dtype)


def gndrp_pool_loop(cam: torch.Tensor, present: torch.Tensor, tau: float = 0.4,
                    visited: int | None = None) -> torch.Tensor:
    """A literal transcription of the authors' GNDRP (their ``gndp2d``), the authors' semantics.

    Per row and class: a present class is divided by its (detached) max with no guard, absent
    classes get the marker -1; the kept locations are those whose marker is below ``tau`` and the
    pooled value is the mean over all H*W locations of the kept CAM values. ``visited``: how many
    classes the loop visits (the authors' code: 20, so on COCO classes >= 20 keep the marker 0,
    which is below tau > 0: every location pooled, the ``coco_first20_bug``); None visits all.
    The tests' oracle, degenerate planes included (max < 0, max == 0, all zero); slow, unused by
    the package.
    """
    norm = torch.zeros_like(cam)
    for n in range(cam.shape[0]):
        for k in range(cam.shape[1] if visited is None else min(visited, cam.shape[1])):
            if present[n, k]:
                norm[n, k] = (cam[n, k] / cam[n, k].max()).detach()
            else:
                norm[n, k] = -1
    return torch.mean((cam * (norm < tau)).view(cam.shape[0], cam.shape[1], -1), -1)
