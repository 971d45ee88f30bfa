"""DeepLab-v2: a dilated ResNet (output stride 8) with frozen batch norm and the ASPP head.

Backbone: torchvision's ResNet layout (conv1, bn1, layer1..layer4, so torchvision ImageNet files load
key for key) with the strides of layer3 and layer4 replaced by dilation, as torchvision's
``replace_stride_with_dilation=[False, True, True]`` does: layer3's first block keeps dilation 1 and
the others use 2; layer4's first uses 2 and the others 4. torchvision refuses dilation in BasicBlock,
so the conversion is done here, the same way for every depth (resnet18/34 serve CPU runs).

Head (DeepLab-v2's ASPP): four 3x3 convolutions on the last feature map at dilations 6, 12, 18, 24,
each mapping to ``num_classes`` (background included) with a bias; their outputs are summed.

Batch norm is frozen: running statistics in training too, affine parameters not trained (DeepLab's
practice with batches of 10, where batch statistics would be noise).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from rib_ext.checkpoints import check_num_classes, read_checkpoint, write_checkpoint
from rib_ext.models import FixedBatchNorm, convert_to_fixed_bn, load_backbone_weights
from rib_ext.models.checkpoint import check_weights_choice, warn_random_init
from rib_ext.models.resnet_cam import BACKBONES, TORCHVISION_PARTS

MODEL_FORMAT = "rib_ext.deeplab_v2"
MODEL_VERSION = 1


def dilate_stage(layer: nn.Sequential, first: int, rest: int) -> None:
    """Remove ``layer``'s stride and dilate its 3x3 convolutions: ``first`` in block 0, ``rest``
    after (torchvision's rule: a dilated stage's first block keeps the previous dilation)."""
    for i, block in enumerate(layer):
        d = first if i == 0 else rest
        for m in block.modules():
            if isinstance(m, nn.Conv2d):
                m.stride = (1, 1)
                if m.kernel_size == (3, 3):
                    m.dilation = (d, d)
                    m.padding = (d, d)
        block.stride = 1


def dilated_resnet(backbone: str) -> torchvision.models.ResNet:
    """A torchvision ResNet at output stride 8, frozen batch norm, no classifier (``fc``)."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {sorted(BACKBONES)}")
    net = getattr(torchvision.models, backbone)(weights=None)
    dilate_stage(net.layer3, 1, 2)
    dilate_stage(net.layer4, 2, 4)
    del net.fc, net.avgpool
    convert_to_fixed_bn(net)
    for m in net.modules():
        if isinstance(m, FixedBatchNorm):
            m.weight.requires_grad_(False)
            m.bias.requires_grad_(False)
    return net


class ASPP(nn.Module):
    """DeepLab-v2's head: parallel dilated 3x3 convolutions, outputs summed."""

    def __init__(self, in_channels: int, num_classes: int, dilations: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True) for d in dilations)
        for conv in self.branches:
            # DeepLab's initialisation of the new layers (N(0, 0.01), zero bias).
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for conv in self.branches[1:]:
            out = out + conv(x)
        return out


