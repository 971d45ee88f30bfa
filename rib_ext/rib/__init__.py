"""RIB: per-image adaptation of the classifier, batched through functional weight copies.

``adapt(model, images, pool, cfg)`` is the Python API; :func:`rib_ext.rib.run.adapt_dataset` (the
pipeline's ``rib`` stage) adds resume, records and distribution over ranks.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

from rib_ext.config import RIBConfig
from rib_ext.rib.engine import RIBEngine
from rib_ext.rib.head import CAMHead
from rib_ext.rib.sampling import OtherImages, image_generator
from rib_ext.rib.state import Result
from rib_ext.rib.stops import STOP_EXPLOSION, STOP_MARGIN, STOP_STEPS
from rib_ext.rib.targets import Target


def adapt(model, targets: Iterable[Target], pool: OtherImages, cfg: Optional[RIBConfig] = None,
          device: str | torch.device = "cpu",
          on_result: Optional[Callable[[Result], None]] = None) -> list[Result]:
    """Adapt each target image from the trained classifier ``model`` and return its maps
    (IRN's dict: keys, cam, high_res) and record (steps, stop reason, target logit sums)."""
    return RIBEngine(model, pool, cfg or RIBConfig(), device).run(targets, on_result)


__all__ = ["adapt", "CAMHead", "OtherImages", "Result", "RIBEngine", "Target", "image_generator",
           "STOP_EXPLOSION", "STOP_MARGIN", "STOP_STEPS"]
