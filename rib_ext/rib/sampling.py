"""The B "other" images of each RIB step: who is drawn, and how they are augmented.

Both the engine and the slow reference loop draw through :class:`OtherImages`, so given the same
per-image generator they see the same crops. Decoded images are kept in a host-memory uint8 cache
(:mod:`rib_ext.rib.image_cache`, a byte budget) and augmented on the adaptation device: resize-long,
flip, normalise, crop/pad with 0, IRN's recipe.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rib_ext.config import IMAGENET_MEAN, IMAGENET_STD
from rib_ext.data.transforms import crop_boxes
from rib_ext.rib.image_cache import ImageCache


def image_generator(seed: int, index: int) -> np.random.Generator:
    """The generator of one target image: depends only on the run seed and the image's index in the
    full list, so an image gets the same draws alone, in a group, or on any rank."""
    return np.random.default_rng([int(seed), int(index)])


class OtherImages:
    """A pool of training images (the classifier's list) to draw each step's other images from.

    Args:
        dataset: images and labels (``image(i)``, ``label_matrix()``).
        device: where the decoded cache and the augmentation live.
        resize_long: (lo, hi) range of the long side; crop: output size (IRN: 320..640, 512).
    """

    def __init__(self, dataset, device: torch.device, resize_long: Sequence[int] = (320, 640),
                 crop: int = 512, cache_bytes: int = 4 << 30):
        self.dataset = dataset
        self.device = torch.device(device)
        self.labels = np.array(dataset.label_matrix(), dtype=np.float32)  # [N, K], built once, writable
        self.labels_t = torch.from_numpy(self.labels).to(self.device)
        self.resize_long = (int(resize_long[0]), int(resize_long[1]))
        self.crop = int(crop)
        # Decoded images in (pinned) host memory under a byte budget: a dataset's worth may not fit.
        self.cache = ImageCache(dataset.image, cache_bytes, pin=self.device.type == "cuda")
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def candidates(self, target_label: np.ndarray, exclude: int | None, disjoint: bool) -> np.ndarray:
        """Pool indices that may be drawn: sharing no class with the target when ``disjoint``."""
        ok = np.ones(len(self.labels), dtype=bool)
        if exclude is not None:
            ok[exclude] = False
        if disjoint:
            no_shared = (self.labels @ np.asarray(target_label, dtype=np.float32)) == 0
            if (ok & no_shared).any():  # a pool where every image shares a class: fall back
                ok &= no_shared
        return np.flatnonzero(ok)

    def draw(self, rng: np.random.Generator, target_label: np.ndarray, exclude: int | None,
             count: int, disjoint_prob: float) -> list[dict]:
        """``count`` augmentation recipes (pool index, long side, flip, crop boxes) for one step."""
        disjoint = bool(rng.random() < disjoint_prob)
        pool = self.candidates(target_label, exclude, disjoint)
        if len(pool) == 0:
            raise ValueError("RIB needs at least one other training image to draw from")
        chosen = rng.choice(pool, size=count, replace=len(pool) < count)
        recipes = []
        for idx in chosen:
            h, w = self.size(int(idx))
            long_side = int(rng.integers(self.resize_long[0], self.resize_long[1] + 1))
            scale = long_side / max(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            flip = bool(rng.random() < 0.5)
            src, dst = crop_boxes(size, self.crop, rng)
            recipes.append({"index": int(idx), "size": size, "flip": flip, "src": src, "dst": dst})
        return recipes

    def size(self, idx: int) -> tuple[int, int]:
        return self.cache.size(idx)

    def image(self, idx: int) -> torch.Tensor:
        """uint8 [H, W, 3] on the device (from the host cache; decoded when not cached)."""
        return self.cache.get(idx).to(self.device, non_blocking=True)

    def batch(self, recipes: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """(images [B, 3, crop, crop] normalised, labels [B, K]) for a step's recipes."""
        out = torch.zeros(len(recipes), 3, self.crop, self.crop, device=self.device)
        for b, r in enumerate(recipes):
            img = self.image(r["index"]).permute(2, 0, 1)[None].float()
            img = F.interpolate(img, size=r["size"], mode="bilinear", align_corners=False,
                                antialias=True)[0]
            if r["flip"]:
                img = img.flip(-1)
            img = (img / 255.0 - self.mean) / self.std
            (st, sb, sl, sr), (dt, db, dl, dr) = r["src"], r["dst"]
            out[b, :, dt:db, dl:dr] = img[:, st:sb, sl:sr]
        index = torch.tensor([r["index"] for r in recipes], device=self.device)
        return out, self.labels_t.index_select(0, index)
