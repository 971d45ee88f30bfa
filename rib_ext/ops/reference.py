"""Pure-PyTorch references of every operator: the tests' oracle and the fallback without _C.

Written for clarity, vectorised, in the input's accumulation dtype (float32 for half inputs).
Semantics are documented in csrc/gndrp.h, csrc/margin_loss.h and csrc/cam_maps.h.
"""
from __future__ import annotations

import torch


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gndrp_kept_mask(cam: torch.Tensor, present: torch.Tensor, tau: float, paper: bool):
    """(kept [N,K,H,W] bool, plane_max [N,K]) of GNDRP; the max is detached."""
    x = cam.detach().to(_acc_dtype(cam.dtype))
    plane_max = x.amax(dim=(2, 3))
    m = plane_max[..., None, None]
    positive = m > 0
    ratio = x / torch.where(positive, m, torch.ones_like(m))
    below = ratio <= tau if paper else ratio < tau
    normalised = present.bool()[..., None, None] & positive
    return torch.where(normalised, below, torch.ones_like(below)), plane_max


def gndrp_pool(cam: torch.Tensor, present: torch.Tensor, tau: float = 0.4,
               paper: bool = False) -> torch.Tensor:
    """GNDRP logits [N, K]: masked sum over H*W (reference) or over the kept count (paper)."""
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
    """Elementwise loss: -t*min(m, y) with zero gradient where y >= m (paper), -t*y (reference)."""
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


def gndrp_pool_loop(cam: torch.Tensor, present: torch.Tensor, tau: float = 0.4) -> torch.Tensor:
    """A transcription of the authors' per-row, per-class Python loop (reference semantics).

    Kept for the benchmarks only: it is what the released code does, and what we replace.
    """
    n_rows, n_cls, h, w = cam.shape
    rows = []
    for n in range(n_rows):
        logits = []
        for k in range(n_cls):
            plane = cam[n, k]
            if present[n, k]:
                m = plane.detach().max()
                if m > 0:
                    mask = (plane.detach() / m < tau).to(plane.dtype)
                else:
                    mask = torch.ones_like(plane)
                logits.append((plane * mask).sum() / (h * w))
            else:
                logits.append(plane.sum() / (h * w))
        rows.append(torch.stack(logits))
    return torch.stack(rows)
