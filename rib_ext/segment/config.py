"""Every setting of the final segmentation stage (DeepLab-v2 on the pseudo masks) in one place.

Defaults are the RIB paper's VOC settings (appendix, "Optimization details for semantic
segmentation"): batch 10, 30k iterations, lr 2e-4, crop 321, and the re-training technique on.
:meth:`SegmentConfig.preset_for` gives the COCO numbers (100k iterations, lr 2.5e-4, crop 481, no
re-training: the paper uses it neither for COCO nor with saliency). The rest follows DeepLab-v2 as
the paper ran it (kazuto1011/deeplab-pytorch): poly decay 0.9, momentum 0.9, weight decay 5e-4, the
ASPP head at 10x the backbone lr (its biases at 20x without weight decay), frozen batch norm, and
DeepLab's dense-CRF settings at test time.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from rib_ext.config import CRFConfig

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
MISSING_POLICIES = ("error", "skip")


def deeplab_crf() -> CRFConfig:
    """DeepLab-v2's CRF (deeplab-pytorch's configs/voc12.yaml: POS_W 3, POS_XY_STD 1, BI_W 4,
    BI_XY_STD 67, BI_RGB_STD 3, 10 iterations). ``gt_prob`` and ``threshold`` are unused: the unary
    comes from the network's softmax, not from hard labels."""
    return CRFConfig(gaussian_sxy=1.0, gaussian_compat=3.0, bilateral_sxy=67.0,
                     bilateral_srgb=3.0, bilateral_compat=4.0, iterations=10)


# What differs between the datasets; everything else is shared.
PRESETS: Dict[str, Dict[str, Any]] = {
    "voc": {"iterations": 30000, "lr": 2e-4, "crop_size": 321, "retrain": True},
    "coco": {"iterations": 100000, "lr": 2.5e-4, "crop_size": 481, "retrain": False},
}


@dataclass
class SegmentConfig:
    """Settings of :func:`rib_ext.segment.segment_stage` (training, re-training, inference)."""

    # -- network
    backbone: str = "resnet101"  # resnet18/34/50 for CPU runs
    weights: Optional[str] = None  # torchvision ImageNet checkpoint of the backbone (no download)
    random_init: bool = False  # smoke tests only; warns
    aspp_dilations: Tuple[int, ...] = (6, 12, 18, 24)

    # -- training
    iterations: int = 30000
    batch_size: int = 10
    lr: float = 2e-4  # the backbone's; the ASPP head gets lr * head_lr_mult
    head_lr_mult: float = 10.0
    head_bias_lr_mult: float = 20.0  # DeepLab's caffe convention: biases at 2x, no weight decay
    lr_power: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 5e-4
    crop_size: int = 321
    scale_range: Tuple[float, float] = (0.5, 1.5)  # random rescale, drawn uniformly
    hflip: bool = True
    amp: bool = True  # bf16 autocast, on CUDA only (CPU runs stay float32)
    checkpoint_every: int = 1000  # iterations between resumable checkpoints
    tensorboard: bool = True  # also log to TensorBoard when it is installed
    num_workers: int = 0
    seed: int = 0

    # -- re-training (paper appendix): train on confident random-walk labels, fill the ignored
    # pixels with that network's predictions, train again on the filled labels
    retrain: bool = True
    retrain_fg: float = 0.3  # random-walk score above this: foreground (the best class)
    retrain_bg: float = 0.2  # every score below this: background; in between: ignored

    # -- inference
    scales: Tuple[float, ...] = (0.5, 0.75, 1.0)  # each with its horizontal flip; softmax averaged
    flip: bool = True
    use_crf: bool = True
    crf: CRFConfig = field(default_factory=deeplab_crf)

    on_missing: str = "error"  # an image without its label / score file: "error" or "skip"
    device: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def preset_for(cls, dataset: str = "voc", **overrides: Any) -> "SegmentConfig":
        """The paper's ``"voc"`` or ``"coco"`` numbers, with keyword overrides."""
        if dataset not in PRESETS:
            raise ValueError(f"unknown segmentation preset {dataset!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[dataset], **overrides})

    def replace(self, **changes: Any) -> "SegmentConfig":
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        for name in ("iterations", "batch_size", "crop_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.aspp_dilations or any(d < 1 for d in self.aspp_dilations):
            raise ValueError(f"aspp_dilations must be positive integers, got {self.aspp_dilations}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {self.scale_range}")
        if not 0.0 <= self.retrain_bg <= self.retrain_fg <= 1.0:
            raise ValueError(f"need 0 <= retrain_bg <= retrain_fg <= 1, got retrain_bg="
                             f"{self.retrain_bg}, retrain_fg={self.retrain_fg}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive, got {self.scales}")
        if self.on_missing not in MISSING_POLICIES:
            raise ValueError(f"on_missing must be one of {MISSING_POLICIES}, got {self.on_missing!r}")

    def as_dict(self) -> Dict[str, Any]:
        """Plain values only (tuples as lists), for JSON files and ``weights_only`` checkpoints."""
        def plain(v):
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return v
        return plain(dataclasses.asdict(self))
