"""The part of the classifier RIB adapts, and how the engine calls it under per-image weights.

:class:`CAMHead` gathers the adapted layers and the classifier as one module;
:class:`FunctionalHead` calls it with ``torch.func.functional_call`` under one image's weights, or
under a group's stacked weights in one ``vmap`` (the other images' crops share a size). For bf16
under vmap the fixed batch norms become :class:`AffineBatchNorm`, which vmap can batch. Kept apart
from the engine, which only schedules the steps.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, Optional

import torch
import torch.nn as nn
from torch.func import functional_call

from rib_ext.precision import bf16_convolutions


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """bf16 autocast output back to float32; float32 and float64 (the exactness tests) unchanged."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class CAMHead(nn.Module):
    """What RIB adapts, as shared modules: the classifier's adapted layers (a CAMNet's stages 3-4,
    an adapted model's body: ``model.head_modules()``) and its classifier applied per location,
    from the frozen stem's output to the raw CAM."""

    def __init__(self, model):
        super().__init__()
        self.parts = list(model.head_modules())
        for name, module in model.head_modules().items():
            self.add_module(name, module)
        self.classifier = model.classifier

    def forward(self, x2: torch.Tensor) -> torch.Tensor:
        for name in self.parts:
            x2 = getattr(self, name)(x2)
        return self.classifier(x2)


class AffineBatchNorm(nn.Module):
    """A fixed batch norm as the per-channel affine map it is, computed in float32 and returned in
    the input's dtype: what autocast's mixed-dtype batch norm does for a bf16 input, written so
    that vmap can batch it over per-image affine parameters (its batch-norm rule cannot)."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.eps = bn.eps
        self.weight, self.bias = bn.weight, bn.bias
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)
        # timm's BatchNormAct2d is a batch norm with its activation (and a dropout, off in eval)
        # inside: kept, so that the copy computes what the layer computes.
        self.act = getattr(bn, "act", None) if isinstance(getattr(bn, "act", None), nn.Module) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        y = (x.float() * scale.view(-1, 1, 1) + shift.view(-1, 1, 1)).to(x.dtype)
        return y if self.act is None else self.act(y)


def affine_copy(head: CAMHead) -> CAMHead:
    """A copy of ``head`` whose fixed batch norms are :class:`AffineBatchNorm` (same names)."""
    head = copy.deepcopy(head)
    for m in list(head.modules()):
        for name, child in m.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(m, name, AffineBatchNorm(child))
    return head


class FunctionalHead:
    """``head`` (a :class:`CAMHead`) called under weights given per call, in the order of
    ``names`` (the head's trainable parameters), its buffers its own.

    Args:
        head: the shared module; its own parameters are never updated.
        names: the trainable parameters' names, the order of every weight list.
        precision: the engine's precision (bf16 casts for the vmapped head).
        batching: ``"loop"`` (one call per image) or ``"vmap"`` for the other images' CAMs.
        autocast: returns the context the head runs in (the engine's, read at each call).
    """

    def __init__(self, head: CAMHead, names: list[str], precision: str, batching: str,
                 autocast: Callable):
        self.head = head
        self.names = names
        self.buffers = {n: b for n, b in head.named_buffers()}
        self.precision = precision
        self.batching = batching
        self.autocast = autocast
        self._affine: Optional[CAMHead] = None  # the bf16 vmap head (built when first needed)

    def cam(self, params: list, x2: torch.Tensor) -> torch.Tensor:
        """Raw CAMs [N, K, h, w] under one image's weights ``params``, float32 whatever the
        precision (the maps accumulate and the loss pools in float32)."""
        params = dict(zip(self.names, params))
        with self.autocast():
            cam = functional_call(self.head, (params, self.buffers), (x2,))
        return _at_least_float32(cam)

    def other_cams(self, params: list[list], x2_split) -> list[torch.Tensor]:
        """The other images' CAMs under each image's own weights (``params``, one list per
        image): one call per image, or one ``vmap`` over the group's stacked weights (the crops
        share a size, the targets do not)."""
        if self.batching == "loop" or len(params) == 1:
            return [self.cam(ps, x2o) for ps, x2o in zip(params, x2_split)]
        stacked = [torch.stack(ps) for ps in zip(*params)]
        x2 = torch.stack(list(x2_split))
        module = self.head
        if self.precision == "bf16":
            # CPU autocast does not reach inside vmap, and vmap's batch-norm rule refuses a bf16
            # input with (batched) float32 affine parameters: cast as autocast would (convolution
            # weights and inputs to bf16) and run the fixed batch norms as their float32 affine
            # map, so the vmapped head computes what the loop's autocast head computes.
            stacked = [p.to(torch.bfloat16) if p.dim() == 5 else p for p in stacked]
            x2 = x2.to(torch.bfloat16)
            if self._affine is None:
                self._affine = affine_copy(self.head)
            module = self._affine

        def head(params, x2):
            return functional_call(module, (dict(zip(self.names, params)), self.buffers), (x2,))

        # Inside vmap CPU autocast casts no convolution either: a float32 bias, or a float32 input
        # a LayerNorm or layer scale promoted, would meet bf16 weights; cast each as autocast would.
        bf16 = bf16_convolutions() if self.precision == "bf16" else contextlib.nullcontext()
        with self.autocast(), bf16:
            cams = torch.func.vmap(head)(stacked, x2)
        return list(_at_least_float32(cams))
