"""Training data of the segmentation network: label PNGs, augmentation and a resumable data order.

Data order: the training images are visited as an endless stream of epochs, each a seeded shuffle;
iteration ``i`` takes stream positions ``i*B .. i*B + B - 1`` (so a batch may straddle two epochs,
and lists shorter than a batch still work). Each position's augmentation has its own seed derived
from ``(seed, position)``. Everything a batch depends on is therefore a function of
``(seed, image list, iteration)``, which is what makes an interrupted run resume exactly.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch

from rib_ext.data import IGNORE_INDEX, load_label_png
from rib_ext.data.transforms import NEAREST, hwc_to_chw, normalize, random_crop_pad, random_hflip, rescale


def check_labels(labels: np.ndarray, size_hw: Sequence[int], num_classes: int, path: Path) -> np.ndarray:
    """``labels`` if it fits an image of ``size_hw`` and holds only 0..num_classes and 255."""
    if labels.shape != tuple(size_hw):
        raise ValueError(f"{path}: labels are {labels.shape[0]}x{labels.shape[1]} (HxW) but the image "
                         f"is {size_hw[0]}x{size_hw[1]}: labels of another image or split?")
    bad = np.unique(labels[(labels > num_classes) & (labels != IGNORE_INDEX)])
    if bad.size:
        raise ValueError(f"{path}: label values {bad[:5].tolist()} outside 0..{num_classes} and "
                         f"{IGNORE_INDEX}: labels from another dataset?")
    return labels


def load_labels(path: str | Path, size_hw: Sequence[int], num_classes: int) -> np.ndarray:
    """A training label PNG (0 background, c + 1 class c, 255 ignored), checked against its image."""
    path = Path(path)
    return check_labels(load_label_png(path), size_hw, num_classes, path)


def augment(img: np.ndarray, labels: np.ndarray, crop_size: int, scale_range: Sequence[float],
            hflip: bool, rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """(float32 [3, crop, crop] normalised image, int64 [crop, crop] labels): random rescale
    (image bilinear, labels nearest), flip, random crop with padding (image 0 = the mean colour
    after normalisation, labels 255)."""
    scale = rng.uniform(*scale_range)
    img, labels = rescale(img, scale), rescale(labels, scale, NEAREST)
    img = normalize(img)
    if hflip:
        img, labels = random_hflip(img, rng, mask=labels)
    img, labels = random_crop_pad(img, crop_size, rng, pad_value=0, mask=labels)
    return torch.from_numpy(hwc_to_chw(img)), torch.from_numpy(labels.astype(np.int64))


@lru_cache(maxsize=4)
def epoch_order(num_images: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_images)


def stream_image(position: int, num_images: int, seed: int) -> int:
    """Which image (index into the training list) stream ``position`` holds."""
    epoch, offset = divmod(position, num_images)
    return int(epoch_order(num_images, seed, epoch)[offset])


def augmentation_rng(position: int, seed: int) -> np.random.Generator:
    # A separate seed sequence from the epoch shuffles ([seed, epoch] has two words, this three).
    return np.random.default_rng([seed, 1, position])


def names_digest(names: Sequence[str]) -> str:
    """A fingerprint of the training list, stored with checkpoints so a resume on another list fails."""
    return hashlib.sha1("\n".join(names).encode()).hexdigest()


class IterationBatches:
    """``batch_sampler`` of a DataLoader: the stream positions of iterations ``start .. stop - 1``."""

    def __init__(self, start: int, stop: int, batch_size: int):
        self.start, self.stop, self.batch_size = int(start), int(stop), int(batch_size)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[List[int]]:
        b = self.batch_size
        for it in range(self.start, self.stop):
            yield list(range(it * b, (it + 1) * b))


class SegmentationTrainSet(torch.utils.data.Dataset):
    """Augmented (image, labels) pairs by stream position (see the module docstring).

    ``names``: training ids, each with ``label_dir/<id>.png``.
    """

    def __init__(self, dataset, label_dir: str | Path, names: Sequence[str], crop_size: int,
                 scale_range: Sequence[float], hflip: bool = True, seed: int = 0):
        if not names:
            raise ValueError(f"no training image has labels in {label_dir}")
        self.dataset = dataset
        self.label_dir = Path(label_dir)
        self.names = list(names)
        self.crop_size = int(crop_size)
        self.scale_range = tuple(scale_range)
        self.hflip = hflip
        self.seed = int(seed)
        self.index = {name: i for i, name in enumerate(dataset.ids)}

    def __len__(self) -> int:
        return len(self.names)

    def pair(self, position: int) -> Tuple[np.ndarray, np.ndarray]:
        """The un-augmented image and labels at stream ``position``."""
        name = self.names[stream_image(position, len(self.names), self.seed)]
        img = self.dataset.image(self.index[name])
        labels = load_labels(self.label_dir / f"{name}.png", img.shape[:2], self.dataset.num_classes)
        return img, labels

    def __getitem__(self, position: int) -> Tuple[torch.Tensor, torch.Tensor]:
        img, labels = self.pair(position)
        return augment(img, labels, self.crop_size, self.scale_range, self.hflip,
                       augmentation_rng(position, self.seed))
