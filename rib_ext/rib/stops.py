"""The authors' early stops, as pure functions shared by the engine and the oracle loop."""
from __future__ import annotations

import torch


def explosion_ratio_tensor(merged: torch.Tensor, keys: torch.Tensor, threshold: float) -> torch.Tensor:
    """Fraction of locations where any of the image's class maps, max-normalised (max + 1e-5),
    exceeds ``threshold``, as a 0-d tensor on ``merged``'s device (read it when convenient).
    ``merged``: the step's scale-1.0 map [K, h, w] (ReLU'd, flip-merged)."""
    maps = merged.index_select(0, keys)
    maps = maps / (maps.flatten(1).amax(dim=1).view(-1, 1, 1) + 1e-5)
    return (maps > threshold).any(dim=0).float().mean()


def explosion_ratio(merged: torch.Tensor, keys: torch.Tensor, threshold: float) -> float:
    """:func:`explosion_ratio_tensor` as a Python float."""
    return explosion_ratio_tensor(merged, keys, threshold).item()


STOP_STEPS = "steps"  # ran all K steps
STOP_MARGIN = "margin"  # |sum of the target rows' labelled logits| exceeded m after an update
STOP_EXPLOSION = "explosion"  # the scale-1.0 map covered too much of the image; no update made
