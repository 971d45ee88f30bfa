"""Every stage's settings, with the defaults of the paper / the authors' released code, in one place.

Stages take one of these dataclasses; the pipeline CLI builds them from its flags and saves them
beside the outputs (``dataclasses.asdict``), so a run can always be traced back to its settings.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional, Tuple

# ImageNet statistics used by torchvision's ResNet checkpoints (and IRN's normalisation).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

class ConfigError(ValueError):
    """A setting out of its range, or a config file that does not fit the dataclasses."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _unit(name: str, value: float) -> None:
    _require(0.0 <= value <= 1.0, f"{name} must lie in [0, 1], got {value}")


def _positive(obj, *names: str) -> None:
    for name in names:
        _require(getattr(obj, name) > 0, f"{name} must be > 0, got {getattr(obj, name)}")


def _scales(name: str, scales) -> None:
    _require(len(scales) > 0 and all(s > 0 for s in scales), f"{name} must be positive, got {scales}")
    # IRN's map format takes its stride-4 'cam' size from the first scale; RIB's explosion check too.
    _require(float(scales[0]) == 1.0, f"{name} must start with 1.0, got {tuple(scales)}")


def plain_dict(cfg) -> Dict[str, Any]:
    """A config as plain values only (tuples as lists), for JSON files and ``weights_only``
    checkpoints."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(dataclasses.asdict(cfg))


class Section:
    """What every section of the config tree offers: one preset factory and ``replace``.

    ``preset(dataset, **fields)`` gives the section's starting values for a dataset's numbers
    ("voc" or "coco"), with keyword overrides; sections whose behaviour has named variants (RIB,
    IRN) also take ``behaviour=``. The command line builds every section through it.
    """

    @classmethod
    def preset(cls, dataset: str = "voc", **overrides: Any):
        return cls(**overrides)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


# Multi-scale inference views of IRN / RIB: each scale is run as (image, horizontal flip).
CAM_SCALES = (1.0, 0.5, 1.5, 2.0)


@dataclass
class DemoDataConfig(Section):
    """The embedded default dataset, generated deterministically in the VOC layout."""

    seed: int = 0
    num_train: int = 240
    num_val: int = 60
    image_size: int = 128

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _positive(self, "num_train", "num_val")
        _require(self.seed >= 0, f"demo seed must be >= 0, got {self.seed}")
        _require(self.image_size >= 32, f"demo image_size must be >= 32, got {self.image_size}")


@dataclass
class TrainCamConfig(Section):
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
    checkpoint_every: int = 100  # steps between resumable states (also at each epoch's end)
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _positive(self, "epochs", "batch_size", "crop_size", "lr", "classifier_lr_mult", "checkpoint_every")
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _require(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        lo, hi = self.resize_long
        _require(0 < lo <= hi, f"resize_long must be (lo, hi) with 0 < lo <= hi, got {self.resize_long}")
        _require(len(self.strides) == 4 and all(s in (1, 2) for s in self.strides),
                 f"strides must be 4 values, each 1 or 2, got {self.strides}")


@dataclass
class MakeCamConfig(Section):
    """Plain multi-scale + flip CAMs in IRN's .npy format."""

    scales: Tuple[float, ...] = CAM_SCALES
    num_workers: int = 0
    device: str = "auto"
    precision: str = "float32"  # float32 | bf16 (autocast; the maps are float32)
    channels_last: bool = False
    cudnn_benchmark: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _scales("scales", self.scales)
        _require(self.precision in ("float32", "bf16"), f"precision must be float32 or bf16, got {self.precision!r}")


@dataclass
class EvalSeedConfig(Section):
    """Threshold sweep of the seed evaluation (the authors sweep 0.20..0.49)."""

    threshold_start: float = 0.20
    threshold_stop: float = 0.49  # inclusive
    threshold_step: float = 0.01

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _unit("threshold_start", self.threshold_start)
        _unit("threshold_stop", self.threshold_stop)
        _require(self.threshold_start <= self.threshold_stop,
                 f"threshold_start {self.threshold_start} is above threshold_stop {self.threshold_stop}")
        _require(self.threshold_step > 0, f"threshold_step must be > 0, got {self.threshold_step}")


