"""IRN's training and inference transforms as pure functions on numpy arrays.

Images are uint8 [H, W, 3] until :func:`normalize` (float32 [H, W, 3]); masks are uint8 [H, W].
:class:`Normalizer` and :func:`multiscale_flip_views_tensor` compute the same bytes from a uint8
tensor on any device (Pillow's bicubic by :func:`rib_ext.ops.resize_bicubic_u8`).
Functions that take an optional ``mask`` return ``img`` alone when no mask is given and
``(img, mask)`` when one is, applying the same geometry to both (nearest sampling, 255 padding).
Randomness comes from a ``numpy.random.Generator`` passed in, never from global state.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from rib_ext import ops
from rib_ext.config import CAM_SCALES, IMAGENET_MEAN, IMAGENET_STD

from .images import IGNORE_INDEX

BILINEAR = Image.Resampling.BILINEAR
BICUBIC = Image.Resampling.BICUBIC  # IRN's pil_rescale / pil_resize use order 3 for images
NEAREST = Image.Resampling.NEAREST


def _with_mask(img, mask):
    return img if mask is None else (img, mask)


def resize(img: np.ndarray, size_hw: tuple[int, int], resample=BILINEAR) -> np.ndarray:
    """Resize a uint8 image or mask with Pillow (bilinear for images, pass NEAREST for masks)."""
    h, w = size_hw
    if img.shape[:2] == (h, w):
        return img
    return np.asarray(Image.fromarray(img).resize((w, h), resample=resample))


def _scaled_size(shape: tuple[int, ...], scale: float) -> tuple[int, int]:
    # IRN rounds each side (np.round, i.e. half to even) and we keep at least one pixel.
    return max(1, int(np.round(shape[0] * scale))), max(1, int(np.round(shape[1] * scale)))


def rescale(img: np.ndarray, scale: float, resample=BICUBIC) -> np.ndarray:
    """Scale both sides by ``scale`` (IRN's ``pil_rescale``: bicubic)."""
    return resize(img, _scaled_size(img.shape, scale), resample)


def resize_long(img: np.ndarray, target_long: int, mask: Optional[np.ndarray] = None):
    """Resize so that the longer side is ``target_long`` (aspect kept)."""
    size = _scaled_size(img.shape, target_long / max(img.shape[:2]))
    out = resize(img, size, BICUBIC)
    return _with_mask(out, None if mask is None else resize(mask, size, NEAREST))


def random_resize_long(img: np.ndarray, lo: int, hi: int, rng: np.random.Generator, mask: Optional[np.ndarray] = None):
    """:func:`resize_long` to a long side drawn uniformly from ``lo..hi`` inclusive (IRN: 320..640)."""
    return resize_long(img, int(rng.integers(lo, hi + 1)), mask)


def random_hflip(img: np.ndarray, rng: np.random.Generator, mask: Optional[np.ndarray] = None):
    """Mirror left-right with probability 1/2."""
    if rng.random() < 0.5:
        img = img[:, ::-1]
        mask = None if mask is None else mask[:, ::-1]
    return _with_mask(img, mask)


def normalize(img: np.ndarray) -> np.ndarray:
    """float32 [H, W, 3]: ``(img / 255 - mean) / std`` with ImageNet statistics."""
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    return (np.asarray(img, dtype=np.float32) / 255.0 - mean) / std


def crop_boxes(size_hw: tuple[int, int], crop: int, rng: np.random.Generator):
    """IRN's random crop geometry: per axis, a random window of the image when it is larger than
    ``crop``, else a random place for the image inside the ``crop`` canvas.

    Returns ``(src, dst)``, two ``(top, bottom, left, right)`` boxes of the same size: the image's
    ``src`` box goes to the canvas' ``dst`` box.
    """
    src, dst = [], []
    for length in size_hw:
        n = min(crop, length)
        space = length - crop
        if space > 0:
            s, d = int(rng.integers(0, space + 1)), 0
        else:
            s, d = 0, int(rng.integers(0, -space + 1))
        src.append((s, s + n))
        dst.append((d, d + n))
    (st, sb), (sl, sr) = src
    (dt, db), (dl, dr) = dst
    return (st, sb, sl, sr), (dt, db, dl, dr)


def _paste(arr: np.ndarray, crop: int, src, dst, fill) -> np.ndarray:
    canvas = np.full((crop, crop) + arr.shape[2:], fill, dtype=arr.dtype)
    canvas[dst[0]:dst[1], dst[2]:dst[3]] = arr[src[0]:src[1], src[2]:src[3]]
    return canvas


def random_crop_pad(
    img: np.ndarray, crop: int, rng: np.random.Generator, pad_value: float = 0, mask: Optional[np.ndarray] = None
):
    """A ``crop`` x ``crop`` random crop, padding with ``pad_value`` where the image is smaller.

    Call it after :func:`normalize`, as IRN does, so the padding is 0 in normalised space (the mean
    colour) rather than black. The mask, if any, is padded with 255 (ignore).
    """
    src, dst = crop_boxes(img.shape[:2], crop, rng)
    out = _paste(img, crop, src, dst, pad_value)
    return _with_mask(out, None if mask is None else _paste(mask, crop, src, dst, IGNORE_INDEX))


def hwc_to_chw(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(img, (2, 0, 1)))


def _torch_seeded_rng() -> np.random.Generator:
    # Drawn from torch's generator, so torch.manual_seed fixes it and every DataLoader worker (seeded
    # differently by torch) gets its own stream.
    return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))


