"""Pure-PyTorch references of every operator: the tests' oracle and the fallback without _C.

Written for clarity, vectorised, in the input's accumulation dtype (float32 for half inputs).
Semantics are documented in csrc/gndrp.h, csrc/margin_loss.h, csrc/cam_maps.h, csrc/resize.h and
csrc/sgd_step.h.
"""
from __future__ import annotations

import math

import torch


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _is_paper(behaviour: str) -> bool:
    if behaviour not in ("authors", "paper"):
        raise ValueError(f"behaviour must be 'authors' or 'paper', got {behaviour!r}")
    return behaviour == "paper"


def gndrp_kept_mask(cam: torch.Tensor, present: torch.Tensor, tau: float,
                    behaviour: str = "authors"):
    """(kept [N,K,H,W] bool, plane_max [N,K]) of GNDRP; the max is detached.

    The authors' behaviour divides by the max without a guard (a max <= 0 gives ratios >= 1, -inf
    or NaN, as in the authors' code); the paper's keeps every location of a plane whose max is <= 0.
    """
    paper = _is_paper(behaviour)
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
               behaviour: str = "authors") -> torch.Tensor:
    """GNDRP logits [N, K]: masked sum over H*W (authors) or over the kept count (paper)."""
    kept, _ = gndrp_kept_mask(cam, present, tau, behaviour)
    paper = _is_paper(behaviour)
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
                behaviour: str = "authors") -> torch.Tensor:
    """Elementwise loss: -t*min(m, y) with zero gradient where y >= m (paper), -t*y (authors)."""
    t = labels.to(logits.dtype)
    if not _is_paper(behaviour):
        return -t * logits
    clipped = torch.where(logits < margin, logits, torch.full_like(logits, margin))
    return -t * clipped


def gndrp_margin_loss(cam: torch.Tensor, labels: torch.Tensor, tau: float = 0.4,
                      margin: float = 600.0, behaviour: str = "authors"):
    """(loss = sum of margin_loss over rows and classes, logits [N, K]) with presence = labels > 0."""
    logits = gndrp_pool(cam, labels > 0, tau, behaviour)
    acc = _acc_dtype(cam.dtype)
    loss = margin_loss(logits.to(acc), labels.to(acc), margin, behaviour).sum()
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


# -- Pillow's bicubic resize (csrc/resize.h) ---------------------------------------------------
_PRECISION_BITS = 22


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' kernel (a = -0.5) in Pillow's order of operations, float64, one rounding per op."""
    x = x.abs()
    near = ((x * 1.5 - 2.5) * x) * x + 1.0
    far = ((((x - 5.0) * x) + 8.0) * x - 4.0) * -0.5
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def resize_windows(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's windows along one axis: (first input index [out] int64, fixed-point weights
    [out, ksize] int64, zero past each window), computed on the CPU in float64 as Pillow does."""
    scale = float(torch.tensor(float(in_size), dtype=torch.float32)) / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    inv = 1.0 / filterscale
    first = (center - support + 0.5).trunc().clamp(min=0)
    length = (center + support + 0.5).trunc().clamp(max=in_size) - first
    taps = torch.arange(ksize, dtype=torch.float64)
    inside = taps[None] < length[:, None]
    w = torch.where(inside, _bicubic((((first[:, None] + taps[None]) - center[:, None]) + 0.5) * inv),
                    torch.zeros(()))
    total = torch.zeros(out_size, dtype=torch.float64)
    for j in range(ksize):  # Pillow's left-to-right sum: a pairwise sum would round differently
        total = total + w[:, j]
    w = torch.where(total[:, None] != 0, w / total[:, None], w)
    fixed = w * float(1 << _PRECISION_BITS)
    fixed = torch.where(w < 0, fixed - 0.5, fixed + 0.5).trunc()
    return first.long(), torch.where(inside, fixed, torch.zeros(())).long()


def _resample_axis(x: torch.Tensor, dim: int, out_size: int) -> torch.Tensor:
    first, k = resize_windows(x.shape[dim], out_size)
    first, k = first.to(x.device), k.to(x.device)
    acc = torch.full((), 1 << (_PRECISION_BITS - 1), dtype=torch.int64, device=x.device)
    shape = [1, 1, 1]
    shape[dim] = out_size
    for j in range(k.shape[1]):  # taps past a window weigh 0: any valid index will do
        idx = (first + j).clamp(max=x.shape[dim] - 1)
        acc = acc + x.index_select(dim, idx).long() * k[:, j].view(shape)
    return (acc >> _PRECISION_BITS).clamp(0, 255).to(torch.uint8)


def vertical_first(in_size, out_size, adaptive_order: bool = True) -> bool:
    """Whether Pillow runs the vertical pass first (sizes (h, w)): from Pillow 13 on, when the
    height shrinks by more than twice as many pixels as the width; before, never."""
    (in_h, in_w), (out_h, out_w) = in_size, out_size
    return bool(adaptive_order) and out_h <= in_h and in_h - out_h > 2 * (in_w - out_w)


def resize_bicubic_u8(image: torch.Tensor, size, adaptive_order: bool = True) -> torch.Tensor:
    """Pillow's ``Image.resize((w, h), BICUBIC)`` of a uint8 [H, W, C] image as [h, w, C] uint8,
    in plain PyTorch (int64 sums): two passes in Pillow's order (:func:`vertical_first`), a pass
    whose side does not change skipped."""
    from ._checks import check_resize_bicubic_u8

    height, width = int(size[0]), int(size[1])
    check_resize_bicubic_u8(image, height, width)
    passes = [(1, width), (0, height)]
    if vertical_first(image.shape[:2], (height, width), adaptive_order):
        passes.reverse()
    out = image
    for dim, side in passes:
        if side != image.shape[dim]:
            out = _resample_axis(out, dim, side)
    return out.contiguous() if out is not image else image.clone(memory_format=torch.contiguous_format)


def sgd_step_(params: torch.Tensor, bufs: torch.Tensor, grads: torch.Tensor, lrs: torch.Tensor,
              go: torch.Tensor, first: torch.Tensor, split: int, weight_decay: float,
              momentum: float) -> None:
    """One SGD step of the [G, P] weight slots in place, as torch.optim.SGD's foreach update
    computes it (rib_ext.sgd.sgd_update_foreach_ with masks); csrc/sgd_step.h. Plain tensor ops: the
    learning rate times the step is rounded before it is subtracted where the kernels fuse the
    two, so this reference agrees with them to a rounding, not bit for bit."""
    col = torch.arange(params.shape[1], device=params.device)
    lr = torch.where(col < split, lrs[:, :1], lrs[:, 1:])
    step = go[:, None]
    d = grads.add(params, alpha=weight_decay) if weight_decay else grads
    if momentum:
        d = torch.where(first[:, None], d, bufs * momentum + d)
        bufs.copy_(torch.where(step, d, bufs))
    params.copy_(torch.where(step, params - lr * d, params))

