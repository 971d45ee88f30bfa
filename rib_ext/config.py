"""Every stage's settings, with the defaults of the paper / the authors' released code, in one place.

Stages take one of these dataclasses; the pipeline CLI builds them from its flags and saves them
beside the outputs (``dataclasses.asdict``), so a run can always be traced back to its settings.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Literal, Optional, Tuple

from rib_ext import presets
from rib_ext.config_fields import (PRECISIONS, ConfigError, Precision, check_fields,  # noqa: F401
                                   check_value, coerce, nearest, setting, shown)

# ImageNet statistics used by torchvision's ResNet checkpoints (and IRN's normalisation).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _scales(name: str, scales) -> None:
    # IRN's map format takes its stride-4 'cam' size from the first scale; RIB's explosion check too.
    _require(len(scales) > 0, f"{name} must not be empty")
    _require(float(scales[0]) == 1.0, f"{name} must start with 1.0, got {tuple(scales)}")


def plain_dict(cfg) -> Dict[str, Any]:
    """A config as plain values only (tuples as lists), for JSON files and ``weights_only``
    checkpoints. The sections' copies of settings given once in the tree (a PipelineConfig's
    ``MIRRORED``) are left out: each is written where it is set."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    out = plain(dataclasses.asdict(cfg))
    for path in getattr(cfg, "MIRRORED", {}):
        section, name = path.split(".")
        del out[section][name]
    return out


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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Every field within its declared range (config_fields.setting), then the section's rules
        across fields (``check_rules``). Run at construction and again by the tree's validate (an
        in-place edit skips __post_init__)."""
        check_fields(self)
        self.check_rules()

    def check_rules(self) -> None:
        """Rules that tie fields together; a section with any overrides this."""


# Multi-scale inference views of IRN / RIB: each scale is run as (image, horizontal flip).
CAM_SCALES = (1.0, 0.5, 1.5, 2.0)


@dataclass
class DemoDataConfig(Section):
    """The embedded default dataset, generated deterministically in the VOC layout."""

    seed: int = setting(0, "[0, 4294967295]")
    num_train: int = setting(240, ">= 1")
    num_val: int = setting(60, ">= 1")
    image_size: int = setting(128, ">= 32")


# The classifier's backbones (rib_ext.models.BACKBONES; resnet_tiny: the tests' and toy runs'
# small network): checked with the settings, before any data is generated or read.
CamBackbone = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet_tiny"]
CAM_BACKBONES = typing.get_args(CamBackbone)
# The text settings with a fixed set of values: each is its type, which the checks and the flags'
# choices read (rib_ext.config_fields.choices_of).
Behaviour = Literal["authors", "paper"]  # the authors' released code, or the paper's equations
DatasetName = Literal["demo", "voc", "coco"]


@dataclass
class TrainCamConfig(Section):
    """Classifier training: IRN's recipe (5 epochs, batch 16, crop 512, resize-long 320..640, flip,
    SGD lr 0.1 on the classifier / 0.01 on the backbone, poly decay, weight decay 1e-4)."""

    # The classifier: "camnet" (the paper's ResNet of `backbone`), or "torchvision:NAME" /
    # "timm:NAME", any classifier rib_ext.models.adapt accepts (its head new for the classes)
    model: str = "camnet"
    # The first adapted layer of a torchvision / timm model (None: the family's default)
    split: Optional[str] = None
    backbone: CamBackbone = "resnet50"
    # A torchvision ImageNet checkpoint file of `backbone` (no download); with `model`, a state
    # dict of that model
    weights: Optional[str] = None
    random_init: bool = False  # allowed only when asked for; warns
    strides: Tuple[int, int, int, int] = setting((2, 2, 2, 1), "[1, 2]")  # output stride 16
    from_scratch: bool = False  # every stage trains, batch-stat BN (random weights only)
    epochs: int = setting(5, ">= 1")
    batch_size: int = setting(16, ">= 1")
    crop_size: int = setting(512, ">= 1")
    resize_long: Tuple[int, int] = setting((320, 640), ">= 1")
    lr: float = setting(0.1, "> 0")  # the classifier's; the backbone gets lr / classifier_lr_mult
    classifier_lr_mult: float = setting(10.0, "> 0")
    weight_decay: float = setting(1e-4, ">= 0")
    authors_momentum: bool = True  # SGD momentum = weight_decay (the authors' optimizer quirk)
    # Steps between resumable states (also at each epoch's end)
    checkpoint_every: int = setting(100, ">= 1")
    # Run-wide in a pipeline: given once, at the top of PipelineConfig, and copied here (RUN_WIDE)
    num_workers: int = setting(0, ">= 0")
    seed: int = setting(0, "[0, 4294967295]")
    device: str = "auto"

    def check_rules(self) -> None:
        lo, hi = self.resize_long
        _require(lo <= hi, f"resize_long must be (lo, hi) with lo <= hi, got {self.resize_long}")
        source, _, name = self.model.partition(":")
        _require(self.model == "camnet" or (source in ("torchvision", "timm") and bool(name)),
                 f"model must be 'camnet', 'torchvision:NAME' or 'timm:NAME', got {self.model!r}")
        _require(self.split is None or self.model != "camnet",
                 f"split={self.split!r} is for a torchvision or timm model; CAMNet adapts stages 3-4")


@dataclass
class MakeCamConfig(Section):
    """Plain multi-scale + flip CAMs in IRN's .npy format."""

    scales: Tuple[float, ...] = setting(CAM_SCALES, "> 0")
    # Run-wide in a pipeline: given once, at the top of PipelineConfig, and copied here (RUN_WIDE)
    num_workers: int = setting(0, ">= 0")
    device: str = "auto"
    precision: Precision = "float32"  # float32 (no TF32) | tf32 | bf16 (autocast; the maps are float32)
    channels_last: bool = False
    cudnn_benchmark: bool = False

    def check_rules(self) -> None:
        _scales("scales", self.scales)