@dataclass
class CRFConfig(Section):
    """Dense CRF on seeds (IRN's settings, DESIGN.md / IRN_NOTES.md)."""

    threshold: Optional[float] = None  # background threshold; None = the best one of eval_seed
    gt_prob: float = 0.7
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 50.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 10.0
    iterations: int = 10

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.threshold is not None:
            _unit("crf threshold", self.threshold)
        _require(0.0 < self.gt_prob < 1.0, f"gt_prob must lie in (0, 1), got {self.gt_prob}")
        _positive(self, "gaussian_sxy", "bilateral_sxy", "bilateral_srgb")
        _require(self.iterations >= 0, f"iterations must be >= 0, got {self.iterations}")


RIB_LOSSES = ("rib", "bce_sigmoid", "bce_tanh", "bce_softsign")


@dataclass
class RIBConfig(Section):
    """Per-image adaptation (RIB). Defaults: the paper's VOC settings with the authors' released
    behaviour (``behaviour="authors"``); :meth:`preset` gives ``paper`` and the COCO numbers.

    ``authors`` (the published figures came from it): GNDRP divides by H*W and keeps ``< tau``,
    the loss is -sum(t*y) unclipped, adaptation stops once |sum of the target rows' labelled
    logits| > margin, or when the scale-1.0 map "explodes" (from step 1 on, the union over the
    image's classes of max-normalised map > explosion_threshold covers more than explosion_ratio of
    the locations). ``paper``: -t*min(m, y) per row, GNDRP divides by the kept count (<= tau), no
    early stops.

    A present class whose map is never positive: ``authors`` divides by the max unguarded, as
    the authors' code does (max < 0: nothing kept, logit 0, no gradient; max == 0: the zero
    locations dropped); ``paper`` average-pools such a plane (csrc/gndrp.h).
    COCO: ``authors`` reproduces the authors' GNDRP loop over the first 20 classes only
    (``coco_first20_bug``: classes 20..79 average-pooled); ``paper`` normalises all 80.
    """

    behaviour: str = "authors"  # set by preset(behaviour=...), recorded: authors | paper
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
    gndrp_mode: str = "authors"  # authors (sum / HW, < tau) | paper (sum / kept, <= tau)
    loss: str = "rib"  # rib | bce_sigmoid | bce_tanh | bce_softsign (the paper's ablation)
    clip_loss: bool = False  # paper: -t * min(m, y); authors: -t * y
    stop_on_margin: bool = True
    stop_on_explosion: bool = True
    explosion_threshold: float = 0.3
    explosion_ratio: float = 0.7
    # Per step, the probability that the other images come from the pool sharing no class with the
    # target (else from all other images). Ours: the authors' p_disjoint < 1 branch is dead code
    # that always draws from the disjoint pool (rib_ext.rib.sampling.OtherStream).
    disjoint_prob: float = 1.0
    scales: Tuple[float, ...] = CAM_SCALES  # map scales; the first must be 1.0 (explosion check)
    loss_scales: Tuple[float, ...] = (1.0, 1.5, 2.0)  # target scales that feed the loss (not 0.5)
    other_resize_long: Tuple[int, int] = (320, 640)
    other_crop: int = 512
    # GNDRP normalises only classes 0..19, the rest are average-pooled: the authors' GNDRP loops
    # over range(20) also on COCO, and that produced the published COCO figures. On by preset("coco",
    # behaviour="authors"); the paper behaviour normalises all 80 classes.
    coco_first20_bug: bool = False
    group_size: int = 1  # G: images adapted at once, each with its own weights; 0 = auto
    head_batching: str = "loop"  # loop | vmap: the group's other-image pass, per image or vmapped
    # -- speed settings (benchmarks/RESULTS.md); none changes the method, precision aside
    precision: str = "float32"  # float32 | bf16 (autocast; maps and weights stay float32)
    channels_last: bool = False  # NHWC convolutions (pays on GPUs with bf16)
    cudnn_benchmark: bool = False  # let cuDNN time its algorithms per shape
    # Stages 1-2 with each fixed BN folded into its convolution: fewer kernels, but float rounding
    # differs (~1e-7), so off by default, keeping the authors' maps bit for bit.
    fold_stem: bool = False
    foreach_update: bool = True  # the SGD update as torch._foreach_* over the group's weights
    group_memory_gb: float = 16.0  # group_size=0: the largest G whose step fits this (CUDA)
    image_cache_mb: int = 4096  # decoded other images kept in (pinned) host memory, LRU beyond
    prefetch: str = "auto"  # auto | on | off: build the next step's other images in a thread
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _require(self.behaviour in ("authors", "paper"), f"behaviour must be 'authors' or 'paper', got {self.behaviour!r}")
        _require(0.0 < self.tau <= 1.0, f"tau must lie in (0, 1], got {self.tau}")
        _require(self.steps >= 1, f"RIB steps must be >= 1, got {self.steps}")
        _require(self.num_others >= 1, f"num_others must be >= 1, got {self.num_others}")
        _require(self.group_size >= 0, f"group_size must be >= 1, or 0 for automatic; got {self.group_size}")
        _require(self.precision in ("float32", "bf16"), f"precision must be float32 or bf16, got {self.precision!r}")
        _require(self.prefetch in ("auto", "on", "off"), f"prefetch must be auto, on or off, got {self.prefetch!r}")
        _require(self.image_cache_mb >= 0, f"image_cache_mb must be >= 0, got {self.image_cache_mb}")
        _positive(self, "group_memory_gb")
        _positive(self, "lr", "margin", "classifier_lr_mult", "other_crop")
        _require(self.weight_decay >= 0 and self.lr_power >= 0,
                 f"weight_decay and lr_power must be >= 0, got {self.weight_decay}, {self.lr_power}")
        _require(self.pooling in ("gndrp", "gap"), f"pooling must be gndrp or gap, got {self.pooling!r}")
        _require(self.gndrp_mode in ("authors", "paper"), f"gndrp_mode must be authors or paper, got {self.gndrp_mode!r}")
        _require(self.loss in RIB_LOSSES, f"loss must be one of {RIB_LOSSES}, got {self.loss!r}")
        _require(self.head_batching in ("loop", "vmap"), f"head_batching must be loop or vmap, got {self.head_batching!r}")
        _unit("explosion_threshold", self.explosion_threshold)
        _unit("explosion_ratio", self.explosion_ratio)
        _unit("disjoint_prob", self.disjoint_prob)
        _scales("scales", self.scales)
        _require(any(s in self.scales for s in self.loss_scales),
                 f"no loss scale {tuple(self.loss_scales)} is among the scales {tuple(self.scales)}")
        lo, hi = self.other_resize_long
        _require(0 < lo <= hi, f"other_resize_long must be (lo, hi) with 0 < lo <= hi, got {self.other_resize_long}")

    @classmethod
    def preset(cls, dataset: str = "voc", behaviour: str = "authors", **overrides: Any) -> "RIBConfig":
        """The authors' (``authors``) or the paper's (``paper``) behaviour with VOC or COCO numbers."""
        if behaviour not in ("authors", "paper"):
            raise ValueError(f"RIB behaviour must be 'authors' or 'paper', got {behaviour!r}")
        values = {}
        if dataset == "coco":
            values.update(lr=5e-6, num_others=15, tau=0.5, margin=1000.0, explosion_ratio=0.8,
                          coco_first20_bug=behaviour == "authors")
        if behaviour == "paper":
            values.update(behaviour="paper", gndrp_mode="paper", clip_loss=True, stop_on_margin=False,
                          stop_on_explosion=False)
        values.update(overrides)
        return cls(**values)


