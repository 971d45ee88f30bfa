"""Gradient maps G_l = d(sum T_l)/dx and G_6 = dy_c/dx, their normalisation, and the HGR.

Conventions (the paper leaves them open):
  * T_l is conv layer l's output after its ReLU, summed over channels and positions.
  * G_6 is the gradient of the raw logit y_c of the image's own class (no sigmoid).
  * A map is normalised per image: |G| divided by its maximum over the image's pixels, so every
    map lies in [0, 1] and "a gradient above 0.3" compares a pixel with the image's largest one.
  * HGR(R) = the fraction of R's pixels whose normalised value is > threshold (0.3).
"""
from __future__ import annotations

import torch

_TINY = 1e-12


def gradient_maps(model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Raw (signed) maps [L + 1, N, H, W]: G_1..G_L of the conv layers, then G_{L+1} of the logit.

    ``x`` [N, 1, H, W]; ``target`` [N] class indices. The model must treat images independently
    (no batch statistics), which lets one backward pass per map serve the whole batch.
    """
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        feats = model.features(x)
        logits = model.head(feats[-1])
        scalars = [f.sum() for f in feats]
        scalars.append(logits.gather(1, target.view(-1, 1).long()).sum())
        maps = []
        for i, s in enumerate(scalars):
            (g,) = torch.autograd.grad(s, x, retain_graph=i + 1 < len(scalars))
            maps.append(g[:, 0])
    return torch.stack(maps)


def normalise_maps(g: torch.Tensor) -> torch.Tensor:
    """|G| / max |G| over each map's last two (spatial) dims; an all-zero map stays zero."""
    a = g.abs()
    return a / a.amax(dim=(-2, -1), keepdim=True).clamp_min(_TINY)


def hgr(norm_map, region_mask, threshold: float = 0.3) -> torch.Tensor:
    """High gradient ratio of a region: the fraction of its pixels with normalised value above
    ``threshold``. Reduces the last two dims (any leading dims are kept); NaN for an empty region."""
    norm_map = torch.as_tensor(norm_map)
    mask = torch.as_tensor(region_mask, dtype=torch.bool)
    high = (norm_map > threshold) & mask
    count = mask.sum(dim=(-2, -1)).to(torch.float64)
    ratio = high.sum(dim=(-2, -1)).to(torch.float64) / count
    return torch.where(count > 0, ratio, torch.full_like(ratio, float("nan")))


def region_hgr(norm_maps: torch.Tensor, regions: dict, threshold: float) -> dict:
    """{region name: HGR per map} for maps [..., N, H, W] and region masks [N, H, W]."""
    return {name: hgr(norm_maps, mask, threshold) for name, mask in regions.items()}
