"""The pipeline's stages, in order: the one list every entry point reads.

A stage is the module ``rib_ext/stages/<name>.py`` (``UPSTREAM``, ``settings(cfg)``,
``run(ctx, cfg) -> dict``) plus one line here; tests/test_stages.py and tests/test_layers.py check
both.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import List

from rib_ext.layout import MAP_SETS  # noqa: F401  (re-exported: the stages read it here)

REGISTRY = {
    "train_cam": "train the multi-label classifier (IRN's recipe)",
    "make_cam": "plain multi-scale + flip CAMs in IRN's .npy format (the baseline)",
    "rib": "RIB: per-image adaptation of the classifier, accumulated maps in IRN's format",
    "eval_seed": "threshold sweep of every map set made (cam, rib): best threshold, mIoU, P/R/F1",
    "crf": "dense-CRF refinement of every map set's seeds at its best threshold, evaluated",
    "ir_label": "IRN: confident fg/bg labels from each map set (two thresholds + CRF)",
    "train_irn": "IRN: the inter-pixel relation network on the confident labels",
    "make_sem_seg": "IRN: random walk of the maps over the learnt affinities -> pseudo masks "
                    "(then, with --saliency-dir, the RIB-Sal saliency refinement)",
    "eval_mask": "mIoU of the pseudo masks",
    "visualize": "pictures: maps, seeds and masks per image, RIB's map per step, logit curves",
    "segment": "DeepLab-v2 trained on the pseudo masks (of rib, else cam), evaluated on --val-list",
}
STAGES = tuple(REGISTRY)
# The default run stops at the pseudo masks: the segmentation network is a long training of its own.
DEFAULT_STAGES = STAGES[:-1]


def stage_module(name: str) -> ModuleType:
    if name not in REGISTRY:
        raise KeyError(f"unknown stage {name!r}; the stages are {', '.join(STAGES)}")
    return importlib.import_module(f"rib_ext.stages.{name}")


def parse_stages(text: str) -> List[str]:
    """The registered stages named in a comma-separated list, in pipeline order."""
    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    return [s for s in STAGES if s in stages]