@dataclass
class EvalSeedConfig(Section):
    """Threshold sweep of the seed evaluation (the authors sweep 0.20..0.49)."""

    threshold_start: float = setting(0.20, "[0, 1]")
    threshold_stop: float = setting(0.49, "[0, 1]")  # inclusive
    threshold_step: float = setting(0.01, "(0, 1]")

    def check_rules(self) -> None:
        _require(self.threshold_start <= self.threshold_stop,
                 f"threshold_start {self.threshold_start} is above threshold_stop {self.threshold_stop}")


@dataclass
class CRFConfig(Section):
    """Dense CRF on seeds (the settings of IRN's released code)."""

    # Background threshold; None = the best one of eval_seed
    threshold: Optional[float] = setting(None, "[0, 1]")
    gt_prob: float = setting(0.7, "(0, 1)")
    gaussian_sxy: float = setting(3.0, "> 0")
    gaussian_compat: float = setting(3.0, ">= 0")
    bilateral_sxy: float = setting(50.0, "> 0")
    bilateral_srgb: float = setting(5.0, "> 0")
    bilateral_compat: float = setting(10.0, ">= 0")
    iterations: int = setting(10, ">= 0")


RIBLoss = Literal["rib", "bce_sigmoid", "bce_tanh", "bce_softsign"]
RIB_LOSSES = typing.get_args(RIBLoss)


def _check_graphs(cfg) -> None:
    _require(cfg.cuda_graphs or not cfg.cuda_graph_targets,
             "cuda_graph_targets captures the targets' passes beside the other images' graph: "
             "it needs cuda_graphs on")


@dataclass
class RIBSpeedConfig(Section):
    """RIB's speed settings (benchmarks/RESULTS.md): none changes the method, precision aside,
    which changes the maps' rounding (the rib stage's provenance compares it, not the others). In
    a pipeline they are its ``rib_speed`` section, copied into RIBConfig's fields of the same names
    (PipelineConfig.MIRRORED), which the rib stage and a caller of its Python API read."""

    # G: images adapted at once, each with its own weights; 0 = auto
    group_size: int = setting(1, ">= 0")
    head_batching: Literal["loop", "vmap"] = "loop"  # the group's other-image pass, per image or vmapped
    # float32 (no TF32) | tf32 (TF32 convolutions and matrix products on Ampere+) | bf16 (autocast;
    # maps and weights stay float32): rib_ext.precision
    precision: Precision = "float32"
    channels_last: bool = False  # NHWC convolutions (pays on GPUs with bf16)
    cudnn_benchmark: bool = False  # let cuDNN time its algorithms per shape
    # Stages 1-2 with each fixed BN folded into its convolution: fewer kernels, but float rounding
    # differs (~1e-7), so off by default, keeping the authors' maps bit for bit.
    fold_stem: bool = False
    # the SGD update as torch._foreach_* over the group's weights (CUDA; the CPU's per-parameter
    # update keeps each parameter in cache and is faster there, same bits)
    foreach_update: bool = True
    # group_size=0 (CUDA): the largest G whose step, measured on the largest target, fits the
    # device's free memory (less a tenth); a positive value caps that budget, in GiB.
    group_memory_gb: float = setting(0.0, ">= 0")
    # Decoded other images kept in (pinned) host memory, LRU beyond
    image_cache_mb: int = setting(4096, ">= 0")
    prefetch: Literal["auto", "on", "off"] = "auto"  # build the next step's other images in a thread
    # CUDA: the other images' pass and loss, forward and backward (fixed shapes), replayed from a
    # CUDA graph per group size G, captured at a group's first full step; the group's weights in
    # slots that one kernel steps (learning rates on the device). Off until measured on a GPU;
    # ignored (with a warning) on the CPU.
    cuda_graphs: bool = False
    # With cuda_graphs: each target's passes (every scale, forward and backward) captured too,
    # once per image (one warm-up pass and two host waits) and replayed for its steps. Pays only
    # where launching the head's kernels costs more than that per image; off until measured.
    cuda_graph_targets: bool = False

    def check_rules(self) -> None:
        _check_graphs(self)


