"""Precision and memory-layout settings shared by the GPU stages (rib, make_cam, ...).

``precision="float32"`` is float32 throughout: TF32 is turned off for cuDNN convolutions and CUDA
matrix products (PyTorch lets cuDNN use TF32 by default on Ampere and newer GPUs, a 10-bit mantissa
the authors' GPUs did not have). ``"tf32"`` allows TF32 for both, its own named choice.
``"bf16"`` runs the convolutions under autocast (weights, gradients, accumulated maps stay float32;
the float32 rest without TF32). ``channels_last`` stores activations and weights NHWC, which the
GPU's bf16 convolution kernels want. Every setting is also valid on the CPU (where the TF32 flags
change nothing).
"""
from __future__ import annotations

import contextlib
import copy
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from rib_ext.config_fields import PRECISIONS, ConfigError


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


@contextlib.contextmanager
def tf32_flags(precision: str):
    """TF32 allowed for cuDNN convolutions and CUDA matrix products exactly when ``precision`` is
    ``"tf32"``; the process-wide flags as they were afterwards. (The legacy ``allow_tf32`` flags:
    the GPU machine's older torch has them too, and mixing them with the newer ``fp32_precision``
    API is an error in PyTorch.)"""
    tf32 = check_precision(precision) == "tf32"
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32 = cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


@contextlib.contextmanager
def autocast(device: torch.device, precision: str, cache_enabled: bool = True):
    """The numerics of ``precision`` on ``device``: the TF32 flags (:func:`tf32_flags`), and for
    bf16 the autocast context. ``cache_enabled=False`` inside CUDA graph capture (autocast's
    weight cache would be baked in)."""
    with tf32_flags(precision):
        if precision == "bf16":
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                                cache_enabled=cache_enabled):
                yield
        else:
            yield


_CONVOLUTIONS = frozenset({torch.conv1d, torch.conv2d, torch.conv3d, F.conv1d, F.conv2d, F.conv3d,
                           torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d,
                           F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d})


class _Bf16Convolutions(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONVOLUTIONS:
            def cast(a):
                return a.to(torch.bfloat16) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            args = [cast(a) for a in args]
            kwargs = {k: cast(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


@contextlib.contextmanager
def bf16_convolutions():
    """Every convolution's input, weight and bias cast to bf16 inside the block, as CPU autocast
    casts them outside ``torch.func.vmap`` (inside it autocast leaves a convolution in float32
    and refuses a mix of dtypes). A batch of per-image weights under vmap then runs each
    convolution in bf16 whatever dtype reaches it: a float32 bias (a classifier's, a ConvNeXt's
    depthwise convolution's), or a float32 input promoted by a float32 parameter before it (a
    layer scale, a LayerNorm's affine parameters)."""
    with _Bf16Convolutions():
        yield


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


def _after_fold(bn: nn.BatchNorm2d) -> nn.Module:
    """What stays of a folded batch norm: nothing (the identity), or the activation that timm's
    BatchNormAct2d holds inside (its dropout is off in inference)."""
    act = getattr(bn, "act", None)
    return act if isinstance(act, nn.Module) else nn.Identity()


def fold_stem(stem: nn.Module, family: str) -> nn.Module:
    """:func:`fold_batch_norms` for the setting ``rib.fold_stem``, naming the model's ``family``:
    a stem with a batch norm it cannot fold is refused (a ConfigError, which the pipeline reports as
    ``error: ...``: the folded copy would not compute what the stem computes); a stem with no batch norm (ConvNeXt's, a ViT's) runs as it
    is, with a warning that the setting does nothing there."""
    if not any(isinstance(m, nn.BatchNorm2d) for m in stem.modules()):
        warnings.warn(f"rib.fold_stem: the {family} model's stem holds no batch norm, nothing to "
                      f"fold; it runs unfolded", stacklevel=3)
    try:
        return fold_batch_norms(stem)
    except ValueError as exc:
        raise ConfigError(f"rib.fold_stem cannot fold the {family} model's stem ({exc}); run it "
                          f"with fold_stem=False") from exc


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
            setattr(m, bn_name, _after_fold(kids[bn_name]))
    left = [n for n, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise ValueError(f"cannot fold batch norms not directly after a convolution: {left}")
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded
