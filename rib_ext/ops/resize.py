"""Pillow's bicubic resize of uint8 images, bit for bit, on the image's device.

RIB's other images are resized as the authors' loader does, with Pillow's ``BICUBIC`` on the uint8
image (``pil_rescale``), and so are the target's scaled views. Pillow runs on the host; this
operator computes exactly the same bytes (semantics: csrc/resize.h) on the CPU or the GPU, so the
images can go to the device as they are decoded and be resized there.
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import oracle
from ._checks import check_resize_bicubic_u8
from ._extension import HAS_C, use_compiled


def _installed_pillow_order() -> bool:
    """Pillow 13 changed the order of the two passes (csrc/resize.h), and so some bytes: follow the
    installed Pillow, so that the operator matches the Pillow path it replaces on this machine."""
    try:
        import PIL
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return True
    return int(PIL.__version__.split(".")[0]) >= 13


PILLOW_ADAPTIVE_ORDER = _installed_pillow_order()


def resize_bicubic_u8(image: torch.Tensor, size: Sequence[int],
                      adaptive_order: bool | None = None) -> torch.Tensor:
    """``Image.fromarray(image).resize((width, height), Image.BICUBIC)``, bit for bit.

    Args:
        image: uint8 ``[H, W, C]`` (channels last, as decoded), C in 1..4, on any device.
        size: ``(height, width)`` of the result (array order, not Pillow's (width, height)),
            each side in 1..2^24.
        adaptive_order: the order of the two passes: True as Pillow >= 13 (the vertical pass
            first when the height shrinks by more than twice as many pixels as the width), False
            as older Pillow (always horizontal first); None (default): as the installed Pillow.
    Returns:
        uint8 ``[height, width, C]``, contiguous, on ``image``'s device; a copy when the size is
        unchanged. Not differentiable.
    Raises:
        RuntimeError: wrong dtype, rank, channel count or size (the message names it).
    """
    height, width = int(size[0]), int(size[1])
    order = PILLOW_ADAPTIVE_ORDER if adaptive_order is None else bool(adaptive_order)
    if use_compiled("resize_bicubic_u8", image):
        return torch.ops.rib_ext.resize_bicubic_u8.default(image, height, width, order)
    return oracle.resize_bicubic_u8(image, (height, width), order)


if HAS_C:

    @torch.library.register_fake("rib_ext::resize_bicubic_u8")
    def _resize_bicubic_u8_fake(image, height, width, adaptive_order=True):
        check_resize_bicubic_u8(image, height, width)
        return image.new_empty((height, width, image.shape[2]))