def _speed(name: str) -> Any:
    """RIBConfig's field ``name``: RIBSpeedConfig's default and range (declared there, once)."""
    f = next(f for f in dataclasses.fields(RIBSpeedConfig) if f.name == name)
    return dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata)


@dataclass
class RIBConfig(Section):
    """Per-image adaptation (RIB). Defaults: the paper's VOC settings with the authors' released
    behaviour (``behaviour="authors"``); :meth:`preset` gives ``paper`` and the COCO numbers.

    ``authors`` (the published figures came from it): GNDRP divides by H*W and keeps ``< tau``,
    the loss is -sum(t*y) unclipped, adaptation stops once |sum of the target rows' labelled
    logits| > margin, or when the scale-1.0 map "explodes" (from step 1 on, the union over the
    image's classes of max-normalised map > explosion_threshold covers more than explosion_ratio of
    the locations). ``paper``: -t*min(m, y) per row, GNDRP divides by the kept count (<= tau), no
    early stops, the map sums K+1 maps (theta_0..theta_K: ``final_map``) and a step draws B-1 = 19
    other images (the paper's B = 20 counts the target; an explicit ``num_others`` is the count
    of others as given).

    A present class whose map is never positive: ``authors`` divides by the max unguarded, as
    the authors' code does (max < 0: nothing kept, logit 0, no gradient; max == 0: the zero
    locations dropped); ``paper`` average-pools such a plane (csrc/gndrp.h).
    COCO: ``authors`` reproduces the authors' GNDRP loop over the first 20 classes only
    (``coco_first20_bug``: classes 20..79 average-pooled); ``paper`` normalises all 80.
    """

    # Earlier names of fields, still read from config files (and accepted as flags).
    OLD_NAMES: ClassVar[Dict[str, str]] = {"gndrp_mode": "gndrp_behaviour"}

    behaviour: Behaviour = "authors"  # set by preset(behaviour=...), recorded: authors | paper
    steps: int = setting(10, ">= 1")  # K
    # Lambda, of the backbone (stages 3-4); the classifier gets lr * classifier_lr_mult
    lr: float = setting(8e-6, "> 0")
    classifier_lr_mult: float = setting(10.0, "> 0")
    weight_decay: float = setting(1e-4, ">= 0")
    authors_momentum: bool = True  # SGD momentum = weight_decay, the authors' optimizer quirk
    lr_power: float = setting(0.9, ">= 0")  # lr * (1 - step / steps) ** lr_power
    num_others: int = setting(20, ">= 1")  # B
    margin: float = setting(600.0, "> 0")  # m
    tau: float = setting(0.4, "(0, 1]")
    pooling: Literal["gndrp", "gap"] = "gndrp"
    gndrp_behaviour: Behaviour = "authors"  # authors (sum / HW, < tau) | paper (sum / kept, <= tau)
    loss: RIBLoss = "rib"  # the paper's ablation: BCE with a sigmoid, tanh or softsign
    clip_loss: bool = False  # paper: -t * min(m, y); authors: -t * y
    stop_on_margin: bool = True
    stop_on_explosion: bool = True
    # After the last update, add the map of the final weights too: the paper's M sums the maps of
    # theta_0..theta_K (K+1 maps); the authors' code takes each map before its step's update, so
    # theta_K's is never added. On in the paper behaviour.
    final_map: bool = False
    explosion_threshold: float = setting(0.3, "[0, 1]")
    explosion_ratio: float = setting(0.7, "[0, 1]")
    # Per step, the probability that the other images come from the pool sharing no class with the
    # target (else from all other images). Ours: the authors' p_disjoint < 1 branch is dead code
    # that always draws from the disjoint pool (rib_ext.rib.sampling.OtherDraws).
    disjoint_prob: float = setting(1.0, "[0, 1]")
    # Map scales; the first must be 1.0 (explosion check)
    scales: Tuple[float, ...] = setting(CAM_SCALES, "> 0")
    # Target scales that feed the loss (not 0.5)
    loss_scales: Tuple[float, ...] = setting((1.0, 1.5, 2.0), "> 0")
    other_resize_long: Tuple[int, int] = setting((320, 640), ">= 1")
    other_crop: int = setting(512, ">= 1")
    # GNDRP normalises only classes 0..19, the rest are average-pooled: the authors' GNDRP loops
    # over range(20) also on COCO, and that produced the published COCO figures. On by preset("coco",
    # behaviour="authors"); the paper behaviour normalises all 80 classes.
    coco_first20_bug: bool = False
    # -- speed settings: RIBSpeedConfig's (defaults, ranges and what each does are stated there;
    # a pipeline's rib_speed section sets them)
    group_size: int = _speed("group_size")
    head_batching: Literal["loop", "vmap"] = _speed("head_batching")
    precision: Precision = _speed("precision")
    channels_last: bool = _speed("channels_last")
    cudnn_benchmark: bool = _speed("cudnn_benchmark")
    fold_stem: bool = _speed("fold_stem")
    foreach_update: bool = _speed("foreach_update")
    group_memory_gb: float = _speed("group_memory_gb")
    image_cache_mb: int = _speed("image_cache_mb")
    prefetch: Literal["auto", "on", "off"] = _speed("prefetch")
    cuda_graphs: bool = _speed("cuda_graphs")
    cuda_graph_targets: bool = _speed("cuda_graph_targets")
    # Run-wide in a pipeline: given once, at the top of PipelineConfig, and copied here (RUN_WIDE)
    seed: int = setting(0, "[0, 4294967295]")
    device: str = "auto"

    def check_rules(self) -> None:
        _check_graphs(self)
        _scales("scales", self.scales)
        _require(any(s in self.scales for s in self.loss_scales),
                 f"no loss scale {tuple(self.loss_scales)} is among the scales {tuple(self.scales)}")
        lo, hi = self.other_resize_long
        _require(lo <= hi, f"other_resize_long must be (lo, hi) with lo <= hi, got {self.other_resize_long}")

    @classmethod
    def preset(cls, dataset: str = "voc", behaviour: str = "authors", **overrides: Any) -> "RIBConfig":
        """The authors' (``authors``) or the paper's (``paper``) behaviour with VOC or COCO numbers
        (rib_ext.presets.rib), with keyword overrides."""
        if behaviour not in typing.get_args(Behaviour):
            raise ConfigError(f"RIB behaviour must be 'authors' or 'paper', got {behaviour!r}")
        return cls(**{**presets.rib(dataset, behaviour, num_others=cls.num_others), **overrides})