class DeepLabV2(nn.Module):
    """Semantic segmentation network.

    Args:
        backbone: ``resnet101`` (the paper's), ``resnet50``, ``resnet34`` or ``resnet18``.
        num_classes: C output classes, background included (21 for VOC, 81 for COCO).
        dilations: of the ASPP branches.

    Shapes for ``x`` [N, 3, H, W]: ``features(x)`` [N, F, h, w] and ``logits(x)`` [N, C, h, w] with
    ``h = ceil(H / 8)``, ``w = ceil(W / 8)``; ``forward(x)`` [N, C, H, W], the logits upsampled
    (bilinear) to the input size.
    """

    output_stride = 8

    def __init__(self, backbone: str = "resnet101", num_classes: int = 21,
                 dilations: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"num_classes (background included) must be >= 2, got {num_classes}")
        self.backbone_name = backbone
        self.num_classes = int(num_classes)
        self.dilations = tuple(int(d) for d in dilations)
        self.backbone = dilated_resnet(backbone)
        self.aspp = ASPP(BACKBONES[backbone], self.num_classes, self.dilations)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        for name in TORCHVISION_PARTS:
            x = getattr(b, name)(x)
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.aspp(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.logits(x), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def torchvision_view(self) -> nn.Module:
        """The backbone under torchvision's names (what :func:`load_backbone_weights` fills)."""
        return self.backbone

    def parameter_groups(self) -> Tuple[List[nn.Parameter], List[nn.Parameter], List[nn.Parameter]]:
        """(backbone, head weights, head biases): the three learning rates of DeepLab-v2."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        weights = [conv.weight for conv in self.aspp.branches]
        biases = [conv.bias for conv in self.aspp.branches]
        return backbone, weights, biases


def build_deeplab(backbone: str = "resnet101", num_classes: int = 21,
                  weights: Optional[os.PathLike | str] = None, random_init: bool = False,
                  dilations: Sequence[int] = (6, 12, 18, 24)) -> DeepLabV2:
    """A :class:`DeepLabV2` with ImageNet backbone weights from ``weights`` (a torchvision ResNet
    state-dict file), or random weights when ``random_init`` (warns). Exactly one of the two."""
    check_weights_choice(backbone, weights, random_init)
    model = DeepLabV2(backbone, num_classes, dilations)
    if random_init:
        warn_random_init(f"DeepLab-v2 {backbone}", "the segmentation")
        return model
    return load_backbone_weights(model, weights)


@torch.no_grad()
def calibrate_batch_norm(model: DeepLabV2, batches: Iterable[torch.Tensor]) -> None:
    """Set the frozen BN statistics from training images (random initialisation only).

    A randomly initialised frozen BN is the identity, and activations then grow through the
    residual stages until the loss overflows; ImageNet weights bring real statistics instead.
    Each BN takes the mean over ``batches`` of its own input's per-channel mean and variance (a
    pre-hook), so every layer is calibrated on the output of already calibrated layers.
    """
    bns = [m for m in model.modules() if isinstance(m, FixedBatchNorm)]
    seen = {bn: 0 for bn in bns}

    def hook(bn, inputs):
        x = inputs[0].float()
        n = seen[bn]
        bn.running_mean.mul_(n / (n + 1)).add_(x.mean(dim=(0, 2, 3)) / (n + 1))
        bn.running_var.mul_(n / (n + 1)).add_(x.var(dim=(0, 2, 3)) / (n + 1))
        seen[bn] = n + 1

    handles = [bn.register_forward_pre_hook(hook) for bn in bns]
    try:
        for x in batches:
            model.features(x)
    finally:
        for h in handles:
            h.remove()


def save_deeplab(path: os.PathLike | str, model: DeepLabV2, meta: Optional[Dict[str, Any]] = None) -> None:
    """Save a trained network atomically; ``meta`` must hold plain Python values only."""
    record = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "backbone": model.backbone_name,
              "num_classes": model.num_classes, "dilations": list(model.dilations),
              "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
              "meta": dict(meta or {})}
    write_checkpoint(path, record)


def load_deeplab(path: os.PathLike | str, device: torch.device | str = "cpu",
                 num_classes: Optional[int] = None) -> DeepLabV2:
    """Rebuild the network saved by :func:`save_deeplab`, on ``device``, in eval mode;
    ``num_classes`` (background included), when given, must be the saved network's."""
    record = read_checkpoint(path, MODEL_FORMAT, MODEL_VERSION, "rib_ext DeepLab-v2 model",
                             " (the segment stage's training writes it)")
    if num_classes is not None and "num_classes" in record:
        check_num_classes(path, record["num_classes"], num_classes,
                          "the dataset (background included)")
    try:
        model = DeepLabV2(record["backbone"], record["num_classes"], record["dilations"])
        model.load_state_dict(record["state_dict"], strict=True)
    except (KeyError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path}: cannot rebuild the DeepLab-v2 network: {err}") from err
    return model.to(device).eval()
