"""The CAM classifier of IRN / RIB: a torchvision-layout ResNet with frozen batch norm.

Layout (IRN's ``net/resnet50_cam.py``, which the RIB authors reuse):

    stage1 = conv1, bn1, relu, maxpool, layer1      never trains
    stage2 = layer2                                  never trains; its output is detached
    stage3 = layer3                                  trains
    stage4 = layer4 (stride 1 in its first block)    trains
    classifier = 1x1 conv, no bias                   trains

With strides (2, 2, 2, 1) the output stride is 16: conv1 /2, maxpool /2, layer2 /2, layer3 /2.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

# Feature channels of layer4 for each supported depth (Bottleneck: 512 * 4; BasicBlock: 512).
BACKBONES: Dict[str, int] = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048,
                             "resnet_tiny": 256}

# A narrow ResNet-10 (one BasicBlock per stage, widths 32..256): the embedded demo's backbone,
# about 1/16 of ResNet-18's compute. Its pretrained weights ship with the package
# (rib_ext.models.pretrained: rib_ext:demo_world); it also trains from random weights.
TINY_WIDTHS = (32, 64, 128, 256)


def _tiny_resnet() -> torchvision.models.ResNet:
    from torchvision.models.resnet import BasicBlock

    net = torchvision.models.ResNet(BasicBlock, [1, 1, 1, 1])
    net.inplanes = TINY_WIDTHS[0]
    net.conv1 = nn.Conv2d(3, TINY_WIDTHS[0], 7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(TINY_WIDTHS[0])
    net.layer1 = net._make_layer(BasicBlock, TINY_WIDTHS[0], 1)
    for i, width in enumerate(TINY_WIDTHS[1:], start=2):
        setattr(net, f"layer{i}", net._make_layer(BasicBlock, width, 1, stride=2))
    return net

# torchvision module names that make up the backbone, in stage order.
TORCHVISION_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class FixedBatchNorm(nn.BatchNorm2d):
    """Batch norm that always normalises with its running statistics, in training mode too.

    The affine ``weight`` and ``bias`` stay parameters (stages 3 and 4 train them, as IRN does);
    the running statistics are never updated, so an output never depends on the rest of its batch.
    """

    # Set only for training from random weights (CAMNet(from_scratch=True)): with nothing to keep
    # fixed, batch statistics are what make a deep network trainable; they are learnt into the
    # running statistics, and a reloaded network is fixed again.
    use_batch_stats = False
    # Set by a data-parallel trainer: the batch statistics are those of the global batch, summed
    # over the ranks (torch's SyncBatchNorm refuses CPU tensors, and the gloo test runs there).
    sync_stats = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_stats = self.use_batch_stats and self.training
        if batch_stats and self.sync_stats:
            return self._synced_batch_norm(x)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=batch_stats, momentum=0.1 if batch_stats else 0.0,
                            eps=self.eps)


    def _synced_batch_norm(self, x: torch.Tensor) -> torch.Tensor:
        # Two passes (mean, then the squared deviations), as F.batch_norm's own kernel is stable;
        # the sums are differentiable, so each rank's gradient holds the other ranks' terms.
        from rib_ext import distributed

        dims = (0, 2, 3)
        n = distributed.all_reduce_tensor(torch.tensor(float(x.numel() // x.shape[1]), device=x.device))
        mean = distributed.sum_over_ranks(x.sum(dims)) / n
        centred = x - mean.view(1, -1, 1, 1)
        var = distributed.sum_over_ranks((centred * centred).sum(dims)) / n
        with torch.no_grad():  # as F.batch_norm: momentum 0.1, the unbiased variance
            self.running_mean.lerp_(mean, 0.1)
            self.running_var.lerp_(var * (n / (n - 1).clamp(min=1)), 0.1)
        scale = torch.rsqrt(var + self.eps) * self.weight
        return centred * scale.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def convert_to_fixed_bn(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` (in place) by a :class:`FixedBatchNorm`
    holding the same parameters and statistics. Returns ``module``."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, FixedBatchNorm):
            setattr(module, name, _fixed_copy(child))
        else:
            convert_to_fixed_bn(child)
    return module


def _fixed_copy(bn: nn.BatchNorm2d) -> FixedBatchNorm:
    if not (bn.affine and bn.track_running_stats):
        raise ValueError(f"cannot freeze {bn}: it needs affine parameters and running statistics")
    fixed = FixedBatchNorm(bn.num_features, eps=bn.eps, momentum=bn.momentum)
    fixed.load_state_dict(bn.state_dict())
    return fixed.to(device=bn.weight.device, dtype=bn.weight.dtype)


def _set_first_block_stride(layer: nn.Sequential, stride: int) -> None:
    # torchvision puts a stage's downsampling in its first block only: on the 3x3 conv
    # (Bottleneck.conv2 / BasicBlock.conv1) and on the 1x1 shortcut conv.
    first = layer[0]
    for m in first.modules():
        if isinstance(m, nn.Conv2d) and m.stride != (1, 1):
            m.stride = (stride, stride)
    first.stride = stride


def _torchvision_resnet(backbone: str, strides: Sequence[int]) -> torchvision.models.ResNet:
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {sorted(BACKBONES)}")
    strides = tuple(int(s) for s in strides)
    if len(strides) != 4 or any(s not in (1, 2) for s in strides):
        raise ValueError(f"strides must be 4 values, each 1 or 2 (conv1, layer2, layer3, layer4); "
                         f"got {strides}")
    net = _tiny_resnet() if backbone == "resnet_tiny" else getattr(torchvision.models, backbone)(weights=None)
    net.conv1.stride = (strides[0], strides[0])
    for layer, stride in zip((net.layer2, net.layer3, net.layer4), strides[1:]):
        _set_first_block_stride(layer, stride)
    return convert_to_fixed_bn(net)


class CAMNet(nn.Module):
    """Multi-label classifier whose 1x1 classifier applied to the feature map gives the CAM.

    Args:
        backbone: ``resnet18``, ``resnet34``, ``resnet50`` (the paper's), ``resnet101``, or
            ``resnet_tiny`` (a narrow ResNet-10 for CPU demo runs; pretrained on the demo world, no
            ImageNet weights exist).
        num_classes: K, foreground classes (20 for VOC, 80 for COCO).
        strides: of conv1, layer2, layer3, layer4 (the stem's max-pool always halves too);
            the default (2, 2, 2, 1) gives output stride 16.

    Shapes, for images ``x`` of shape [N, 3, H, W] and C feature channels (2048 / 512):
        ``stem(x)``             -> [N, C/4, H/8, W/8]  stage-2 output, detached
        ``head_features(x2)``   -> [N, C, H/16, W/16]
        ``features(x)``         -> [N, C, H/16, W/16]
        ``cam(x)``              -> [N, K, H/16, W/16]  raw (pre-ReLU) class activation maps
        ``forward(x)``          -> [N, K]              logits = spatial mean of ``cam(x)``
    (sizes rounded up where H, W are not multiples of 16.)

    Only stages 3, 4 and the classifier can ever receive gradients; stage 1 and 2 parameters have
    ``requires_grad=False`` and the stage-2 output is detached. All batch norms are
    :class:`FixedBatchNorm`, so train and eval mode compute the same function.
    """

    def __init__(self, backbone: str = "resnet50", num_classes: int = 20,
                 strides: Sequence[int] = (2, 2, 2, 1), from_scratch: bool = False):
        super().__init__()
        # from_scratch: training from random weights (the demo's earlier recipe), where a frozen random
        # stem would leave stages 1-2 as random features and fixed BN would be the identity: every
        # stage trains, with batch-statistics BN. The authors' setting (ImageNet weights) is False.
        self.train_stem = bool(from_scratch)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        net = _torchvision_resnet(backbone, strides)
        self.backbone_name = backbone
        self.num_classes = int(num_classes)
        self.strides = tuple(int(s) for s in strides)
        self.feature_channels = BACKBONES[backbone]
        # Named children keep the torchvision names visible in our own state-dict keys
        # (e.g. stage3.layer3.0.conv1.weight), which makes checkpoints easy to inspect.
        self.stage1 = nn.Sequential(OrderedDict(
            (name, getattr(net, name)) for name in ("conv1", "bn1", "relu", "maxpool", "layer1")))
        self.stage2 = nn.Sequential(OrderedDict(layer2=net.layer2))
        self.stage3 = nn.Sequential(OrderedDict(layer3=net.layer3))
        self.stage4 = nn.Sequential(OrderedDict(layer4=net.layer4))
        self.classifier = nn.Conv2d(self.feature_channels, self.num_classes, 1, bias=False)
        for m in self.modules():
            if isinstance(m, FixedBatchNorm):
                m.use_batch_stats = self.train_stem
        self._freeze_stem()

    @property
    def output_stride(self) -> int:
        s = self.strides
        return s[0] * 2 * s[1] * s[2] * s[3]

    def _freeze_stem(self) -> None:
        if self.train_stem:
            return
        for p in self.stem_parameters():
            p.requires_grad_(False)

    def sync_batch_stats(self, on: bool) -> None:
        """Batch statistics over the ranks of a data-parallel run (training from scratch only: the
        frozen batch norms of the authors' setting have none)."""
        for m in self.modules():
            if isinstance(m, FixedBatchNorm):
                m.sync_stats = bool(on) and m.use_batch_stats

    def stem_parameters(self) -> List[nn.Parameter]:
        return list(self.stage1.parameters()) + list(self.stage2.parameters())

    def train(self, mode: bool = True) -> "CAMNet":
        super().train(mode)
        if self.train_stem:
            return self
        # The stem never trains: keep it in eval mode and frozen whatever the caller does.
        self.stage1.eval()
        self.stage2.eval()
        self._freeze_stem()
        return self

    def stem_module(self) -> nn.Module:
        """The frozen stem (stages 1-2) as one module, sharing this model's layers."""
        return nn.Sequential(self.stage1, self.stage2)

    def head_modules(self) -> "OrderedDict[str, nn.Module]":
        """The adapted layers before the classifier, by name (what RIB's engine adapts)."""
        return OrderedDict(stage3=self.stage3, stage4=self.stage4)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x2 = self.stage2(self.stage1(x))
        return x2 if self.train_stem else x2.detach()

    def head_features(self, x2: torch.Tensor) -> torch.Tensor:
        return self.stage4(self.stage3(x2))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_features(self.stem(x))

    def cam_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        return F.conv2d(feats, self.classifier.weight)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_from_features(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GAP then the 1x1 classifier (IRN's order); equal to the mean of the CAM since both are linear.
        pooled = self.features(x).mean(dim=(2, 3), keepdim=True)
        return self.classifier(pooled).flatten(1)

    def trainable_parameters(self) -> Tuple[List[nn.Parameter], List[nn.Parameter]]:
        """(backbone, classifier) parameter lists for the two learning rates.

        IRN returns every backbone parameter, but stages 1-2 never get a gradient (frozen and
        detached), and SGD skips parameters without a gradient, weight decay included; listing only
        stages 3-4 (their convs and fixed-BN affine weights) is therefore the same optimisation.
        """
        stem = self.stem_parameters() if self.train_stem else []
        return (stem + list(self.stage3.parameters()) + list(self.stage4.parameters()),
                [self.classifier.weight])

    def named_trainable_parameters(self) -> Dict[str, nn.Parameter]:
        """Name -> parameter for the trainable part (for ``torch.func.functional_call``)."""
        trainable = {id(p) for group in self.trainable_parameters() for p in group}
        return {n: p for n, p in self.named_parameters() if id(p) in trainable}

    def torchvision_view(self) -> nn.Module:
        """A module sharing this backbone's submodules under torchvision's names (conv1, bn1,
        layer1..layer4), so torchvision state dicts load into it key for key."""
        view = nn.Module()
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4):
            for name, module in stage.named_children():
                view.add_module(name, module)
        return view
