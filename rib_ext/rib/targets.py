"""Each target image's device inputs: its multi-scale flip views, its label and its class indices.

They are made on the adaptation device from the decoded uint8 image (one copy through pinned
memory; Pillow's bicubic by :func:`rib_ext.ops.resize_bicubic_u8`), the same bytes as
:func:`rib_ext.data.transforms.multiscale_flip_views` on the host. On CUDA they are prepared on a
side stream, and :meth:`TargetViews.lookahead` fetches (decodes) and prepares the next target in a
background thread while the current one adapts, so neither the decoding nor the resizing waits on
the step's path.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from rib_ext.data.transforms import Normalizer, multiscale_flip_views_tensor
from rib_ext.rib.staging import SideStream, Staged, to_device


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
