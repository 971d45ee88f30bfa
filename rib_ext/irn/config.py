"""Every number of IRN's refinement (confident labels, IRN training, random walk) in one dataclass.

The defaults are those of IRN's released code (``run_sample.py``); :meth:`IRNConfig.preset` gives
the RIB authors' settings ("rib"), which produced RIB's published masks. See
``shared/IRN_NOTES.md`` for where each number comes from.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from rib_ext.config import CRFConfig

# What differs between the IRN and RIB authors' code; everything else is shared.
PRESETS: Dict[str, Dict[str, Any]] = {
    "irn": {"conf_fg": 0.30, "conf_bg": 0.05, "sem_seg_bg_thres": 0.25, "map_power": 1.0},
    "rib": {"conf_fg": 0.35, "conf_bg": 0.17, "sem_seg_bg_thres": 0.27, "map_power": 1.3},
}

MISSING_POLICIES = ("error", "skip")


@dataclass
class IRNConfig:
    """Settings of the ir_label, train_irn, make_sem_seg, eval_mask and saliency stages."""

    # -- confident labels (ir_label): fg where a map > conf_fg, bg where every map <= conf_bg
    conf_fg: float = 0.30
    conf_bg: float = 0.05
    crf: CRFConfig = field(default_factory=CRFConfig)
    # What to do when an image has no input file (maps, labels, masks): "error" lists them and
    # stops, "skip" warns (listing them) and goes on without them.
    on_missing: str = "error"

    # -- the inter-pixel relation network (train_irn)
    backbone: str = "resnet50"
    # A torchvision ImageNet checkpoint (what IRN starts from) or a rib_ext CAM-network
    # checkpoint (useful where no ImageNet weights exist, e.g. the demo).
    weights: Optional[str] = None
    random_init: bool = False  # smoke tests only
    crop_size: int = 512
    batch_size: int = 32
    epochs: int = 3
    lr: float = 0.1  # the boundary branch's
    displacement_lr_mult: float = 10.0  # the displacement branch trains at 10x (IRN)
    weight_decay: float = 1e-4
    # IRN's random_scale draws uniformly from [lo, hi] (train_irn passes rescale=(0.5, 1.5)).
    scale_range: Tuple[float, float] = (0.5, 1.5)
    path_radius: int = 10  # pairs for the affinity loss, at stride 4
    mean_shift_momentum: float = 0.1  # running mean of the displacement field (IRN's BN momentum)
    checkpoint_every: int = 100  # steps between resumable checkpoints (also at each epoch's end)
    num_workers: int = 0
    seed: int = 0

    # -- random walk (make_sem_seg)
    rw_radius: int = 5
    beta: float = 10.0
    exp_times: int = 8  # the walk takes 2 ** exp_times steps
    map_power: float = 1.0  # RIB raises the stride-4 maps to 1.3 before the walk
    sem_seg_bg_thres: float = 0.25

    # -- RIB-Sal: saliency PNGs 0..255, salient where value > saliency_threshold
    saliency_threshold: int = 127

    device: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "IRNConfig":
        """``"irn"`` (IRN's code) or ``"rib"`` (RIB's code), with keyword overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown IRN preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def replace(self, **changes: Any) -> "IRNConfig":
        return dataclasses.replace(self, **changes)

    @property
    def walk_steps(self) -> int:
        return 2 ** self.exp_times

    def validate(self) -> None:
        if not 0.0 <= self.conf_bg <= self.conf_fg:
            raise ValueError(f"need 0 <= conf_bg <= conf_fg, got conf_bg={self.conf_bg}, "
                             f"conf_fg={self.conf_fg}")
        if self.on_missing not in MISSING_POLICIES:
            raise ValueError(f"on_missing must be one of {MISSING_POLICIES}, got {self.on_missing!r}")
        if self.crop_size % 4:
            raise ValueError(f"crop_size must be a multiple of 4 (the label grid is at stride 4), "
                             f"got {self.crop_size}")
        for name in ("batch_size", "epochs", "path_radius", "rw_radius", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.exp_times < 0:
            raise ValueError(f"exp_times must be >= 0, got {self.exp_times}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {self.scale_range}")
        if self.map_power <= 0:
            raise ValueError(f"map_power must be > 0, got {self.map_power}")
        if not 0 <= self.saliency_threshold <= 255:
            raise ValueError(f"saliency_threshold must lie in 0..255, got {self.saliency_threshold}")

    def as_dict(self) -> Dict[str, Any]:
        """Plain values only (tuples as lists), for JSON files and ``weights_only`` checkpoints."""
        def plain(v):
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return v
        return plain(dataclasses.asdict(self))
