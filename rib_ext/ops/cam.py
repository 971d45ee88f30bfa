"""Operators that build localization maps, and the finishing step that writes IRN's map format.

Per scale, the raw CAM of an image and of its horizontal flip are ReLU'd, the flip is flipped back,
and both are added to a running sum (:func:`cam_flip_accumulate_`; over RIB's steps the sum grows).
:func:`finalize_maps` resizes the per-scale sums to the stride-4 and full image sizes, adds the
scales, keeps the image's classes and max-normalises each class map: the dict IRN's later steps read.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import oracle
from ._checks import check_planes, check_same_shape
from ._extension import HAS_C, use_compiled

IRN_EPS = 1e-5


def cam_flip_merge(cam: torch.Tensor, cam_flip: torch.Tensor) -> torch.Tensor:
    """``relu(cam) + relu(cam_flip)`` flipped back along the last dim.

    Args:
        cam, cam_flip: ``[..., H, W]`` raw CAMs of an image and of its horizontal flip.
    Returns:
        ``[..., H, W]`` in the accumulation dtype (float32, or float64 for float64 input);
        differentiable (the gradient passes where each ReLU is active).
    """
    if use_compiled("cam_flip_merge", cam):
        return torch.ops.rib_ext.cam_flip_merge.default(cam, cam_flip)
    return oracle.cam_flip_merge(cam, cam_flip)


def cam_flip_accumulate_(acc: torch.Tensor, cam: torch.Tensor, cam_flip: torch.Tensor) -> torch.Tensor:
    """In place: ``acc += cam_flip_merge(cam, cam_flip)`` in one pass; returns ``acc``.

    ``acc`` must have cam's accumulation dtype (float32 for float16/bfloat16/float32 cams). Not
    differentiable: maps are accumulated outside the autograd graph.
    """
    if use_compiled("cam_flip_accumulate_", cam):
        torch.ops.rib_ext.cam_flip_accumulate_.default(acc, cam.detach(), cam_flip.detach())
    else:
        with torch.no_grad():
            acc.add_(oracle.cam_flip_merge(cam, cam_flip))
    return acc


def cam_max_normalize(maps: torch.Tensor, eps: float = IRN_EPS) -> torch.Tensor:
    """``maps / (max over the last two dims + eps)``, IRN's per-class normalisation.

    Differentiable, through the max too (its gradient goes to the first maximal location).
    """
    if use_compiled("cam_max_normalize", maps):
        return torch.ops.rib_ext.cam_max_normalize.default(maps, float(eps))
    return oracle.cam_max_normalize(maps, eps)


def strided_size(size: Sequence[int], stride: int) -> tuple[int, int]:
    """IRN's ceil-divided size of a stride-``stride`` grid over an image of ``size`` (H, W)."""
    return (size[0] + stride - 1) // stride, (size[1] + stride - 1) // stride


def strided_up_size(size: Sequence[int], stride: int) -> tuple[int, int]:
    """The smallest multiple of ``stride`` covering ``size``: IRN upsamples there, then crops."""
    h, w = strided_size(size, stride)
    return h * stride, w * stride