class TrainTransform:
    """IRN's classifier augmentation: random resize-long, flip, normalise, random crop/pad, CHW.

    ``__call__(img, rng=None)`` returns a float32 tensor [3, crop, crop].
    """

    def __init__(self, resize_long: tuple[int, int] = (320, 640), crop_size: int = 512, hflip: bool = True):
        lo, hi = resize_long
        if not 0 < lo <= hi:
            raise ValueError(f"resize_long must be (lo, hi) with 0 < lo <= hi, got {resize_long}")
        if crop_size <= 0:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        self.resize_long = (int(lo), int(hi))
        self.crop_size = int(crop_size)
        self.hflip = hflip

    def __repr__(self) -> str:
        return f"TrainTransform(resize_long={self.resize_long}, crop_size={self.crop_size}, hflip={self.hflip})"

    def __call__(self, img: np.ndarray, rng: Optional[np.random.Generator] = None) -> torch.Tensor:
        rng = rng if rng is not None else _torch_seeded_rng()
        img = random_resize_long(img, *self.resize_long, rng)
        if self.hflip:
            img = random_hflip(img, rng)
        img = random_crop_pad(normalize(img), self.crop_size, rng)
        return torch.from_numpy(hwc_to_chw(img))


def multiscale_flip_views(img: np.ndarray, scales: Sequence[float] = CAM_SCALES) -> list[torch.Tensor]:
    """For each scale, float32 [2, 3, h, w]: the normalised image resized (bicubic; scale 1 is left
    untouched) and its horizontal mirror, IRN's inference input."""
    views = []
    for s in scales:
        x = hwc_to_chw(normalize(rescale(img, s) if s != 1.0 else img))
        views.append(torch.from_numpy(np.stack([x, np.ascontiguousarray(x[..., ::-1])])))
    return views


class Normalizer:
    """:func:`normalize` on a device, bit for bit: ``(x / 255 - mean) / std`` in float32 for uint8
    ``[..., 3, H, W]`` tensors (channels first), as float32 ``[..., 3, H, W]``.

    Every constant is a float32 tensor on the device, so each step is one IEEE float32 division or
    subtraction, numpy's arithmetic: with a Python number as divisor, CUDA multiplies by its
    reciprocal instead, which differs from a division in the last bit for some values.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.scale = torch.full((1, 1, 1), 255.0, device=self.device)
        self.mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=self.device).view(3, 1, 1)

    def __call__(self, chw: torch.Tensor) -> torch.Tensor:
        return (chw.float() / self.scale - self.mean) / self.std


def multiscale_flip_views_tensor(img: torch.Tensor, scales: Sequence[float] = CAM_SCALES,
                                 normalizer: Optional[Normalizer] = None) -> list[torch.Tensor]:
    """:func:`multiscale_flip_views` of a uint8 [H, W, 3] tensor, on its device, bit for bit:
    per scale float32 [2, 3, h, w], the normalised image (Pillow's bicubic resize, scale 1 left
    untouched) and its mirror."""
    norm = normalizer if normalizer is not None else Normalizer(img.device)
    views = []
    for s in scales:
        x = img if s == 1.0 else ops.resize_bicubic_u8(img, _scaled_size(tuple(img.shape), s))
        x = norm(x.permute(2, 0, 1))
        views.append(torch.stack([x, x.flip(-1)]))
    return views


class ClassificationDataset(torch.utils.data.Dataset):
    """Training samples ``dict(img=float32 [3, crop, crop], label=float32 [K], name=id)``."""

    def __init__(self, dataset, transform):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key) -> dict:
        # An (index, seed) key fixes the augmentation (rib_ext.training.epoch_batches), so the data
        # of a resumed run match an uninterrupted one; a plain index draws from torch's RNG.
        i, seed = key if isinstance(key, tuple) else (key, None)
        rng = np.random.default_rng(seed) if seed is not None else None
        return {
            "img": self.transform(self.dataset.image(i), rng),
            "label": torch.from_numpy(self.dataset.labels(i)),
            "name": self.dataset.name(i),
        }


class InferenceDataset(torch.utils.data.Dataset):
    """CAM inference samples ``dict(name, label=float32 [K], size=(H, W), views=[float32 [2, 3, h, w]])``."""

    def __init__(self, dataset, scales: Sequence[float] = CAM_SCALES):
        self.dataset = dataset
        self.scales = tuple(scales)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        img = self.dataset.image(i)
        return {
            "name": self.dataset.name(i),
            "label": torch.from_numpy(self.dataset.labels(i)),
            "size": tuple(img.shape[:2]),
            "views": multiscale_flip_views(img, self.scales),
        }