# What a stage does when an image has no input file: stop with a list, or skip with a warning.


# ---- IRN refinement (ir_label, train_irn, make_sem_seg, eval_mask); see shared/IRN_NOTES.md

# What differs between the IRN and RIB authors' code; everything else is shared. VOC presets pad
# every image to 512 x 512 before the boundary network (IRN's EdgeDisplacement, which RIB keeps for
# VOC); RIB's COCO script does not pad and uses a background threshold of 0.22.
IRN_PRESETS: Dict[str, Dict[str, Any]] = {
    "irn": {"conf_fg": 0.30, "conf_bg": 0.05, "sem_seg_bg_thres": 0.25, "map_power": 1.0,
            "boundary_pad_to": 512},
    "rib": {"conf_fg": 0.35, "conf_bg": 0.17, "sem_seg_bg_thres": 0.27, "map_power": 1.3,
            "boundary_pad_to": 512},
    "rib_coco": {"conf_fg": 0.35, "conf_bg": 0.17, "sem_seg_bg_thres": 0.22, "map_power": 1.3,
                 "boundary_pad_to": None},
}


@dataclass
class IRNConfig(Section):
    """Settings of the ir_label, train_irn, make_sem_seg, eval_mask and saliency stages."""

    # The fields that shape ir_label's and make_sem_seg's outputs (train_irn's are the rest).
    IR_LABEL_FIELDS: ClassVar[tuple] = ("conf_fg", "conf_bg", "crf")
    SEM_SEG_FIELDS: ClassVar[tuple] = ("rw_radius", "beta", "exp_times", "map_power", "sem_seg_bg_thres",
                                       "saliency_threshold")

    # -- confident labels (ir_label): fg where a map > conf_fg, bg where every map <= conf_bg
    conf_fg: float = 0.30
    conf_bg: float = 0.05
    crf: CRFConfig = field(default_factory=CRFConfig)
    # An image without its input file (maps, labels, masks): False lists them and stops, True
    # warns (listing them) and goes on without them. Set with the run's --allow-missing.
    allow_missing: bool = False

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
    sem_seg_bg_thres: float = 0.25  # RIB: 0.27 on VOC, 0.22 on COCO
    # Pad the image with zeros (right and bottom, after normalisation) to this size before the
    # boundary network, then crop the map back: IRN's and RIB's VOC inference do, so GroupNorm's
    # statistics include the padding. None runs the image unpadded (RIB's COCO path). Sides
    # already longer are left as they are.
    boundary_pad_to: Optional[int] = 512

    # -- RIB-Sal: saliency PNGs 0..255, salient where value > saliency_threshold
    saliency_threshold: int = 127

    device: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def preset(cls, dataset: str = "voc", behaviour: str = "rib", **overrides: Any) -> "IRNConfig":
        """The thresholds of ``"rib"`` (RIB's code), ``"irn"`` (IRN's code) or ``"rib_coco"``, with
        keyword overrides. ``dataset="coco"`` selects the COCO variant: ``"rib"`` becomes
        ``"rib_coco"`` (background threshold 0.22, no padding); ``"irn"`` (no COCO script of its
        own) runs unpadded."""
        if behaviour not in IRN_PRESETS:
            raise ValueError(f"unknown IRN behaviour {behaviour!r}; expected one of {sorted(IRN_PRESETS)}")
        values = dict(IRN_PRESETS[behaviour])
        if dataset == "coco":
            values = dict(IRN_PRESETS.get(f"{behaviour}_coco", {**values, "boundary_pad_to": None}))
        return cls(**{**values, **overrides})

    @property
    def walk_steps(self) -> int:
        return 2 ** self.exp_times

    def validate(self) -> None:
        if not 0.0 <= self.conf_bg <= self.conf_fg:
            raise ValueError(f"need 0 <= conf_bg <= conf_fg, got conf_bg={self.conf_bg}, "
                             f"conf_fg={self.conf_fg}")
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
        if self.boundary_pad_to is not None and self.boundary_pad_to < 1:
            raise ValueError(f"boundary_pad_to must be None or >= 1, got {self.boundary_pad_to}")
        if not 0 <= self.saliency_threshold <= 255:
            raise ValueError(f"saliency_threshold must lie in 0..255, got {self.saliency_threshold}")

    def as_dict(self) -> Dict[str, Any]:
        return plain_dict(self)


