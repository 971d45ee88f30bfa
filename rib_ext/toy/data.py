"""Toy images: handwritten '2' and '8', a tenth of each carrying a class-correlated shape.

A '2' gets a filled circle and an '8' a filled square, placed where they barely touch the digit,
so the shape is class-relevant (it only ever appears with its class) but not what a classifier
needs: the paper's non-discriminative region R_ND. R_D is the digit, R_BG everything else.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rib_ext.toy.config import ToyConfig

CIRCLE, SQUARE = "circle", "square"


@dataclass
class ToyData:
    images: torch.Tensor  # float [N, 1, H, W] in [0, 1], shapes drawn in
    clean: torch.Tensor  # float [N, 1, H, W], the same images without their shapes
    labels: torch.Tensor  # long [N]: 0 for the first class ('2'), 1 for the second ('8')
    regions: dict  # "D", "ND", "BG" -> bool [N, H, W], a partition of every image
    has_shape: torch.Tensor  # bool [N]
    eval_index: torch.Tensor  # long: the shape-carrying images the HGR is averaged over
    source: str

    def __len__(self) -> int:
        return len(self.labels)


def _sklearn_digits(cfg: ToyConfig, rng: np.random.Generator):
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    keep = np.isin(bunch.target, cfg.classes)
    small = torch.as_tensor(bunch.images[keep], dtype=torch.float32)[:, None]
    labels = (bunch.target[keep] == cfg.classes[1]).astype(np.int64)
    big = F.interpolate(small, size=(cfg.digit_box, cfg.digit_box), mode="bilinear",
                        align_corners=False)[:, 0].clamp_min(0).numpy()
    big /= big.reshape(len(big), -1).max(1)[:, None, None]
    # Each digit appears `copies` times at different places: the 351 real digits alone would give
    # only ~35 shape-carrying images, fewer than the 100 the paper averages over.
    span = cfg.canvas - cfg.digit_box + 1
    digits = np.zeros((cfg.copies * len(big), cfg.canvas, cfg.canvas), np.float32)
    for i, (y, x) in enumerate(rng.integers(0, span, size=(len(digits), 2))):
        digits[i, y:y + cfg.digit_box, x:x + cfg.digit_box] = big[i % len(big)]
    return digits, np.tile(labels, cfg.copies)


def _mnist_digits(cfg: ToyConfig, rng: np.random.Generator):
    from rib_ext.toy.mnist import load_mnist_train

    images, labels = load_mnist_train(cfg.mnist_dir)
    pick = np.flatnonzero(np.isin(labels, cfg.classes))
    pick = np.sort(rng.choice(pick, size=min(cfg.mnist_images, len(pick)), replace=False))
    return images[pick].astype(np.float32) / 255.0, (labels[pick] == cfg.classes[1]).astype(np.int64)


def shape_stamp(kind: str, cfg: ToyConfig) -> np.ndarray:
    """The filled shape as a bool array of its bounding box."""
    if kind == SQUARE:
        return np.ones((cfg.square_side, cfg.square_side), bool)
    if kind == CIRCLE:
        r = int(np.ceil(cfg.circle_radius))
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        return (yy ** 2 + xx ** 2) <= cfg.circle_radius ** 2
    raise ValueError(f"unknown shape {kind!r}")


def place_shape(digit_mask: np.ndarray, stamp: np.ndarray, max_overlap: float,
                rng: np.random.Generator) -> np.ndarray:
    """A mask of ``stamp`` at a random position where it covers at most ``max_overlap`` of its own
    pixels with the digit; where no position is that free, one of the least-overlapping ones."""
    windows = np.lib.stride_tricks.sliding_window_view(digit_mask, stamp.shape)
    overlap = (windows & stamp).sum(axis=(-2, -1)) / stamp.sum()
    ok = overlap <= max(max_overlap, overlap.min())
    y, x = np.argwhere(ok)[rng.integers(ok.sum())]
    mask = np.zeros_like(digit_mask)
    mask[y:y + stamp.shape[0], x:x + stamp.shape[1]] = stamp
    return mask


def region_masks(digit: np.ndarray | torch.Tensor, shape: np.ndarray | torch.Tensor,
                 threshold: float) -> dict:
    """R_D, R_ND, R_BG: the shape wins where it covers digit pixels, so the three never overlap."""
    digit, shape = torch.as_tensor(digit), torch.as_tensor(shape, dtype=torch.bool)
    d = (digit > threshold) & ~shape
    return {"D": d, "ND": shape, "BG": ~(d | shape)}


def make_toy_data(cfg: ToyConfig, seed: int) -> ToyData:
    """The toy set of one seed: which digits (MNIST), where they sit (scikit-learn), which images
    carry a shape and where all depend on ``seed``."""
    rng = np.random.default_rng(seed)
    if cfg.mnist_dir:
        digits, labels = _mnist_digits(cfg, rng)
        source = f"mnist:{cfg.mnist_dir}"
    else:
        digits, labels = _sklearn_digits(cfg, rng)
        source = "sklearn-digits"
    n = len(digits)
    # The paper: a circle on 10 % of the '2's and a square on 10 % of the '8's. Drawn per class,
    # so each class gets its exact share (one draw over both would leave it to chance).
    has_shape = np.zeros(n, bool)
    for c in (0, 1):
        members = np.flatnonzero(labels == c)
        has_shape[rng.choice(members, size=int(round(cfg.shape_fraction * len(members))),
                             replace=False)] = True
    stamps = (shape_stamp(CIRCLE, cfg), shape_stamp(SQUARE, cfg))
    shapes = np.zeros(digits.shape, bool)
    for i in np.flatnonzero(has_shape):
        shapes[i] = place_shape(digits[i] > cfg.digit_threshold, stamps[labels[i]],
                                cfg.shape_max_overlap, rng)
    images = np.maximum(digits, shapes.astype(np.float32))
    shaped = np.flatnonzero(has_shape)
    eval_index = np.sort(rng.choice(shaped, size=min(cfg.eval_images, len(shaped)), replace=False))
    return ToyData(
        images=torch.from_numpy(images)[:, None],
        clean=torch.from_numpy(digits)[:, None],
        labels=torch.from_numpy(labels),
        regions=region_masks(digits, shapes, cfg.digit_threshold),
        has_shape=torch.from_numpy(has_shape),
        eval_index=torch.from_numpy(eval_index),
        source=source,
    )
