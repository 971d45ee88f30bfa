"""Every preset and every derived value of the config, in one place.

* The paper's and the authors' numbers per dataset and behaviour (:func:`rib`, :func:`irn`,
  :data:`SEGMENT_PRESETS`): the config sections' ``preset()`` start from them.
* The demo's settings, with the reason for each (:func:`demo`).
* What a section takes from a section built before it (:func:`follows`: IRN starts from the
  classifier's backbone).
* What a stage derives from another stage's result when ``irn_auto_thresholds`` is on
  (:func:`confident_thresholds`, :func:`walk_background`: from eval_seed's best threshold; each
  stage records the values it used in its provenance, and config.json says the rule is on).

The command line (rib_ext.stages.options) applies them in that order, then the flags given.
"""
from __future__ import annotations

from typing import Any, Dict

from rib_ext.layout import Layout

# ---------------------------------------------------------------------------------------- RIB


def rib(dataset: str = "voc", behaviour: str = "authors", num_others: int = 20) -> Dict[str, Any]:
    """RIBConfig's values for a dataset's numbers (``voc``: the field defaults; ``coco``) and
    behaviour (``authors``: the released code; ``paper``: the equations). ``num_others``: the
    VOC count of other images, which the paper's B counts the target among."""
    values: Dict[str, Any] = {}
    if dataset == "coco":
        values.update(lr=5e-6, num_others=15, tau=0.5, margin=1000.0, explosion_ratio=0.8,
                      coco_first20_bug=behaviour == "authors")
    if behaviour == "paper":
        # The paper's B (20 on VOC) counts the target among the step's images; the authors'
        # code draws B images besides it.
        values.update(behaviour="paper", gndrp_behaviour="paper", clip_loss=True, stop_on_margin=False,
                      stop_on_explosion=False, final_map=True,
                      num_others=values.get("num_others", num_others) - 1)
    return values


# ---------------------------------------------------------------------- IRN and the segmenter

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


def irn(dataset: str = "voc", behaviour: str = "rib") -> Dict[str, Any]:
    """IRNConfig's thresholds of ``"rib"`` (RIB's code), ``"irn"`` (IRN's code) or ``"rib_coco"``;
    ``dataset="coco"`` selects the COCO variant: ``"rib"`` becomes ``"rib_coco"`` (background
    threshold 0.22, no padding); ``"irn"`` (no COCO script of its own) runs unpadded."""
    values = dict(IRN_PRESETS[behaviour])
    if dataset == "coco":
        values = dict(IRN_PRESETS.get(f"{behaviour}_coco", {**values, "boundary_pad_to": None}))
    return values


# What differs between the datasets; everything else is shared.
SEGMENT_PRESETS: Dict[str, Dict[str, Any]] = {
    "voc": {"iterations": 30000, "lr": 2e-4, "crop_size": 321, "retrain": True},
    "coco": {"iterations": 100000, "lr": 2.5e-4, "crop_size": 481, "retrain": False},
}


# --------------------------------------------------------------------------------- the demo

# The backbone the demo's classifier and IRN start from: resnet_tiny pretrained on the demo world
# (rib_ext.data.demo_world; python -m rib_ext.cam.pretrain), shipped in the package.
DEMO_WEIGHTS = "rib_ext:demo_world"


