"""Networks: the CAM classifier (ResNet with frozen batch norm) and its checkpoints."""
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
