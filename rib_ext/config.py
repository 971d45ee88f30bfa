"""Every stage's settings, with the defaults of the paper / the authors' released code, in one place.

Stages take one of these dataclasses; the pipeline CLI builds them from its flags and saves them
beside the outputs (``dataclasses.asdict``), so a run can always be traced back to its settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

# ImageNet statistics used by torchvision's ResNet checkpoints (and IRN's normalisation).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Multi-scale inference views of IRN / RIB: each scale is run as (image, horizontal flip).
CAM_SCALES = (1.0, 0.5, 1.5, 2.0)


@dataclass
class DemoDataConfig:
    """The embedded default dataset, generated deterministically in the VOC layout."""

    seed: int = 0
    num_train: int = 240
    num_val: int = 60
    image_size: int = 128


@dataclass
class TrainCamConfig:
    """Classifier training: IRN's recipe (5 epochs, batch 16, crop 512, resize-long 320..640, flip,
    SGD lr 0.1 on the classifier / 0.01 on the backbone, poly decay, weight decay 1e-4)."""

    backbone: str = "resnet50"
    weights: Optional[str] = None  # a torchvision ImageNet checkpoint file (no download)
    random_init: bool = False  # allowed only when asked for; warns
    strides: Tuple[int, int, int, int] = (2, 2, 2, 1)  # output stride 16
    from_scratch: bool = False  # every stage trains, batch-stat BN (random weights only)
    epochs: int = 5
    batch_size: int = 16
    crop_size: int = 512
    resize_long: Tuple[int, int] = (320, 640)
    lr: float = 0.1  # the classifier's; the backbone gets lr / classifier_lr_mult
    classifier_lr_mult: float = 10.0
    weight_decay: float = 1e-4
    authors_momentum: bool = True  # SGD momentum = weight_decay (the authors' optimizer quirk)
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"


@dataclass
class MakeCamConfig:
    """Plain multi-scale + flip CAMs in IRN's .npy format."""

    scales: Tuple[float, ...] = CAM_SCALES
    num_workers: int = 0
    device: str = "auto"


@dataclass
class EvalSeedConfig:
    """Threshold sweep of the seed evaluation (the authors sweep 0.20..0.49)."""

    threshold_start: float = 0.20
    threshold_stop: float = 0.49  # inclusive
    threshold_step: float = 0.01


@dataclass
class CRFConfig:
    """Dense CRF on seeds (IRN's settings, DESIGN.md / IRN_NOTES.md)."""

    threshold: Optional[float] = None  # background threshold; None = the best one of eval_seed
    gt_prob: float = 0.7
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 50.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 10.0
    iterations: int = 10


RIB_LOSSES = ("rib", "bce_sigmoid", "bce_tanh", "bce_softsign")


@dataclass
class RIBConfig:
    """Per-image adaptation (RIB). Defaults: the paper's VOC settings with the authors' released
    behaviour (preset ``reference``); :meth:`preset` gives ``paper`` and the COCO numbers.

    ``reference`` (the published figures came from it): GNDRP divides by H*W and keeps ``< tau``,
    the loss is -sum(t*y) unclipped, adaptation stops once |sum of the target rows' labelled
    logits| > margin, or when the scale-1.0 map "explodes" (from step 1 on, the union over the
    image's classes of max-normalised map > explosion_threshold covers more than explosion_ratio of
    the locations). ``paper``: -t*min(m, y) per row, GNDRP divides by the kept count (<= tau), no
    early stops.
    """

    preset: str = "reference"
    steps: int = 10  # K
    lr: float = 8e-6  # lambda, of the backbone (stages 3-4); the classifier gets lr * classifier_lr_mult
    classifier_lr_mult: float = 10.0
    weight_decay: float = 1e-4
    authors_momentum: bool = True  # SGD momentum = weight_decay, the authors' optimizer quirk
    lr_power: float = 0.9  # lr * (1 - step / steps) ** lr_power
    num_others: int = 20  # B
    margin: float = 600.0  # m
    tau: float = 0.4
    pooling: str = "gndrp"  # gndrp | gap
    gndrp_mode: str = "reference"  # reference (sum / HW, < tau) | paper (sum / kept, <= tau)
    loss: str = "rib"  # rib | bce_sigmoid | bce_tanh | bce_softsign (the paper's ablation)
    clip_loss: bool = False  # paper: -t * min(m, y); reference: -t * y
    stop_on_margin: bool = True
    stop_on_explosion: bool = True
    explosion_threshold: float = 0.3
    explosion_ratio: float = 0.7
    disjoint_prob: float = 1.0  # probability that the other images share no class with the target
    scales: Tuple[float, ...] = CAM_SCALES  # map scales; the first must be 1.0 (explosion check)
    loss_scales: Tuple[float, ...] = (1.0, 1.5, 2.0)  # target scales that feed the loss (not 0.5)
    other_resize_long: Tuple[int, int] = (320, 640)
    other_crop: int = 512
    coco_first20_bug: bool = False  # GNDRP only on classes 0..19, as the authors' COCO code did
    group_size: int = 1  # G: images adapted at once, each with its own weights
    seed: int = 0
    device: str = "auto"

    @classmethod
    def preset_for(cls, preset: str = "reference", dataset: str = "voc", **overrides) -> "RIBConfig":
        """The authors' (``reference``) or the paper's (``paper``) behaviour with VOC or COCO numbers."""
        if preset not in ("reference", "paper"):
            raise ValueError(f"preset must be 'reference' or 'paper', got {preset!r}")
        values = {}
        if dataset == "coco":
            values.update(lr=5e-6, num_others=15, tau=0.5, margin=1000.0, explosion_ratio=0.8)
        if preset == "paper":
            values.update(preset="paper", gndrp_mode="paper", clip_loss=True, stop_on_margin=False,
                          stop_on_explosion=False)
        values.update(overrides)
        return cls(**values)


@dataclass
class PipelineConfig:
    dataset: str = "demo"  # voc | coco | demo
    root: Optional[str] = None
    out_dir: str = "rib_ext_out"
    train_list: Optional[str] = None
    eval_list: Optional[str] = None
    allow_missing: bool = False  # skip images whose maps are missing instead of stopping
    demo: DemoDataConfig = field(default_factory=DemoDataConfig)
    train_cam: TrainCamConfig = field(default_factory=TrainCamConfig)
    make_cam: MakeCamConfig = field(default_factory=MakeCamConfig)
    eval_seed: EvalSeedConfig = field(default_factory=EvalSeedConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    rib: RIBConfig = field(default_factory=RIBConfig)
