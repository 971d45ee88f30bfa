"""The inter-pixel relation network (IRN): a frozen ResNet with a boundary and a displacement branch.

Backbone stages (torchvision names; strides (2, 2, 2, 1) as the CAM network):

    stage1 = conv1, bn1, relu, maxpool   stride 4     64 ch
    stage2 = layer1                      stride 4     64 * e ch   (e = 4 for Bottleneck ResNets)
    stage3 = layer2                      stride 8     128 * e
    stage4 = layer3                      stride 16    256 * e
    stage5 = layer4                      stride 16    512 * e

All five are frozen (fixed batch norm, no gradient, outputs detached); only the two heads train.
For an input [B, 3, H, W] both outputs are on the stride-4 grid [ceil(H/4), ceil(W/4)].
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from rib_ext.checkpoints import read_checkpoint, write_checkpoint
from rib_ext.irn.authors import irn_state_from_authors, is_authors_irn_state
from rib_ext.models import BACKBONES, CAMNet, load_backbone_weights, load_cam_checkpoint
from rib_ext.models.checkpoint import check_weights_choice, warn_random_init
from rib_ext.models.resnet_cam import TINY_WIDTHS

IRN_CHECKPOINT_FORMAT = "rib_ext.irn_net"
IRN_CHECKPOINT_VERSION = 1

STAGE_STRIDES = (4, 4, 8, 16, 16)
EDGE_CHANNELS = 32
DISP_CHANNELS = ((64, 8), (128, 16), (256, 16), (256, 16), (256, 16))  # (channels, GN groups)


def stage_channels(backbone: str) -> Tuple[int, ...]:
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {sorted(BACKBONES)}")
    if backbone == "resnet_tiny":
        return (TINY_WIDTHS[0],) + TINY_WIDTHS
    e = BACKBONES[backbone] // 512
    return (64, 64 * e, 128 * e, 256 * e, 512 * e)


class ConvGNReLU(nn.Module):
    """1x1 conv (no bias) + GroupNorm, bilinear upsampling by ``scale``, then ReLU (IRN's order)."""

    def __init__(self, cin: int, cout: int, groups: int, scale: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.norm = nn.GroupNorm(groups, cout)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        if self.scale != 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return F.relu(x)


class MeanShift(nn.Module):
    """Subtracts the running mean of the displacement field at inference.

    Training leaves the field as is and only updates the running mean (IRN's ``MeanShift``: a
    BatchNorm used for its running mean, momentum 0.1), so inference removes the drift common to
    all pixels.
    """

    def __init__(self, channels: int = 2, momentum: float = 0.1):
        super().__init__()
        self.momentum = momentum
        # Set by a data-parallel trainer: the mean is the global batch's (summed over the ranks),
        # so every rank keeps the running mean one process would.
        self.sync_across_ranks = False
        self.register_buffer("running_mean", torch.zeros(channels))

    def batch_mean(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sync_across_ranks:
            return x.mean(dim=(0, 2, 3))
        from rib_ext import distributed

        n = torch.tensor(float(x.numel() // x.shape[1]), device=x.device, dtype=x.dtype)
        total = distributed.all_reduce_tensor(torch.cat([x.sum(dim=(0, 2, 3)), n.view(1)]))
        return total[:-1] / total[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.running_mean.lerp_(self.batch_mean(x.detach()), self.momentum)
            return x
        return x - self.running_mean.view(1, -1, 1, 1)


def _crop(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x[..., :like.shape[-2], :like.shape[-1]]


class IRNet(nn.Module):
    """Boundary + displacement network of IRN on a frozen ResNet (see the module docstring).

    ``forward(x)`` -> (boundary logits [B, 1, h, w], displacement field [B, 2, h, w]) at stride 4;
    the displacement is in stride-4 pixels, (dy, dx).
    """

    def __init__(self, backbone: str = "resnet50", mean_shift_momentum: float = 0.1):
        super().__init__()
        channels = stage_channels(backbone)
        self.backbone_name = backbone
        tv = CAMNet(backbone, num_classes=1).torchvision_view()  # fixed BN, strides (2, 2, 2, 1)
        self.stages = nn.ModuleList([
            nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool),
            tv.layer1, tv.layer2, tv.layer3, tv.layer4])
        for p in self.stages.parameters():
            p.requires_grad_(False)

        self.edge_heads = nn.ModuleList(
            ConvGNReLU(c, EDGE_CHANNELS, 4, s // 4) for c, s in zip(channels, STAGE_STRIDES))
        self.edge_out = nn.Conv2d(5 * EDGE_CHANNELS, 1, 1, bias=True)

        self.disp_heads = nn.ModuleList(
            ConvGNReLU(c, dc, g, s // 8 if s > 8 else 1)
            for c, (dc, g), s in zip(channels, DISP_CHANNELS, STAGE_STRIDES))
        deep = sum(dc for dc, _ in DISP_CHANNELS[2:])
        self.disp_merge = ConvGNReLU(deep, 256, 16, scale=2)
        shallow = DISP_CHANNELS[0][0] + DISP_CHANNELS[1][0] + 256
        self.disp_out = nn.Sequential(ConvGNReLU(shallow, 256, 16), nn.Conv2d(256, 2, 1, bias=False))
        self.mean_shift = MeanShift(2, mean_shift_momentum)

    def train(self, mode: bool = True) -> "IRNet":
        super().train(mode)
        self.stages.eval()
        return self

    def backbone_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x).detach()
            feats.append(x)
        return feats

    def boundary_logits(self, feats: List[torch.Tensor]) -> torch.Tensor:
        edges = [head(f) for head, f in zip(self.edge_heads, feats)]
        edges = [_crop(e, edges[1]) for e in edges]
        return self.edge_out(torch.cat(edges, dim=1))

    def displacement(self, feats: List[torch.Tensor]) -> torch.Tensor:
        d1, d2, d3, d4, d5 = (head(f) for head, f in zip(self.disp_heads, feats))
        deep = self.disp_merge(torch.cat([d3, _crop(d4, d3), _crop(d5, d3)], dim=1))
        out = self.disp_out(torch.cat([d1, d2, _crop(deep, d2)], dim=1))
        return self.mean_shift(out)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone_features(x)
        return self.boundary_logits(feats), self.displacement(feats)

    def parameter_groups(self) -> Tuple[List[nn.Parameter], List[nn.Parameter]]:
        """(boundary branch, displacement branch): IRN trains the second at 10x the lr."""
        edge = list(self.edge_heads.parameters()) + list(self.edge_out.parameters())
        disp = (list(self.disp_heads.parameters()) + list(self.disp_merge.parameters())
                + list(self.disp_out.parameters()))
        return edge, disp

    def backbone_view(self) -> nn.Module:
        """The backbone under torchvision's module names (for loading torchvision state dicts)."""
        view = nn.Module()
        names = ("conv1", "bn1", "relu", "maxpool")
        for name, module in zip(names, self.stages[0]):
            view.add_module(name, module)
        for i, stage in enumerate(self.stages[1:], start=1):
            view.add_module(f"layer{i}", stage)
        return view


@torch.no_grad()
def infer_boundary(net: IRNet, views: torch.Tensor, pad_to: Optional[int] = None) -> torch.Tensor:
    """Boundary probabilities [ceil(H/4), ceil(W/4)] of one image at scale 1.0.

    ``views`` [2, 3, H, W]: the normalised image and its horizontal mirror. The mirror's logits are
    flipped back and averaged with the image's before the sigmoid (IRN's EdgeDisplacement).
    ``pad_to``: each view is first padded with zeros on the right and bottom to this size, as IRN's
    and RIB's VOC inference pads to 512 (GroupNorm then sees the padding; the map changes
    everywhere); ``None`` runs unpadded (RIB's COCO path).
    """
    if views.dim() != 4 or views.shape[0] != 2:
        raise ValueError(f"expected views [2, 3, H, W] (image, mirror), got {tuple(views.shape)}")
    h, w = (views.shape[2] + 3) // 4, (views.shape[3] + 3) // 4
    if pad_to is not None:
        views = F.pad(views, (0, max(0, pad_to - views.shape[3]), 0, max(0, pad_to - views.shape[2])))
    logits = net.boundary_logits(net.backbone_features(views))[:, 0, :h, :w]
    return torch.sigmoid((logits[0] + logits[1].flip(-1)) / 2)


# ------------------------------------------------------------------------------------- weights

def init_backbone(net: IRNet, weights: str | os.PathLike) -> IRNet:
    """Load the backbone from a torchvision ResNet checkpoint (IRN's ImageNet start) or from a
    rib_ext CAM-network checkpoint (its trained backbone; for setups without ImageNet weights)."""
    path = Path(weights)
    cam = CAMNet(net.backbone_name, num_classes=1)
    record = _cam_record(path)
    if record is None:
        load_backbone_weights(cam, path)  # raises, naming the file, when it is neither kind
    else:
        if record["backbone"] != net.backbone_name:
            raise ValueError(f"{path}: a {record['backbone']} CAM network, but the IRN backbone is "
                             f"{net.backbone_name}")
        state = {k: v for k, v in record["state_dict"].items() if not k.startswith("classifier.")}
        missing, unexpected = cam.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("classifier.")]
        if missing or unexpected:
            raise ValueError(f"{path}: CAM network backbone does not match {net.backbone_name}: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    net.backbone_view().load_state_dict(cam.torchvision_view().state_dict())
    return net


def _cam_record(path: Path) -> Optional[Dict[str, Any]]:
    """The CAM checkpoint record of ``path``, or None when the file is something else."""
    if not path.is_file():
        return None
    try:
        return load_cam_checkpoint(path)
    except ValueError:
        return None


def build_irnet(backbone: str, weights: Optional[str] = None, random_init: bool = False,
                mean_shift_momentum: float = 0.1) -> IRNet:
    """An :class:`IRNet` whose backbone comes from ``weights``, or random when ``random_init``."""
    check_weights_choice(backbone, weights, random_init,
                         " (IRN may also start from a trained rib_ext CAM network)")
    net = IRNet(backbone, mean_shift_momentum)
    if weights is None:
        warn_random_init(f"IRN {backbone}", "boundaries and masks")
        return net
    return init_backbone(net, weights)


def save_irnet(path: str | os.PathLike, net: IRNet, meta: Optional[Dict[str, Any]] = None) -> None:
    record = {"format": IRN_CHECKPOINT_FORMAT, "version": IRN_CHECKPOINT_VERSION,
              "backbone": net.backbone_name,
              "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
              "meta": dict(meta or {})}
    write_checkpoint(path, record)


def load_irnet(path: str | os.PathLike, device: torch.device | str = "cpu") -> IRNet:
    """The network saved by :func:`save_irnet`, on ``device``, in eval mode. The IRN / RIB
    authors' ``res50_irn.pth`` state dicts load too (:mod:`rib_ext.irn.authors`)."""
    authors_net = irnet_from_authors(
        read_checkpoint(path, None, None, "IRN checkpoint", " (train_irn writes it)"), str(path))
    if authors_net is not None:
        return authors_net.to(device).eval()
    record = read_checkpoint(path, IRN_CHECKPOINT_FORMAT, IRN_CHECKPOINT_VERSION,
                             "rib_ext IRN checkpoint", " (train_irn writes it)")
    net = IRNet(record["backbone"])
    try:
        net.load_state_dict(record["state_dict"], strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: state dict does not match a {record['backbone']} IRNet: {err}") from err
    return net.to(device).eval()


def irnet_from_authors(obj: Any, source: str = "checkpoint") -> Optional[IRNet]:
    """A ResNet-50 :class:`IRNet` holding the authors' IRN weights, or None when ``obj`` is not
    in their layout."""
    if not is_authors_irn_state(obj):
        return None
    state = irn_state_from_authors(obj, source)
    net = IRNet("resnet50")
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: authors' IRN checkpoint does not fit a ResNet-50 IRNet: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return net
