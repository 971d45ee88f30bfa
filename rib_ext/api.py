"""The Python API: RIB on the classifier you already have, in the style of the CAM libraries::

    import rib_ext, timm
    model = timm.create_model("convnext_tiny", num_classes=20)   # your fine-tuned weights
    rib = rib_ext.RIB(model, cfg=rib_ext.RIBConfig.preset("voc"))
    maps = rib.maps(images, labels, others=(pool_images, pool_labels))
    cams = rib.cam(images, labels)                                # the plain CAMs, for comparison

``images`` are uint8 RGB arrays [H, W, 3] (numpy or tensors, any sizes), ``labels`` per-image
multi-label vectors [K] (or one [N, K] array). Each result is IRN's map dict as tensors on the
model's device: ``keys`` (the image's classes), ``cam`` [K', ceil(H/4), ceil(W/4)] and
``high_res`` [K', H, W], max-normalised per class.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from rib_ext.config import RIBConfig
from rib_ext.data.transforms import multiscale_flip_views
from rib_ext.models.adapters import adapt
from rib_ext.rib.engine import RIBEngine
from rib_ext.rib.sampling import OtherImages
from rib_ext.rib.targets import Target


def _image(img, i: int) -> np.ndarray:
    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"image {i}: expected an RGB array [H, W, 3], got shape {a.shape}"
                         + (" (channels first? pass it as [H, W, 3])" if a.ndim == 3 and a.shape[0] == 3 else ""))
    if a.dtype != np.uint8:
        raise ValueError(f"image {i}: expected uint8 values 0..255, got {a.dtype} (a float image "
                         f"in [0, 1]? pass (img * 255).round().astype(np.uint8))")
    return np.ascontiguousarray(a)


def _labels(labels, n: int, k: int) -> np.ndarray:
    a = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    a = a.reshape(n, -1) if a.size == n * k else a
    if a.shape != (n, k):
        raise ValueError(f"labels: expected {n} vectors of the model's {k} classes, got shape "
                         f"{np.asarray(labels).shape}")
    if not np.isin(a, (0, 1)).all():
        raise ValueError("labels must be 0/1 per class (multi-hot)")
    return a.astype(np.float32)


@dataclass
class _Images:
    """Images and labels in memory, as the other-image pool reads a dataset."""

    images: Sequence[np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> np.ndarray:
        return self.images[i]

    def label_matrix(self) -> np.ndarray:
        return self.labels


def _device_maps(maps: dict, device: torch.device) -> dict:
    return {k: torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v).to(device)
            for k, v in maps.items()}


class RIB:
    """RIB's per-image adaptation of ``model`` (any classifier :func:`rib_ext.models.adapt`
    accepts, or a CAMNet).

    Args:
        model: the trained classifier (left unchanged: RIB adapts copies of its weights).
        cfg: RIB's settings (default: the paper's VOC numbers, the authors' behaviour).
        split: the first adapted layer (default: the family's, see :mod:`rib_ext.models.adapters`).
        device: where to run (default: the model's).
    """

    def __init__(self, model, cfg: Optional[RIBConfig] = None, split: Optional[str] = None,
                 device: Optional[str | torch.device] = None):
        self.model = adapt(model, split=split)
        self.cfg = cfg if cfg is not None else RIBConfig()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device).eval()

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    def _targets(self, images, labels):
        imgs = [_image(img, i) for i, img in enumerate(images)]
        labs = _labels(labels, len(imgs), self.num_classes)
        empty = [i for i, lab in enumerate(labs) if not lab.any()]
        if empty:
            raise ValueError(f"images {empty} have no class in their labels: RIB adapts to an "
                             f"image's classes")
        return imgs, labs

    def cam(self, images, labels, scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0)) -> list:
        """The plain multi-scale + flip CAMs of each image, as IRN's map dicts on the device."""
        from rib_ext.cam.maps import image_maps

        imgs, labs = self._targets(images, labels)
        out = []
        for img, lab in zip(imgs, labs):
            views = multiscale_flip_views(img, scales)
            maps = image_maps(self.model, views, img.shape[:2], np.flatnonzero(lab))
            out.append(_device_maps(maps, self.device))
        return out

    def maps(self, images, labels, others, seed_offset: int = 0) -> list:
        """RIB's localization map of each image, as IRN's map dicts on the device.

        ``others``: the images each step draws besides the target (the classifier's training
        images), as ``(images, labels)`` or a dataset with ``image(i)`` and ``label_matrix()``.
        Image ``i`` draws with the seed ``cfg.seed`` and index ``seed_offset + i``, so a batch
        split in two gives the same maps as one call.
        """
        imgs, labs = self._targets(images, labels)
        if isinstance(others, tuple):
            pool_images = [_image(img, i) for i, img in enumerate(others[0])]
            others = _Images(pool_images, _labels(others[1], len(pool_images), self.num_classes))
        pool = OtherImages(others, self.device, self.cfg.other_resize_long, self.cfg.other_crop,
                           cache_bytes=self.cfg.image_cache_mb << 20)
        targets = [Target(seed_offset + i, str(seed_offset + i), img, lab)
                   for i, (img, lab) in enumerate(zip(imgs, labs))]
        results = {r.name: r for r in RIBEngine(self.model, pool, self.cfg, self.device).run(targets)}
        self.records = [results[t.name].record for t in targets]  # steps, stop reason per image
        return [_device_maps(results[t.name].maps, self.device) for t in targets]