def demo(image_size: int = 128, from_scratch: bool = False) -> dict:
    """The demo run's settings, per config section (``PipelineConfig`` field -> field overrides).

    Chosen on training images (a tenth of the training list, ``tune``), reported on the held-out
    split; benchmarks/RESULTS.md has the trials. Why each one:

    * train_cam: as a real classifier is made, IRN's recipe from pretrained weights: the narrow
      ResNet (``resnet_tiny``, output stride 8: at 128 pixels an OS-16 CAM is 8x8) starts from
      :data:`DEMO_WEIGHTS`, the demo's "ImageNet" backbone; its stem is frozen, its batch norms
      fixed, stages 3-4 train at a tenth of the classifier's rate (IRN's lr 0.1 / 0.01, poly decay,
      the authors' momentum); more epochs than VOC's 5, the demo having 240 images.
      ``from_scratch=True`` (``--train_cam.from_scratch true``) is the earlier recipe instead:
      random weights, every stage trained with batch statistics, ordinary momentum, 12 epochs,
      and RIB's settings chosen for it (lr 2e-4, m 150).
    * rib: five steps (``K``) of ``lr`` 4e-5 with the margin ``m`` 600, chosen on the 24 tune
      images with the classifier of seed 0 (CAM seed 40.4). Ten steps: 4e-4/300 35.6, 2e-4/150
      40.3, 1e-4/300 40.3, 5e-5/600 40.0, 2e-5/600 40.8 (small steps, nearly all ten taken; the
      larger ones stop after 1.7 to 4.4 steps on average, the margin or the explosion check).
      Five steps: 1e-5 40.6, 2e-5 40.7, 4e-5 40.8: as good as ten, in half the time.
    * crf: IRN's own settings (bilateral 50 px, srgb 5, compat 10): on the demo's scenes they
      raise both seeds on the tune images; smaller kernels (10-20 px) and srgb 30 did worse.
    * eval_seed: the demo's maps peak higher than VOC's, so the sweep covers 0.05..0.95; IRN's
      thresholds follow each map set's best seed threshold: confident labels at best +- 0.1,
      the random walk's background at best (a fixed 0.27 cut RIB's broader walked maps too low:
      on the tune images RIB's masks 33.4 at 0.27, 35.8 at its best threshold; CAM's 35.2, 34.9).
    * irn: a crop of the image size, batch 16, 15 epochs (60 images give few steps otherwise);
      its backbone starts from the same pretrained weights (from scratch: from the trained
      classifier's backbone, there being nothing else).
    """
    s = int(image_size)
    if from_scratch:
        train_cam = dict(backbone="resnet_tiny", weights=None, random_init=True, from_scratch=True, epochs=12,
                         batch_size=16, crop_size=s, resize_long=(int(s * 0.75), int(s * 1.25)),
                         lr=0.1, classifier_lr_mult=1.0, authors_momentum=False, strides=(2, 2, 1, 1))
        rib = dict(lr=2e-4, margin=150.0)
    else:
        train_cam = dict(backbone="resnet_tiny", weights=DEMO_WEIGHTS, random_init=False, from_scratch=False,
                         epochs=10, batch_size=16, crop_size=s, resize_long=(int(s * 0.75), int(s * 1.25)),
                         lr=0.1, classifier_lr_mult=10.0, authors_momentum=True, strides=(2, 2, 1, 1))
        rib = dict(steps=5, lr=4e-5, margin=600.0)
    return {
        "train_cam": train_cam,
        # Fewer, smaller other images (B 8 at the image size) keep the CPU run short.
        "rib": dict(rib, num_others=8, other_resize_long=(int(s * 0.75), int(s * 1.25)), other_crop=s),
        "crf": {},
        "eval_seed": dict(threshold_start=0.05, threshold_stop=0.95, threshold_step=0.01),
        # boundary_pad_to: IRN pads VOC images to its 512 crop before the boundary network; the
        # demo pads to its own crop (a no-op at 128 px) rather than spending 16x the work.
        "irn": dict(crop_size=s - s % 4, batch_size=16, epochs=15, boundary_pad_to=s - s % 4),
        # DeepLab from random weights, short: the demo shows the stage run, not a converged net.
        "segment": dict(backbone="resnet18", random_init=True, iterations=200, batch_size=8,
                        crop_size=s, lr=1e-2, retrain=False, use_crf=False),
        "pipeline": dict(eval_list="val", irn_auto_thresholds=True),
    }


# ------------------------------------------------------------------ values taken from another

def follows(name: str, built: Dict[str, Any], top: Dict[str, Any], is_demo: bool) -> Dict[str, Any]:
    """Starting values a section takes from sections built before it: IRN starts from the
    classifier's backbone (ImageNet weights, or the demo's pretrained backbone, when given; from
    scratch, the trained classifier's own backbone, there being no other weights to start from)."""
    if name != "irn":
        return {}
    train_cam = built["train_cam"]
    if train_cam.model != "camnet":
        # IRN's network is a ResNet of its own: it cannot start from a torchvision / timm
        # classifier's weights (--irn.weights gives it an ImageNet ResNet checkpoint).
        return dict(backbone=train_cam.backbone, random_init=is_demo or train_cam.random_init)
    if is_demo and train_cam.weights is None:
        out_dir = top.get("out_dir", "rib_ext_out")
        weights = top.get("cam_checkpoint") or str(Layout(out_dir).classifier)
        return dict(backbone=train_cam.backbone, weights=weights)
    return dict(backbone=train_cam.backbone, weights=train_cam.weights, random_init=train_cam.random_init)


def confident_thresholds(best: float) -> Dict[str, float]:
    """IRN's confident-label thresholds (ir_label) from a map set's best seed threshold."""
    return {"conf_fg": round(min(best + 0.1, 0.99), 2), "conf_bg": round(max(best - 0.1, 0.0), 2)}


def walk_background(best: float) -> Dict[str, float]:
    """The random walk's background threshold (make_sem_seg) from a map set's best seed
    threshold: the walk spreads the same max-normalised maps, so the level where background best
    met the seeds is where it starts (VOC's fixed 0.25 / 0.27 sit near VOC's best seed
    thresholds; the demo's maps peak higher)."""
    return {"sem_seg_bg_thres": round(float(best), 2)}