# What a stage does when an image has no input file: stop with a list, or skip with a warning.


# ---- IRN refinement (ir_label, train_irn, make_sem_seg, eval_mask), as IRN's released code does it

@dataclass
class IRNConfig(Section):
    """Settings of the ir_label, train_irn, make_sem_seg, eval_mask and saliency stages."""

    # The fields that shape ir_label's and make_sem_seg's outputs (train_irn's are the rest).
    IR_LABEL_FIELDS: ClassVar[tuple] = ("conf_fg", "conf_bg", "crf")
    SEM_SEG_FIELDS: ClassVar[tuple] = ("rw_radius", "beta", "exp_times", "map_power", "sem_seg_bg_thres",
                                       "saliency_threshold")

    # -- confident labels (ir_label): fg where a map > conf_fg, bg where every map <= conf_bg
    conf_fg: float = setting(0.30, "[0, 1]")
    conf_bg: float = setting(0.05, "[0, 1]")
    crf: CRFConfig = field(default_factory=CRFConfig)
    # An image without its input file (maps, labels, masks): False lists them and stops, True
    # warns (listing them) and goes on without them. Run-wide in a pipeline (RUN_WIDE).
    allow_missing: bool = False

    # -- the inter-pixel relation network (train_irn)
    backbone: CamBackbone = "resnet50"
    # A torchvision ImageNet checkpoint (what IRN starts from) or a rib_ext CAM-network
    # checkpoint (useful where no ImageNet weights exist, e.g. the demo).
    weights: Optional[str] = None
    random_init: bool = False  # smoke tests only
    crop_size: int = setting(512, ">= 4")
    batch_size: int = setting(32, ">= 1")
    epochs: int = setting(3, ">= 1")
    lr: float = setting(0.1, "> 0")  # the boundary branch's
    # The displacement branch trains at 10x (IRN)
    displacement_lr_mult: float = setting(10.0, "> 0")
    weight_decay: float = setting(1e-4, ">= 0")
    # IRN's random_scale draws uniformly from [lo, hi] (train_irn passes rescale=(0.5, 1.5)).
    scale_range: Tuple[float, float] = setting((0.5, 1.5), "> 0")
    path_radius: int = setting(10, ">= 1")  # pairs for the affinity loss, at stride 4
    # Running mean of the displacement field (IRN's BN momentum)
    mean_shift_momentum: float = setting(0.1, "[0, 1]")
    # Steps between resumable checkpoints (also at each epoch's end)
    checkpoint_every: int = setting(100, ">= 1")
    # Run-wide in a pipeline: given once, at the top of PipelineConfig, and copied here (RUN_WIDE)
    num_workers: int = setting(0, ">= 0")
    seed: int = setting(0, "[0, 4294967295]")

    # -- random walk (make_sem_seg)
    rw_radius: int = setting(5, ">= 1")
    beta: float = setting(10.0, "> 0")
    exp_times: int = setting(8, ">= 0")  # the walk takes 2 ** exp_times steps
    map_power: float = setting(1.0, "> 0")  # RIB raises the stride-4 maps to 1.3 before the walk
    sem_seg_bg_thres: float = setting(0.25, "[0, 1]")  # RIB: 0.27 on VOC, 0.22 on COCO
    # Pad the image with zeros (right and bottom, after normalisation) to this size before the
    # boundary network, then crop the map back: IRN's and RIB's VOC inference do, so GroupNorm's
    # statistics include the padding. None runs the image unpadded (RIB's COCO path). Sides
    # already longer are left as they are.
    boundary_pad_to: Optional[int] = setting(512, ">= 1")

    # -- RIB-Sal: saliency PNGs 0..255, salient where value > saliency_threshold
    saliency_threshold: int = setting(127, "[0, 255]")

    device: str = "auto"  # run-wide in a pipeline (RUN_WIDE)

    @classmethod
    def preset(cls, dataset: str = "voc", behaviour: str = "rib", **overrides: Any) -> "IRNConfig":
        """The thresholds of ``"rib"`` (RIB's code), ``"irn"`` (IRN's code) or ``"rib_coco"``, with
        keyword overrides. ``dataset="coco"`` selects the COCO variant: ``"rib"`` becomes
        ``"rib_coco"`` (background threshold 0.22, no padding); ``"irn"`` (no COCO script of its
        own) runs unpadded."""
        if behaviour not in presets.IRN_PRESETS:
            raise ConfigError(f"unknown IRN behaviour {behaviour!r}; expected one of {sorted(presets.IRN_PRESETS)}")
        return cls(**{**presets.irn(dataset, behaviour), **overrides})

    @property
    def walk_steps(self) -> int:
        return 2 ** self.exp_times

    def check_rules(self) -> None:
        if not self.conf_bg <= self.conf_fg:
            raise ConfigError(f"need conf_bg <= conf_fg, got conf_bg={self.conf_bg}, "
                             f"conf_fg={self.conf_fg}")
        if self.crop_size % 4:
            raise ConfigError(f"crop_size must be a multiple of 4 (the label grid is at stride 4), "
                             f"got {self.crop_size}")
        lo, hi = self.scale_range
        if not lo <= hi:
            raise ConfigError(f"scale_range must be (lo, hi) with lo <= hi, got {self.scale_range}")

    def as_dict(self) -> Dict[str, Any]:
        return plain_dict(self)