# ---- the final segmentation network (segment stage)

SEGMENT_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")


def deeplab_crf() -> CRFConfig:
    """DeepLab-v2's CRF (deeplab-pytorch's configs/voc12.yaml: POS_W 3, POS_XY_STD 1, BI_W 4,
    BI_XY_STD 67, BI_RGB_STD 3, 10 iterations). ``gt_prob`` and ``threshold`` are unused: the unary
    comes from the network's softmax, not from hard labels."""
    return CRFConfig(gaussian_sxy=1.0, gaussian_compat=3.0, bilateral_sxy=67.0,
                     bilateral_srgb=3.0, bilateral_compat=4.0, iterations=10)


# What differs between the datasets; everything else is shared.
SEGMENT_PRESETS: Dict[str, Dict[str, Any]] = {
    "voc": {"iterations": 30000, "lr": 2e-4, "crop_size": 321, "retrain": True},
    "coco": {"iterations": 100000, "lr": 2.5e-4, "crop_size": 481, "retrain": False},
}


@dataclass
class SegmentConfig(Section):
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

    allow_missing: bool = False  # an image without its label / score file: skip it (warned) or stop
    device: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def preset(cls, dataset: str = "voc", **overrides: Any) -> "SegmentConfig":
        """The paper's ``"voc"`` or ``"coco"`` numbers, with keyword overrides."""
        if dataset not in SEGMENT_PRESETS:
            raise ValueError(f"unknown segmentation preset {dataset!r}; expected one of {sorted(SEGMENT_PRESETS)}")
        return cls(**{**SEGMENT_PRESETS[dataset], **overrides})

    def validate(self) -> None:
        if self.backbone not in SEGMENT_BACKBONES:
            raise ValueError(f"backbone must be one of {SEGMENT_BACKBONES}, got {self.backbone!r}")
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

    def as_dict(self) -> Dict[str, Any]:
        return plain_dict(self)