def finalize_maps(scale_sums: Sequence[torch.Tensor], image_size: Sequence[int],
                  keys: torch.Tensor | np.ndarray) -> dict:
    """Turn per-scale accumulated maps into IRN's ``.npy`` dict.

    Args:
        scale_sums: one ``[K, h_s, w_s]`` tensor per scale (all K classes, ReLU'd and flip-merged).
        image_size: (H, W) of the original image.
        keys: indices (0-based over the foreground classes) of the image's classes.

    Returns:
        ``{'keys': int64 array [K'], 'cam': tensor [K', ceil(H/4), ceil(W/4)],
        'high_res': float32 array [K', H, W]}``, each class map divided by its max + 1e-5. Exactly
        IRN's make_cam format (cam as a CPU tensor, high_res as numpy).
    """
    keys_t = torch.as_tensor(np.asarray(keys), dtype=torch.long)
    size = (int(image_size[0]), int(image_size[1]))
    small, up = strided_size(size, 4), strided_up_size(size, 16)
    strided = 0
    high_res = 0
    for m in scale_sums:
        # Only the image's classes are resized (the per-class maps are independent).
        m = m.index_select(0, keys_t.to(m.device)).float()[None]
        strided = strided + F.interpolate(m, small, mode="bilinear", align_corners=False)[0]
        high_res = high_res + F.interpolate(m, up, mode="bilinear", align_corners=False)[0]
    if isinstance(strided, int):
        raise ValueError("finalize_maps needs at least one scale")
    high_res = high_res[:, : size[0], : size[1]]
    return {
        "keys": keys_t.numpy(),
        "cam": cam_max_normalize(strided).cpu(),
        "high_res": cam_max_normalize(high_res).cpu().numpy(),
    }


if HAS_C:

    @torch.library.register_fake("rib_ext::cam_flip_merge")
    def _cam_flip_merge_fake(cam, cam_flip):
        check_planes(cam, "cam", "cam_flip_merge")
        check_same_shape(cam, cam_flip, "cam", "cam_flip", "cam_flip_merge")
        acc = torch.float64 if cam.dtype == torch.float64 else torch.float32
        return torch.empty_like(cam, dtype=acc, memory_format=torch.contiguous_format)

    @torch.library.register_fake("rib_ext::cam_flip_accumulate_")
    def _cam_flip_accumulate_fake(acc, cam, cam_flip):
        check_planes(cam, "cam", "cam_flip_accumulate_")
        check_same_shape(cam, cam_flip, "cam", "cam_flip", "cam_flip_accumulate_")
        check_same_shape(acc, cam, "acc", "cam", "cam_flip_accumulate_")
        opmath = torch.float64 if cam.dtype == torch.float64 else torch.float32
        torch._check(acc.dtype == opmath, lambda: f"cam_flip_accumulate_: acc must be {opmath} for a "
                                                  f"{cam.dtype} cam, got {acc.dtype}")
        return None

    @torch.library.register_fake("rib_ext::cam_max_normalize")
    def _cam_max_normalize_fake(maps, eps):
        check_planes(maps, "maps", "cam_max_normalize")
        torch._check(maps.dtype.is_floating_point, lambda: "cam_max_normalize: maps must be floating point")
        return torch.empty_like(maps, memory_format=torch.contiguous_format)

    def _merge_setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _merge_backward(ctx, grad):
        cam, cam_flip = ctx.saved_tensors
        grad_cam = (grad * (cam > 0)).to(cam.dtype)
        grad_flip = (grad.flip(-1) * (cam_flip > 0)).to(cam_flip.dtype)
        return grad_cam, grad_flip

    torch.library.register_autograd("rib_ext::cam_flip_merge", _merge_backward,
                                    setup_context=_merge_setup_context)

    def _normalize_setup_context(ctx, inputs, output):
        maps, eps = inputs
        ctx.save_for_backward(maps)
        ctx.eps = eps

    def _normalize_backward(ctx, grad):
        (maps,) = ctx.saved_tensors
        flat = maps.flatten(-2)
        denom = flat.amax(dim=-1, keepdim=True) + ctx.eps
        grad_flat = grad.flatten(-2)
        # d(x_i / (M + eps)) / dM = -x_i / (M + eps)^2, collected at the argmax location.
        through_max = -(grad_flat * flat).sum(dim=-1, keepdim=True) / denom.square()
        grad_maps = (grad_flat / denom).scatter_add(-1, flat.argmax(dim=-1, keepdim=True), through_max)
        return grad_maps.view_as(maps), None

    torch.library.register_autograd("rib_ext::cam_max_normalize", _normalize_backward,
                                    setup_context=_normalize_setup_context)
