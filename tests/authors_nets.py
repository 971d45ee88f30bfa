"""Transcriptions of the IRN / RIB authors' networks (``net/resnet50_cam.py``, ``net/resnet50_irn.py``
with its ``EdgeDisplacement``) built on a torchvision ResNet-50 with random weights, to produce
state dicts in their layout and the outputs their forward computes."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


def _randomise(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(2 + torch.rand(m.running_var.shape, generator=g))


def authors_resnet50() -> torchvision.models.ResNet:
    """Their resnet50(strides=(2, 2, 2, 1)): torchvision's, layer4 at stride 1, no fc, BN frozen
    (their FixedBatchNorm = batch norm with running statistics: eval mode)."""
    net = torchvision.models.resnet50(weights=None)
    net.layer4[0].conv2.stride = (1, 1)
    net.layer4[0].downsample[0].stride = (1, 1)
    del net.fc, net.avgpool
    return net


class AuthorsCAM(nn.Module):
    """Their CAM network: modules registered as stage1..4 and again under resnet50 / backbone."""

    def __init__(self, n_cls: int = 20, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.resnet50 = authors_resnet50()
        r = self.resnet50
        self.stage1 = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1)
        self.stage2 = nn.Sequential(r.layer2)
        self.stage3 = nn.Sequential(r.layer3)
        self.stage4 = nn.Sequential(r.layer4)
        self.classifier = nn.Conv2d(2048, n_cls, 1, bias=False)
        self.backbone = nn.ModuleList([self.stage1, self.stage2, self.stage3, self.stage4])
        self.newly_added = nn.ModuleList([self.classifier])
        _randomise(self, seed)
        self.eval()

    def forward(self, x):  # their CAM.forward(x) without is_cls
        x = self.stage1(x)
        x = self.stage2(x).detach()
        x = self.stage3(x)
        x = self.stage4(x)
        return F.conv2d(x, self.classifier.weight)


def _head(cin, cout, groups, up=None, out=None):
    layers = [nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(groups, cout)]
    if up:
        layers.append(nn.Upsample(scale_factor=up, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class AuthorsIRN(nn.Module):
    """Their IRN ``Net`` and ``EdgeDisplacement.forward`` (padding to ``crop_size`` unless coco)."""

    def __init__(self, seed: int = 0, crop_size: int = 512):
        super().__init__()
        torch.manual_seed(seed)
        self.crop_size, self.stride = crop_size, 4
        self.resnet50 = authors_resnet50()
        r = self.resnet50
        self.stage1 = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
        self.stage2 = nn.Sequential(r.layer1)
        self.stage3 = nn.Sequential(r.layer2)
        self.stage4 = nn.Sequential(r.layer3)
        self.stage5 = nn.Sequential(r.layer4)
        self.mean_shift = MeanShift()
        self.fc_edge1 = _head(64, 32, 4)
        self.fc_edge2 = _head(256, 32, 4)
        self.fc_edge3 = _head(512, 32, 4, up=2)
        self.fc_edge4 = _head(1024, 32, 4, up=4)
        self.fc_edge5 = _head(2048, 32, 4, up=4)
        self.fc_edge6 = nn.Conv2d(160, 1, 1, bias=True)
        self.fc_dp1 = _head(64, 64, 8)
        self.fc_dp2 = _head(256, 128, 16)
        self.fc_dp3 = _head(512, 256, 16)
        self.fc_dp4 = _head(1024, 256, 16, up=2)
        self.fc_dp5 = _head(2048, 256, 16, up=2)
        self.fc_dp6 = _head(768, 256, 16, up=2)
        self.fc_dp7 = nn.Sequential(nn.Conv2d(448, 256, 1, bias=False), nn.GroupNorm(16, 256),
                                    nn.ReLU(inplace=True), nn.Conv2d(256, 2, 1, bias=False),
                                    self.mean_shift)
        self.backbone = nn.ModuleList([self.stage1, self.stage2, self.stage3, self.stage4,
                                       self.stage5])
        self.edge_layers = nn.ModuleList([self.fc_edge1, self.fc_edge2, self.fc_edge3,
                                          self.fc_edge4, self.fc_edge5, self.fc_edge6])
        self.dp_layers = nn.ModuleList([self.fc_dp1, self.fc_dp2, self.fc_dp3, self.fc_dp4,
                                        self.fc_dp5, self.fc_dp6, self.fc_dp7])
        _randomise(self, seed)
        with torch.no_grad():
            self.mean_shift.running_mean.copy_(torch.tensor([0.3, -0.2]))
        self.eval()

    def net_forward(self, x):
        x1 = self.stage1(x).detach()
        x2 = self.stage2(x1).detach()
        x3 = self.stage3(x2).detach()
        x4 = self.stage4(x3).detach()
        x5 = self.stage5(x4).detach()
        e1, e2 = self.fc_edge1(x1), self.fc_edge2(x2)
        e3 = self.fc_edge3(x3)[..., :e2.size(2), :e2.size(3)]
        e4 = self.fc_edge4(x4)[..., :e2.size(2), :e2.size(3)]
        e5 = self.fc_edge5(x5)[..., :e2.size(2), :e2.size(3)]
        edge_out = self.fc_edge6(torch.cat([e1, e2, e3, e4, e5], dim=1))
        d1, d2, d3 = self.fc_dp1(x1), self.fc_dp2(x2), self.fc_dp3(x3)
        d4 = self.fc_dp4(x4)[..., :d3.size(2), :d3.size(3)]
        d5 = self.fc_dp5(x5)[..., :d3.size(2), :d3.size(3)]
        up3 = self.fc_dp6(torch.cat([d3, d4, d5], dim=1))[..., :d2.size(2), :d2.size(3)]
        return edge_out, self.fc_dp7(torch.cat([d1, d2, up3], dim=1))

    def edge_displacement(self, x, coco=False):
        feat = (x.size(2) - 1) // self.stride + 1, (x.size(3) - 1) // self.stride + 1
        if not coco:
            x = F.pad(x, [0, self.crop_size - x.size(3), 0, self.crop_size - x.size(2)])
        edge_out, dp_out = self.net_forward(x)
        edge_out = edge_out[..., :feat[0], :feat[1]]
        dp_out = dp_out[..., :feat[0], :feat[1]]
        return torch.sigmoid(edge_out[0] / 2 + edge_out[1].flip(-1) / 2), dp_out[0]


class MeanShift(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(2))

    def forward(self, x):
        if self.training:
            return x
        return x - self.running_mean.view(1, 2, 1, 1)