# ---- the final segmentation network (segment stage)

SegmentBackbone = Literal["resnet18", "resnet34", "resnet50", "resnet101"]
SEGMENT_BACKBONES = typing.get_args(SegmentBackbone)


def deeplab_crf() -> CRFConfig:
    """DeepLab-v2's CRF (deeplab-pytorch's configs/voc12.yaml: POS_W 3, POS_XY_STD 1, BI_W 4,
    BI_XY_STD 67, BI_RGB_STD 3, 10 iterations). ``gt_prob`` and ``threshold`` are unused: the unary
    comes from the network's softmax, not from hard labels."""
    return CRFConfig(gaussian_sxy=1.0, gaussian_compat=3.0, bilateral_sxy=67.0,
                     bilateral_srgb=3.0, bilateral_compat=4.0, iterations=10)


@dataclass
class SegmentConfig(Section):
    """Settings of :func:`rib_ext.segment.segment_stage` (training, re-training, inference)."""

    # -- network
    backbone: SegmentBackbone = "resnet101"  # resnet18/34/50 for CPU runs
    weights: Optional[str] = None  # torchvision ImageNet checkpoint of the backbone (no download)
    random_init: bool = False  # smoke tests only; warns
    aspp_dilations: Tuple[int, ...] = setting((6, 12, 18, 24), ">= 1")

    # -- training
    iterations: int = setting(30000, ">= 1")
    batch_size: int = setting(10, ">= 1")
    lr: float = setting(2e-4, "> 0")  # the backbone's; the ASPP head gets lr * head_lr_mult
    head_lr_mult: float = setting(10.0, "> 0")
    # DeepLab's caffe convention: biases at 2x, no weight decay
    head_bias_lr_mult: float = setting(20.0, "> 0")
    lr_power: float = setting(0.9, ">= 0")
    momentum: float = setting(0.9, "[0, 1)")
    weight_decay: float = setting(5e-4, ">= 0")
    crop_size: int = setting(321, ">= 1")
    scale_range: Tuple[float, float] = setting((0.5, 1.5), "> 0")  # random rescale, drawn uniformly
    hflip: bool = True
    amp: bool = True  # bf16 autocast, on CUDA only (CPU runs stay float32)
    checkpoint_every: int = setting(1000, ">= 1")  # iterations between resumable checkpoints
    tensorboard: bool = True  # also log to TensorBoard when it is installed
    # Run-wide in a pipeline: given once, at the top of PipelineConfig, and copied here (RUN_WIDE)
    num_workers: int = setting(0, ">= 0")
    seed: int = setting(0, "[0, 4294967295]")

    # -- re-training (paper appendix): train on confident random-walk labels, fill the ignored
    # pixels with that network's predictions, train again on the filled labels
    retrain: bool = True
    # Random-walk score above this: foreground (the best class)
    retrain_fg: float = setting(0.3, "[0, 1]")
    # Every score below this: background; in between: ignored
    retrain_bg: float = setting(0.2, "[0, 1]")

    # -- inference
    # Each with its horizontal flip; softmax averaged
    scales: Tuple[float, ...] = setting((0.5, 0.75, 1.0), "> 0")
    flip: bool = True
    use_crf: bool = True
    crf: CRFConfig = field(default_factory=deeplab_crf)

    # An image without its label / score file: skip it (warned) or stop; with the device, run-wide
    # in a pipeline (RUN_WIDE)
    allow_missing: bool = False
    device: str = "auto"

    @classmethod
    def preset(cls, dataset: str = "voc", **overrides: Any) -> "SegmentConfig":
        """The paper's ``"voc"`` or ``"coco"`` numbers, with keyword overrides."""
        if dataset not in presets.SEGMENT_PRESETS:
            raise ConfigError(f"unknown segmentation preset {dataset!r}; expected one of "
                              f"{sorted(presets.SEGMENT_PRESETS)}")
        return cls(**{**presets.SEGMENT_PRESETS[dataset], **overrides})

    def check_rules(self) -> None:
        if not self.aspp_dilations:
            raise ConfigError("aspp_dilations must not be empty")
        lo, hi = self.scale_range
        if not lo <= hi:
            raise ConfigError(f"scale_range must be (lo, hi) with lo <= hi, got {self.scale_range}")
        if not self.retrain_bg <= self.retrain_fg:
            raise ConfigError(f"need retrain_bg <= retrain_fg, got retrain_bg="
                             f"{self.retrain_bg}, retrain_fg={self.retrain_fg}")
        if not self.scales:
            raise ConfigError("scales must not be empty")

    def as_dict(self) -> Dict[str, Any]:
        return plain_dict(self)


