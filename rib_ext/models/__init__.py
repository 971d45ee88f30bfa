"""Networks: the CAM classifier (ResNet with frozen batch norm), its checkpoints, and the adapter
that makes other torchvision and timm classifiers follow the same protocol."""
from rib_ext.models.adapters import AdapterError, CAMClassifier, LinearCAMHead, adapt
from rib_ext.models.checkpoint import (
    MissingWeightsError,
    build_cam_net,
    load_backbone_weights,
    load_cam_checkpoint,
    load_cam_net,
    save_cam_net,
)
from rib_ext.models.resnet_cam import BACKBONES, CAMNet, FixedBatchNorm, convert_to_fixed_bn

__all__ = [
    "AdapterError",
    "CAMClassifier",
    "LinearCAMHead",
    "adapt",
    "BACKBONES",
    "CAMNet",
    "FixedBatchNorm",
    "MissingWeightsError",
    "build_cam_net",
    "convert_to_fixed_bn",
    "load_backbone_weights",
    "load_cam_checkpoint",
    "load_cam_net",
    "save_cam_net",
]
