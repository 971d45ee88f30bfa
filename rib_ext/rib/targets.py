"""The target images RIB adapts: :class:`Target` (an image, its label, the checks the engine
reads them with), and each target's device inputs: its multi-scale flip views, its label and its
class indices.

They are made on the adaptation device from the decoded uint8 image (one copy through pinned
memory; Pillow's bicubic by :func:`rib_ext.ops.resize_bicubic_u8`), the same bytes as
:func:`rib_ext.data.transforms.multiscale_flip_views` on the host. On CUDA they are prepared on a
side stream, and :meth:`TargetViews.lookahead` fetches (decodes) and prepares the next target in a
background thread while the current one adapts, so neither the decoding nor the resizing waits on
the step's path.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from rib_ext.data.transforms import Normalizer, multiscale_flip_views_tensor
from rib_ext.rib.staging import SideStream, Staged, to_device


@dataclass
class Target:
    """One image to adapt: what it is, and (for the engine) its adaptation state."""

    index: int  # position in the full image list: seeds its random draws
    name: str
    image: np.ndarray  # uint8 [H, W, 3]
    label: np.ndarray  # float32 [K] of 0/1, at least one class
    pool_index: Optional[int] = None  # its own index in the other-image pool, never drawn for it

    def __post_init__(self) -> None:
        check_target(self)


def check_target(target: Target, num_classes: Optional[int] = None) -> None:
    """A target's image and label as the engine reads them, or a ValueError naming the image and
    the value (a float image would be cast to black, a CHW one read as a 3-pixel-wide image)."""
    name, image, label = target.name, target.image, target.label
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name}: image must be a numpy array uint8 [H, W, 3], got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        chw = " (it looks channels first: use image.transpose(1, 2, 0))" if (
            image.ndim == 3 and image.shape[0] == 3) else ""
        raise ValueError(f"{name}: image has shape {image.shape}; expected [H, W, 3] RGB{chw}")
    if image.dtype != np.uint8:
        hint = (" (values in [0, 1]: pass (image * 255).round().astype(np.uint8))"
                if image.dtype.kind == "f" and image.size and 0 <= np.nanmin(image) and np.nanmax(image) <= 1
                else "")
        raise ValueError(f"{name}: image is {image.dtype}; expected uint8 RGB values 0..255{hint}")
    label = np.asarray(label)
    if label.ndim != 1:
        raise ValueError(f"{name}: label has shape {label.shape}; expected [K] (one 0/1 per class)")
    if not np.isin(label, (0, 1)).all():
        raise ValueError(f"{name}: label holds values other than 0 or 1: {label.tolist()}")
    if not label.any():
        raise ValueError(f"{name}: label has no class (all zeros): there is nothing to adapt")
    if num_classes is not None and label.shape[0] != num_classes:
        raise ValueError(f"{name}: label has {label.shape[0]} classes but the classifier has "
                         f"{num_classes}")


class TargetViews:
    """Prepares targets (objects with ``image`` uint8 [H, W, 3] and ``label`` [K]) for ``device``.

    ``take(target)`` -> (views: per scale float32 [2, 3, h, w], label float32 [K], keys int64 [K'])
    on the device, ready on the current stream; prepared then if :meth:`lookahead` has not yet.
    """

    def __init__(self, device: torch.device | str, scales: Sequence[float]):
        self.device = torch.device(device)
        self.scales = tuple(scales)
        self.normalize = Normalizer(self.device)
        self.side = SideStream(self.device)  # after the normaliser's constants (read there)
        self._ready: dict[int, Staged] = {}  # id(target) -> its preparation, until taken

    def prepare(self, target) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        image = to_device(np.asarray(target.image, dtype=np.uint8), self.device)
        views = multiscale_flip_views_tensor(image, self.scales, self.normalize)
        label = to_device(np.asarray(target.label, dtype=np.float32), self.device)
        keys = to_device(np.flatnonzero(target.label).astype(np.int64), self.device)
        return views, label, keys

    def stage(self, target) -> None:
        """Queue ``target``'s preparation (on the side stream on CUDA)."""
        self._ready[id(target)] = self.side.run(self.prepare, target)

    def take(self, target) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        staged = self._ready.pop(id(target), None)
        if staged is None:
            staged = self.side.run(self.prepare, target)
        return staged.take()

    def lookahead(self, targets: Iterable, background: bool) -> Iterator:
        """``targets`` again. With ``background``, a thread of its own fetches the next target (the
        dataset decodes it there) and stages it as soon as the current one is handed out, so it is
        ready when asked for; without, nothing changes (each target prepared when taken)."""
        if not background:
            yield from targets
            return
        it = iter(targets)

        def fetch():
            target = next(it, None)
            if target is not None:
                self.stage(target)
            return target

        worker = ThreadPoolExecutor(1, thread_name_prefix="rib-targets")
        try:
            pending = worker.submit(fetch)
            while True:
                target = pending.result()
                if target is None:
                    return
                pending = worker.submit(fetch)
                yield target
        finally:
            worker.shutdown(wait=True)