PIPELINE_PRESETS = typing.get_args(DatasetName)


@dataclass
class VisualizeConfig(Section):
    """Pictures of a run (the ``visualize`` stage)."""

    count: int = setting(12, ">= 1")  # image panels, evenly spread over the evaluated list
    # Of those, images re-adapted for the per-step montage of RIB's map
    montage_count: int = setting(3, ">= 0")

    def check_rules(self) -> None:
        _require(self.montage_count <= self.count,
                 f"montage_count must lie in 0..count ({self.count}), got {self.montage_count}")


# The run-wide settings: given once, at the top of PipelineConfig (its run section), and copied
# into every section that keeps a field of its own for one (a stage's Python API takes its section
# alone: RIBConfig(device="cpu")). Setting -> the sections holding a copy.
RUN_WIDE: Dict[str, Tuple[str, ...]] = {
    "device": ("train_cam", "make_cam", "rib", "irn", "segment"),
    "seed": ("train_cam", "rib", "irn", "segment"),
    "num_workers": ("train_cam", "make_cam", "irn", "segment"),
    "allow_missing": ("irn", "segment"),
}


@dataclass
class PipelineConfig:
    """The whole run: data, output, and every stage's settings (one tree, validated at once).

    The top level is the run section: besides the data and the output, the settings every stage
    shares (RUN_WIDE), given once. RIB's speed settings are a section of their own, ``rib_speed``.
    The fields RIBConfig and the other sections keep for these are copies (MIRRORED): set from
    where the setting is given whenever the tree is built or validated, never on their own.
    """

    # The sections' fields that copy a setting given once elsewhere in the tree: "section.field"
    # -> that setting's key. No flag of their own, not written to config.json.
    MIRRORED: ClassVar[Dict[str, str]] = {
        **{f"{section}.{name}": name for name, sections in RUN_WIDE.items() for section in sections},
        **{f"rib.{f.name}": f"rib_speed.{f.name}" for f in dataclasses.fields(RIBSpeedConfig)},
    }

    dataset: DatasetName = "demo"
    root: Optional[str] = None
    out_dir: str = "rib_ext_out"
    train_list: Optional[str] = None  # None: VOC train_aug when its list exists, else train
    eval_list: Optional[str] = None
    val_list: Optional[str] = None  # the segment stage's evaluation list
    saliency_dir: Optional[str] = None  # RIB-Sal: saliency PNGs that refine the pseudo masks
    # An image without its inputs (maps, labels, masks): skip it, with a warning naming it, instead
    # of stopping (every stage)
    allow_missing: bool = False
    # IRN's thresholds from each map set's best seed threshold: confident labels at best +- 0.1,
    # the random walk's background at best
    irn_auto_thresholds: bool = False
    preset: Optional[DatasetName] = None  # the settings the stage configs started from
    cam_checkpoint: Optional[str] = None  # a trained classifier to use instead of train_cam's
    device: str = "auto"  # every stage's: auto (CUDA when present), cpu, cuda, cuda:1 ...
    seed: int = setting(0, "[0, 4294967295]")  # the random seed of train_cam, rib, train_irn and segment
    # Data-loading worker processes per rank (train_cam, make_cam, train_irn, segment)
    num_workers: int = setting(0, ">= 0")
    # Worker processes per rank of the CPU-bound stages (the dense CRF of crf and ir_label); None:
    # the cores available to the process, shared among the ranks of the machine; 0 or 1: no pool.
    cpu_workers: Optional[int] = setting(None, ">= 0")
    # The largest image (H*W pixels) a dataset accepts when opened (None: no limit); the stages are
    # sized for VOC's and COCO's (at most 0.4 MP). Same default as rib_ext.data's MAX_PIXELS.
    max_pixels: Optional[int] = setting(2_000_000, ">= 1")
    # torchrun: the process group's timeout (seconds) for one collective (DDP's gradient
    # all-reduce...); waits for another rank's work are not bounded by it (rib_ext.distributed).
    dist_timeout_s: float = setting(7200.0, "> 0")
    demo: DemoDataConfig = field(default_factory=DemoDataConfig)
    train_cam: TrainCamConfig = field(default_factory=TrainCamConfig)
    make_cam: MakeCamConfig = field(default_factory=MakeCamConfig)
    eval_seed: EvalSeedConfig = field(default_factory=EvalSeedConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    rib: RIBConfig = field(default_factory=RIBConfig)
    rib_speed: RIBSpeedConfig = field(default_factory=RIBSpeedConfig)
    irn: IRNConfig = field(default_factory=IRNConfig.preset)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    visualize: VisualizeConfig = field(default_factory=VisualizeConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field of the tree (also after in-place edits, which skip __post_init__),
        the copies (MIRRORED) taken afresh from the settings they copy."""
        # What is copied is checked where it is set first, so that an error names that key.
        check_fields(self, skip={path.split(".")[0] for path in self.MIRRORED})
        self._copy_mirrored()
        check_fields(self)

    def _copy_mirrored(self) -> None:
        changes: Dict[str, Dict[str, Any]] = {}
        copied: Dict[str, Dict[str, Any]] = {}
        for path, source in self.MIRRORED.items():
            section, name = path.split(".")
            obj = getattr(self, section)
            value, copy = _get(self, source), getattr(obj, name)
            copied.setdefault(section, {})[name] = value
            if _same(copy, value):
                continue
            # A copy is overwritten only where nobody set it: the value this tree copied into it
            # before (the run value changed since), or the field's default in a section made
            # without it. Anything else was meant, and would be silently lost.
            before = getattr(obj, "_copied", {}).get(name, dataclasses.MISSING)
            unset = _same(copy, before) if before is not dataclasses.MISSING else \
                _same(copy, _field_default(type(obj), name))
            if not unset:
                raise ConfigError(f"{path} {shown(copy)} is a copy of {source} {shown(value)}, "
                                  f"which the tree sets from there: set {source} instead")
            changes.setdefault(section, {})[name] = value
        for section, values in copied.items():
            obj = getattr(self, section)
            if section in changes:
                # A new section object: another tree holding this one (dataclasses.replace copies
                # the references) keeps its own values.
                try:
                    obj = dataclasses.replace(obj, **changes[section])
                except ConfigError as err:
                    raise err.within(section) from err
                setattr(self, section, obj)
            object.__setattr__(obj, "_copied", values)

    @classmethod
    def upgrade_plain(cls, values: Dict[str, Any], where: str = "") -> Dict[str, Any]:
        """A config file's values with the copies that earlier versions wrote inside the sections
        (``rib.seed``, ``irn.allow_missing``, ``rib.group_size``...) taken to the one key that
        sets them now (``seed``, ``allow_missing``, ``rib_speed.group_size``). A copy that differs
        from another, or from the value given at that key, is a ConfigError naming both keys."""
        values = dict(values)
        found: Dict[str, Tuple[str, Any]] = {}  # setting -> (the key it was read from, its value)
        for path, source in cls.MIRRORED.items():
            section, name = path.split(".")
            if not isinstance(values.get(section), dict) or name not in values[section]:
                continue
            f = next(f for f in dataclasses.fields(_hint(cls, section)) if f.name == name)
            try:
                value = check_value(f, _hint(cls, path), values[section][name])
            except ConfigError as err:
                raise err.within(_join(where, section)) from err
            values[section] = {k: v for k, v in values[section].items() if k != name}
            if source not in found:
                given = _plain_get(values, source)
                if given is not dataclasses.MISSING:
                    found[source] = (source, coerce(_hint(cls, source), given, _join(where, source)))
            if source not in found:
                found[source] = (path, value)
                continue
            key, first = found[source]
            if type(value) is not type(first) or value != first:
                *outer, setting_name = source.split(".")
                why = (f"{setting_name} is a setting of the {outer[0]} section now" if outer else
                       f"the {source} is one run-wide setting now")
                raise ConfigError(f"{_join(where, path)} {shown(value)} differs from "
                                  f"{_join(where, key)} {shown(first)}: {why}")
        for source, (key, value) in found.items():
            if key != source:
                _plain_set(values, source, value)
        return values


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b


def _field_default(cls, name: str):
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _hint(cls, path: str):
    """The type of the field at dotted ``path`` under the dataclass ``cls``."""
    *sections, name = path.split(".")
    for part in sections:
        cls = typing.get_type_hints(cls)[part]
    return typing.get_type_hints(cls)[name]


def _plain_get(values: Dict[str, Any], path: str):
    """The value at dotted ``path`` of nested dicts, or MISSING."""
    for part in path.split("."):
        if not isinstance(values, dict) or part not in values:
            return dataclasses.MISSING
        values = values[part]
    return values


def _plain_set(values: Dict[str, Any], path: str, value: Any) -> None:
    """``values`` (nested dicts, copied where changed) with ``value`` at dotted ``path``; a part
    that is not a mapping is left for the loader to refuse."""
    *sections, name = path.split(".")
    node = values
    for part in sections:
        inner = node.get(part, {})
        if not isinstance(inner, dict):
            return
        node[part] = node = dict(inner)
    node[name] = value


def from_plain(cls, values: Any, where: str = ""):
    """A dataclass (nested ones too) from plain values such as :func:`plain_dict` gives (a JSON
    file). Every value must have its field's type (lists stand for tuples, integers for floats);
    an unknown name, a wrong type or a value out of range is a :class:`ConfigError` naming the
    dotted key (``where`` is the enclosing one) and, for an unknown name, the nearest known one."""
    if not isinstance(values, dict):
        raise ConfigError(f"expected a mapping of {cls.__name__} settings, got {shown(values)}",
                          where or None)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if hasattr(cls, "upgrade_plain"):  # a layout of earlier versions
        values = cls.upgrade_plain(values, where)
    for old, new in getattr(cls, "OLD_NAMES", {}).items():
        if old in values:
            if new in values:
                raise ConfigError(f"given twice, also under its earlier name {old}",
                                  _join(where, new))
            values = {new if k == old else k: v for k, v in values.items()}
    for name in values:
        if name not in fields:
            raise ConfigError(f"unknown setting{nearest(name, fields)}", _join(where, name))
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        key = _join(where, name)
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = from_plain(hints[name], value, key)
        else:
            kwargs[name] = coerce(hints[name], value, key)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise err.within(where) from err
    except ValueError as err:  # IRN / segment relations raise plain ValueErrors
        raise ConfigError(str(err)).within(where) from err


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
