"""Pair labels from confident labels, and IRN's affinity and displacement losses.

Pair labels (per pair of the path index, on the stride-4 label grid, 255 = uncertain):
both ends certain and equal -> positive, split into background-positive (both 0) and
foreground-positive (both the same class); both certain and different -> negative; any end
uncertain -> ignored (in none of the three sets).
"""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional

import numpy as np
import torch

from rib_ext.irn.path_index import PathIndex

IGNORE = 255
EPS = 1e-5  # IRN's: inside the logs and the denominators


class PairLabels(NamedTuple):
    """Float masks [B, D, N] (1 = the pair is in the set)."""

    bg_pos: torch.Tensor
    fg_pos: torch.Tensor
    neg: torch.Tensor


def _nearest_rows(n_in: int, n_out: int) -> np.ndarray:
    # Pillow's NEAREST resize samples source pixel floor((i + 0.5) * n_in / n_out) for output i.
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def downsample_labels(labels, stride: int = 4):
    """[..., H, W] -> [..., ceil(H/s), ceil(W/s)] sampled as IRN's ``pil_rescale(label, 0.25, 0)``
    (Pillow's nearest resize): the centre pixel of each cell, 4i + 2 at stride 4, not its top-left.
    Works on numpy arrays and tensors."""
    h, w = labels.shape[-2:]
    rows = _nearest_rows(h, -(-h // stride))
    cols = _nearest_rows(w, -(-w // stride))
    if isinstance(labels, torch.Tensor):
        rows, cols = torch.from_numpy(rows).to(labels.device), torch.from_numpy(cols).to(labels.device)
    return labels[..., rows[:, None], cols[None, :]]


def pair_labels(labels: torch.Tensor, index: PathIndex) -> PairLabels:
    """``labels`` [B, h, w] integer label grid at stride 4 -> :class:`PairLabels`."""
    if labels.dim() != 3 or labels.is_floating_point():
        raise ValueError(f"expected integer labels [B, h, w], got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    src, dst = index.pair_gather(labels.unsqueeze(1))
    src, dst = src[:, 0], dst[:, 0]  # [B, 1, N], [B, D, N]
    valid = (src != IGNORE) & (dst != IGNORE)
    equal = src == dst
    pos = valid & equal
    dtype = torch.float32
    return PairLabels(bg_pos=(pos & (src == 0)).to(dtype), fg_pos=(pos & (src != 0)).to(dtype),
                      neg=(valid & ~equal).to(dtype))


def _masked_mean(loss: torch.Tensor, mask: torch.Tensor, scale: float = 1.0,
                 count: Optional[torch.Tensor] = None) -> torch.Tensor:
    # count: the mask's count over the whole batch when this is one rank's share of it.
    count = mask.sum() if count is None else count
    return (loss * mask).sum() / (scale * count + EPS)


def pair_counts(labels: PairLabels) -> Dict[str, torch.Tensor]:
    """The number of pairs in each set (the loss terms' denominators)."""
    return {name: getattr(labels, name).sum() for name in PairLabels._fields}


def affinity_losses(aff: torch.Tensor, labels: PairLabels,
                    counts: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """``aff`` [B, D, N] in [0, 1] -> positive (bg/2 + fg/2) and negative cross-entropy terms.
    ``counts``: the denominators (default: :func:`pair_counts` of ``labels``)."""
    counts = pair_counts(labels) if counts is None else counts
    pos_loss = -torch.log(aff + EPS)
    neg_loss = -torch.log(1.0 + EPS - aff)
    bg = _masked_mean(pos_loss, labels.bg_pos, count=counts["bg_pos"])
    fg = _masked_mean(pos_loss, labels.fg_pos, count=counts["fg_pos"])
    return {"bg_pos": bg, "fg_pos": fg, "pos": bg / 2 + fg / 2,
            "neg": _masked_mean(neg_loss, labels.neg, count=counts["neg"])}


def pair_displacement(disp: torch.Tensor, index: PathIndex) -> torch.Tensor:
    """[B, 2, h, w] displacement field -> [B, 2, D, N]: source minus destination of each pair."""
    src, dst = index.pair_gather(disp)
    return src - dst


def displacement_losses(pair_disp: torch.Tensor, index: PathIndex, labels: PairLabels,
                        counts: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """L1 terms: for foreground-positive pairs the difference of the two ends' displacements must
    equal the pair's offset (both ends point at the same instance centre); for background-positive
    pairs it must be zero. Each is averaged over its pairs and the two components."""
    counts = pair_counts(labels) if counts is None else counts
    target = index.offsets_tensor(pair_disp.device, pair_disp.dtype).t()[None, :, :, None]
    fg = _masked_mean((pair_disp - target).abs(), labels.fg_pos.unsqueeze(1), 2.0, counts["fg_pos"])
    bg = _masked_mean(pair_disp.abs(), labels.bg_pos.unsqueeze(1), 2.0, counts["bg_pos"])
    return {"disp_fg": fg, "disp_bg": bg}


def irn_loss(boundary_logits: torch.Tensor, disp: torch.Tensor, labels: torch.Tensor,
             index: PathIndex, reduce_counts: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
             ) -> Dict[str, torch.Tensor]:
    """IRN's training loss from the network outputs and the stride-4 confident labels.

    ``boundary_logits`` [B, 1, h, w], ``disp`` [B, 2, h, w], ``labels`` [B, h, w] (255 = ignore).
    Returns the terms and ``total`` = (pos + neg) / 2 + (disp_fg + disp_bg) / 2.

    ``reduce_counts``: for one rank's share of a batch, maps this share's pair counts (a tensor
    [bg_pos, fg_pos, neg]) to the whole batch's (a sum over the ranks); every term is then this
    share's part of the batch's term, and the terms summed over the ranks are the batch's.
    """
    if labels.shape[-2:] != boundary_logits.shape[-2:]:
        raise ValueError(f"label grid {tuple(labels.shape[-2:])} differs from the network's "
                         f"output grid {tuple(boundary_logits.shape[-2:])}")
    pairs = pair_labels(labels, index)
    counts = pair_counts(pairs)
    if reduce_counts is not None:
        counts = dict(zip(counts, reduce_counts(torch.stack(list(counts.values())))))
    aff = index.affinity(torch.sigmoid(boundary_logits[:, 0]))
    terms = affinity_losses(aff, pairs, counts)
    terms.update(displacement_losses(pair_displacement(disp, index), index, pairs, counts))
    terms["total"] = (terms["pos"] + terms["neg"]) / 2 + (terms["disp_fg"] + terms["disp_bg"]) / 2
    return terms
