"""Decoded other images in host memory under a byte budget, least recently used out.

RIB draws every step's other images from the whole training list; decoding a JPEG costs more than
augmenting it, so decoded images are kept, but a dataset's worth does not fit (VOC train_aug about
6 GB decoded, COCO train2014 about 75 GB). Images live in host memory (page-locked when a GPU will
read them, so the copy overlaps the GPU's work); image sizes are kept for every image seen, since the
draws ask for them far more often than for pixels.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import numpy as np
import torch


class ImageCache:
    """``get(i)`` -> uint8 [H, W, 3] CPU tensor of ``decode(i)``, kept while under ``budget_bytes``.

    Args:
        decode: index -> HxWx3 uint8 array (the dataset's ``image``).
        budget_bytes: the most decoded bytes kept; 0 keeps nothing (decode every time). An image
            larger than the budget is returned without being kept.
        pin: page-lock kept images (when a CUDA device will read them).
    Thread-safe: the engine's prefetch thread and the main thread share one cache.
    """

    def __init__(self, decode: Callable[[int], np.ndarray], budget_bytes: int, pin: bool = False):
        if budget_bytes < 0:
            raise ValueError(f"image cache budget must be >= 0 bytes, got {budget_bytes}")
        self.decode = decode
        self.budget = int(budget_bytes)
        self.pin = bool(pin)
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0
        self._images: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._sizes: dict[int, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._images)

    def size(self, idx: int) -> tuple[int, int]:
        """(H, W) of image ``idx``; decodes it (and keeps it, budget allowing) the first time."""
        known = self._sizes.get(idx)
        return known if known is not None else tuple(self.get(idx).shape[:2])

    def get(self, idx: int) -> torch.Tensor:
        with self._lock:
            img = self._images.get(idx)
            if img is not None:
                self._images.move_to_end(idx)
                self.hits += 1
                return img
            self.misses += 1
        # Decode outside the lock: two threads may decode the same image once each; both agree.
        arr = np.asarray(self.decode(idx))
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"image {idx}: expected uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
        img = torch.from_numpy(np.array(arr))  # a writable copy the dataset cannot change
        if self.pin and torch.cuda.is_available():
            img = img.pin_memory()
        with self._lock:
            self._sizes[idx] = (int(img.shape[0]), int(img.shape[1]))
            if idx not in self._images and img.numel() <= self.budget:
                self._images[idx] = img
                self.bytes += img.numel()
                while self.bytes > self.budget:
                    _, old = self._images.popitem(last=False)
                    self.bytes -= old.numel()
                    self.evictions += 1
        return img

    def stats(self) -> dict:
        return {"images": len(self._images), "bytes": self.bytes, "budget": self.budget,
                "hits": self.hits, "misses": self.misses, "evictions": self.evictions}
