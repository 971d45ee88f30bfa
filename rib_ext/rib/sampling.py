"""The B "other" images of each RIB step: who is drawn, and how they are augmented.

Both the engine and the slow oracle loop (rib/oracle_loop.py) draw through :class:`OtherImages`, so given the same
per-image generator they see the same crops.

Who, as the authors' code: per target, one shuffled pass over the images that share no class with
it (their ``DataLoader(shuffle=True, batch_size=B, drop_last=True)`` over that pool), step k taking
the k-th slice of B: 200 distinct images over 10 steps at B=20. A pool of fewer than ``steps * B``
images (P of them), where this differs from the authors' code on purpose:

- here every target gets its K steps of B images: when the permutation runs out, a fresh one
  continues it (a step may then hold an image twice; with P < B, every step does);
- their loop (``DataLoader(drop_last=True)``) takes floor(P / B) steps, so its map sums fewer
  maps; with P < B it takes none and fails saving an empty sum;
- with no image sharing no class with the target (P = 0), here the other images come from every
  other image (sharing a class or not); their loop has no batch and fails the same way.

tests/test_rib_map_counts.py shows each case against a transcription of their loop. Images with
no class at all (COCO has some) share no class with anyone: they stay in the pool.

How, as IRN's loader: resize-long with Pillow bicubic on the uint8 image (the authors'
``pil_rescale``), flip, normalise, crop/pad with 0. All of it runs on the adaptation device: the
decoded uint8 image goes there from a host-memory cache (page-locked for a GPU, under a byte
budget, :mod:`rib_ext.rib.image_cache`: a whole dataset's worth may not fit) and is resized there
by :func:`rib_ext.ops.resize_bicubic_u8`, Pillow's arithmetic bit for bit. The batches are the
bytes the Pillow-on-the-host path gave (tests/test_fidelity_sampling.py keeps that path as the
oracle). :meth:`OtherImages.stage` builds a step's batches on a side stream
(:mod:`rib_ext.rib.staging`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from rib_ext import ops
from rib_ext.data.transforms import Normalizer, crop_boxes
from rib_ext.rib.image_cache import ImageCache
from rib_ext.rib.staging import SideStream, Staged, to_device


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
        # [N, K] on the host, built once: a step's rows go to the device through pinned memory.
        self.labels = np.array(dataset.label_matrix(), dtype=np.float32)
        self.resize_long = (int(resize_long[0]), int(resize_long[1]))
        self.crop = int(crop)
        # Decoded images in (pinned) host memory under a byte budget, least recently used out.
        self.cache = ImageCache(dataset.image, cache_bytes, pin=self.device.type == "cuda")
        self.normalize = Normalizer(self.device)
        self.side = SideStream(self.device)  # after the normaliser's constants (they are read there)

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

    def draws(self, rng: np.random.Generator, target_label: np.ndarray, exclude: int | None,
               disjoint_prob: float = 1.0) -> "OtherDraws":
        """The other images of one target, drawn step by step (see the module docstring)."""
        return OtherDraws(self, rng, target_label, exclude, disjoint_prob)

    def draw(self, rng: np.random.Generator, target_label: np.ndarray, exclude: int | None,
             count: int, disjoint_prob: float) -> list[dict]:
        """One step's ``count`` recipes from fresh draws (a single one; adaptation uses
        :meth:`draws` so that successive steps continue one permutation)."""
        return self.draws(rng, target_label, exclude, disjoint_prob).draw(count)

    def recipe(self, idx: int, rng: np.random.Generator) -> dict:
        """Augmentation of pool image ``idx``: long side, flip, crop boxes (IRN's draw order)."""
        h, w = self.size(idx)
        long_side = int(rng.integers(self.resize_long[0], self.resize_long[1] + 1))
        scale = long_side / max(h, w)
        # np.round per side, as the authors' pil_rescale.
        size = (max(1, int(np.round(h * scale))), max(1, int(np.round(w * scale))))
        flip = bool(rng.random() < 0.5)
        src, dst = crop_boxes(size, self.crop, rng)
        return {"index": int(idx), "size": size, "flip": flip, "src": src, "dst": dst}

    def size(self, idx: int) -> tuple[int, int]:
        return self.cache.size(idx)

    def image(self, idx: int) -> torch.Tensor:
        """uint8 [H, W, 3] on the device (from the host cache; decoded when not cached)."""
        return self.cache.get(idx).to(self.device, non_blocking=True)

    def resized(self, idx: int, size: tuple[int, int]) -> torch.Tensor:
        """uint8 [h, w, 3] on the device: pool image ``idx`` resized as the authors'
        ``pil_rescale`` (Pillow's bicubic), from the cached image, on the device."""
        return ops.resize_bicubic_u8(self.image(idx), size)

    def batch(self, recipes: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """(images [B, 3, crop, crop] normalised, labels [B, K]) for a step's recipes, on the
        current stream.

        Each crop (flipped if drawn so) is pasted as uint8 into one canvas, normalised once for
        the batch, and the padding set to 0 afterwards: elementwise, the same operations on the
        same bytes as normalising each image and pasting it on zeros (IRN's order: normalise, then
        pad with 0), with a few device calls per image instead of eight.
        """
        n = len(recipes)
        canvas = torch.zeros(n, 3, self.crop, self.crop, dtype=torch.uint8, device=self.device)
        covered = np.zeros((2, n, self.crop), dtype=bool)  # the rows, the columns an image covers
        for b, r in enumerate(recipes):
            img = self.resized(r["index"], r["size"]).permute(2, 0, 1)
            (st, sb, sl, sr), (dt, db, dl, dr) = r["src"], r["dst"]
            if r["flip"]:  # columns sl:sr of the mirror = columns w-sr:w-sl of the image, mirrored
                w = img.shape[-1]
                piece = img[:, st:sb, w - sr:w - sl].flip(-1)
            else:
                piece = img[:, st:sb, sl:sr]
            canvas[b, :, dt:db, dl:dr] = piece
            covered[0, b, dt:db] = True
            covered[1, b, dl:dr] = True
        rows, cols = to_device(covered, self.device).unbind(0)
        inside = rows[:, None, :, None] & cols[:, None, None, :]
        images = torch.where(inside, self.normalize(canvas), 0.0)
        labels = to_device(self.labels[[r["index"] for r in recipes]], self.device)
        return images, labels

    def stage(self, recipes: list[list[dict]]) -> Staged:
        """:meth:`batch` of each recipe list, prepared on the side stream (CUDA): ``take()`` the
        result on the stream that uses it. Inline on the CPU."""
        return self.side.run(lambda: [self.batch(r) for r in recipes])


class OtherDraws:
    """The other images of one target image: consecutive slices of one permutation of its pool.

    ``disjoint_prob`` < 1 (an option of ours): each step draws, with that probability, its slice
    from the permutation of the disjoint pool, else from a permutation of every other image (which
    may share classes with the target). The authors' ``p_disjoint`` < 1 branch differs and is
    effectively dead: ``random.randrange(0, 1)`` is always 0, so it always takes the disjoint pool,
    then draws each image uniformly with replacement (their "joint" pool, images holding all the
    target's classes, is never used).
    """

    def __init__(self, pool: OtherImages, rng: np.random.Generator, target_label: np.ndarray,
                 exclude: int | None, disjoint_prob: float = 1.0):
        self.pool, self.rng, self.disjoint_prob = pool, rng, float(disjoint_prob)
        self._pools = {True: pool.candidates(target_label, exclude, True),
                       False: pool.candidates(target_label, exclude, False)}
        if len(self._pools[False]) == 0:
            raise ValueError("RIB needs at least one other training image to draw from")
        self._order: dict[bool, np.ndarray] = {}
        self._pos: dict[bool, int] = {}

    def _take(self, disjoint: bool, count: int) -> list[int]:
        chosen = []
        while len(chosen) < count:
            order = self._order.get(disjoint)
            if order is None or self._pos[disjoint] >= len(order):
                # The pool is exhausted (or not started): a fresh pass over it.
                order = self._order[disjoint] = self.rng.permutation(self._pools[disjoint])
                self._pos[disjoint] = 0
            pos = self._pos[disjoint]
            take = order[pos:pos + count - len(chosen)]
            self._pos[disjoint] = pos + len(take)
            chosen.extend(int(i) for i in take)
        return chosen

    def draw(self, count: int) -> list[dict]:
        """The next step's ``count`` augmentation recipes (pool index, size, flip, crop boxes)."""
        disjoint = True if self.disjoint_prob >= 1.0 else bool(self.rng.random() < self.disjoint_prob)
        return [self.pool.recipe(i, self.rng) for i in self._take(disjoint, count)]
