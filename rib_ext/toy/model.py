"""The toy classifier: five 3x3 convolutions with ReLU, global average pooling, one linear layer.

Resolution is halved by 2x2 average pooling, not by strided convolutions: a stride-2 3x3 kernel
covers alternate pixels once or twice, which stripes every input-gradient map in a checkerboard
and would make a pixel-level threshold (the HGR) measure the stripes. No batch normalisation:
every image's output depends on that image alone, so one backward pass over a batch gives each
image its own input gradient.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rib_ext.toy.config import ToyConfig


class ToyNet(nn.Module):
    """``features(x)`` gives T_1..T_5 (each conv's output after its ReLU, before any pooling);
    ``forward(x)`` the logits [N, 2], y = w^T GAP(T_5) + b: the paper's final layer, no sigmoid."""

    def __init__(self, channels=(8, 8, 16, 16, 16), pool_after=(1, 3), num_classes: int = 2):
        super().__init__()
        widths = (1,) + tuple(channels)  # grey-level input
        self.convs = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 3, padding=1)
                                   for i in range(len(channels)))
        self.pool_after = frozenset(pool_after)
        self.fc = nn.Linear(widths[-1], num_classes)
        for conv in self.convs:
            # He init: with PyTorch's default the signal fades over five layers and GAP, and BCE
            # training sits on a plateau at log(2) for several epochs first.
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    @classmethod
    def from_config(cls, cfg: ToyConfig) -> "ToyNet":
        return cls(cfg.channels, cfg.pool_after, num_classes=len(cfg.classes))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for layer, conv in enumerate(self.convs, start=1):
            x = F.relu(conv(x))
            feats.append(x)
            if layer in self.pool_after:
                x = F.avg_pool2d(x, 2)
        return feats

    def head(self, last: torch.Tensor) -> torch.Tensor:
        return self.fc(last.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[-1])