PIPELINE_PRESETS = ("demo", "voc", "coco")


@dataclass
class VisualizeConfig(Section):
    """Pictures of a run (the ``visualize`` stage)."""

    count: int = 12  # image panels, evenly spread over the evaluated list
    montage_count: int = 3  # of those, images re-adapted for the per-step montage of RIB's map

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _require(self.count >= 1, f"count must be >= 1, got {self.count}")
        _require(0 <= self.montage_count <= self.count,
                 f"montage_count must lie in 0..count ({self.count}), got {self.montage_count}")


@dataclass
class PipelineConfig:
    """The whole run: data, output, and every stage's settings (one tree, validated at once)."""

    dataset: str = "demo"  # voc | coco | demo
    root: Optional[str] = None
    out_dir: str = "rib_ext_out"
    train_list: Optional[str] = None  # None: VOC train_aug when its list exists, else train
    eval_list: Optional[str] = None
    val_list: Optional[str] = None  # the segment stage's evaluation list
    saliency_dir: Optional[str] = None  # RIB-Sal: saliency PNGs that refine the pseudo masks
    allow_missing: bool = False  # skip images whose maps are missing instead of stopping
    irn_auto_thresholds: bool = False  # IRN confident labels at best seed threshold +- 0.1
    preset: Optional[str] = None  # demo | voc | coco: the settings the stage configs started from
    cam_checkpoint: Optional[str] = None  # a trained classifier to use instead of train_cam's
    device: str = "auto"
    # Worker processes per rank of the CPU-bound stages (the dense CRF of crf and ir_label); None:
    # the cores available to the process, shared among the ranks of the machine; 0 or 1: no pool.
    cpu_workers: Optional[int] = None
    demo: DemoDataConfig = field(default_factory=DemoDataConfig)
    train_cam: TrainCamConfig = field(default_factory=TrainCamConfig)
    make_cam: MakeCamConfig = field(default_factory=MakeCamConfig)
    eval_seed: EvalSeedConfig = field(default_factory=EvalSeedConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    rib: RIBConfig = field(default_factory=RIBConfig)
    irn: IRNConfig = field(default_factory=IRNConfig.preset)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    visualize: VisualizeConfig = field(default_factory=VisualizeConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field of the tree (also after in-place edits, which skip __post_init__)."""
        _require(self.dataset in ("demo", "voc", "coco"),
                 f"dataset must be demo, voc or coco, got {self.dataset!r}")
        _require(self.preset is None or self.preset in PIPELINE_PRESETS,
                 f"preset must be one of {PIPELINE_PRESETS}, got {self.preset!r}")
        _require(self.cpu_workers is None or self.cpu_workers >= 0,
                 f"cpu_workers must be >= 0 (or none: the cores available), got {self.cpu_workers}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value) and hasattr(value, "validate"):
                try:
                    value.validate()
                except ConfigError:
                    raise
                except ValueError as err:  # IRN / segment configs raise plain ValueErrors
                    raise ConfigError(f"{f.name}: {err}") from err


def from_plain(cls, values: Dict[str, Any], where: str = "config"):
    """A dataclass (nested ones too) from plain values such as :func:`plain_dict` gives: lists become
    tuples where the field is a tuple; unknown names are an error naming them."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    hints = _type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_plain(hint, value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err


def _type_hints(cls) -> Dict[str, Any]:
    import typing
    return typing.get_type_hints(cls)
