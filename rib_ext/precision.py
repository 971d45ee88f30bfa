"""Precision and memory-layout settings shared by the GPU stages (rib, make_cam, ...).

``precision="bf16"`` runs the convolutions under autocast (weights, gradients, accumulated maps stay
float32); ``float32`` is exact reproduction. ``channels_last`` stores activations and weights NHWC,
which the GPU's bf16 convolution kernels want. Every setting is also valid on the CPU.
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn as nn

PRECISIONS = ("float32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast(device: torch.device, precision: str, cache_enabled: bool = True):
    """The autocast context of ``precision`` on ``device`` (a no-op context for float32).
    ``cache_enabled=False`` inside CUDA graph capture (autocast's weight cache would be baked in)."""
    if check_precision(precision) == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                          cache_enabled=cache_enabled)


def memory_format(channels_last: bool):
    return torch.channels_last if channels_last else torch.contiguous_format


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool):
    """``torch.backends.cudnn.benchmark = enabled`` inside the block, the previous value after.

    The flag is process-wide and cuDNN times its algorithms once per new shape: worth it around
    work whose shapes repeat (RIB's other images: B crops of one size), a loss where every image
    brings new sizes. Never left set for the rest of the process."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv <- bn(conv(.)) with bn's running statistics, computed in float64 then cast back."""
    w = conv.weight.detach().double()
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = bn.bias.detach().double() - bn.running_mean.double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.detach().double() * scale
    dtype = conv.weight.dtype
    conv.weight = nn.Parameter((w * scale.view(-1, 1, 1, 1)).to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(dtype), requires_grad=False)


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (inference only) in which every batch norm that directly follows a
    convolution is folded into it and replaced by the identity: ``convN``/``bnN`` siblings (the
    torchvision blocks and stem) and consecutive (conv, bn) in a Sequential (the shortcuts).
    Raises if a batch norm is left unfolded (the copy would not equal the original)."""
    folded = copy.deepcopy(module).eval()
    for m in folded.modules():
        kids = dict(m.named_children())
        pairs = []
        if isinstance(m, nn.Sequential):
            names = list(kids)
            pairs += [(a, b) for a, b in zip(names, names[1:])
                      if isinstance(kids[a], nn.Conv2d) and isinstance(kids[b], nn.BatchNorm2d)]
        pairs += [(n, "bn" + n[4:]) for n in kids
                  if n.startswith("conv") and isinstance(kids[n], nn.Conv2d)
                  and isinstance(kids.get("bn" + n[4:]), nn.BatchNorm2d)]
        for conv_name, bn_name in dict.fromkeys(pairs):  # a Sequential's conv1/bn1 match twice
            _fold_into(kids[conv_name], kids[bn_name])
            setattr(m, bn_name, nn.Identity())
    left = [n for n, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise ValueError(f"cannot fold batch norms not directly after a convolution: {left}")
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded
