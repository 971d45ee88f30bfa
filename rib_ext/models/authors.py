"""The IRN / RIB authors' published checkpoints, converted to our networks.

``res50_cam.pth`` (the classifier, IRN's ``net/resnet50_cam.py``): a state dict with
``stage1.0.*`` (conv1), ``stage1.1.*`` (bn1), ``stage1.4.*`` (layer1), ``stage2.0.*`` (layer2),
``stage3.0.*`` (layer3), ``stage4.0.*`` (layer4), ``classifier.weight`` [K, 2048, 1, 1], plus the
same tensors again under ``resnet50.*``, ``backbone.*`` and ``newly_added.*`` (their modules are
registered twice). Everything maps onto :class:`CAMNet` (strides (2, 2, 2, 1), fixed batch norm).

``res50_irn.pth`` (IRN's ``net/resnet50_irn.py``): ``stage1.0/1`` (conv1, bn1), ``stage2.0`` ..
``stage5.0`` (layer1..layer4), ``fc_edge1..5`` (1x1 conv ``.0`` + GroupNorm ``.1``), ``fc_edge6``
(the boundary output), ``fc_dp1..5`` (per-stage displacement heads), ``fc_dp6`` (the deep merge),
``fc_dp7.0/.1/.3`` (conv, GroupNorm, output conv), ``mean_shift.running_mean``. All of it maps onto
:class:`rib_ext.irn.IRNet` (ResNet-50 only, their layout has fixed channel counts); the training
loss's buffers (``path_indices*``, ``disp_target``) and the duplicate registrations
(``resnet50.*``, ``backbone.*``, ``edge_layers.*``, ``dp_layers.*``, ``fc_dp7.4.*``) are dropped:
the path index is rebuilt from the settings.

Detection is by keys, so a file is recognised whatever it is named.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch

# Prefixes registered twice in the authors' modules (the same tensors under other names).
_CAM_DUPLICATES = ("resnet50.", "backbone.", "newly_added.")
_IRN_DUPLICATES = ("resnet50.", "backbone.", "edge_layers.", "dp_layers.", "fc_dp7.4.")
_IRN_LOSS_BUFFERS = re.compile(r"^(path_indices\d+|disp_target)$")

_CAM_RENAMES = (("stage1.0.", "stage1.conv1."), ("stage1.1.", "stage1.bn1."),
                ("stage1.4.", "stage1.layer1."), ("stage2.0.", "stage2.layer2."),
                ("stage3.0.", "stage3.layer3."), ("stage4.0.", "stage4.layer4."))

_IRN_RENAMES = [("stage1.0.", "stages.0.0."), ("stage1.1.", "stages.0.1."),
                ("stage2.0.", "stages.1."), ("stage3.0.", "stages.2."), ("stage4.0.", "stages.3."),
                ("stage5.0.", "stages.4."), ("fc_edge6.", "edge_out."),
                ("fc_dp6.0.", "disp_merge.conv."), ("fc_dp6.1.", "disp_merge.norm."),
                ("fc_dp7.0.", "disp_out.0.conv."), ("fc_dp7.1.", "disp_out.0.norm."),
                ("fc_dp7.3.", "disp_out.1."), ("mean_shift.", "mean_shift.")]
for _i in range(1, 6):
    _IRN_RENAMES += [(f"fc_edge{_i}.0.", f"edge_heads.{_i - 1}.conv."),
                     (f"fc_edge{_i}.1.", f"edge_heads.{_i - 1}.norm."),
                     (f"fc_dp{_i}.0.", f"disp_heads.{_i - 1}.conv."),
                     (f"fc_dp{_i}.1.", f"disp_heads.{_i - 1}.norm.")]


def _state_of(obj: Any) -> Optional[Dict[str, torch.Tensor]]:
    """A plain state dict (``module.`` prefixes removed), or None when ``obj`` is not one."""
    if not isinstance(obj, Mapping) or not obj:
        return None
    if not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        return None
    return {re.sub(r"^(module\.)+", "", k): v for k, v in obj.items()}


def is_authors_cam_state(obj: Any) -> bool:
    """True for the authors' ``res50_cam.pth`` layout (see the module docstring)."""
    state = _state_of(obj)
    return (state is not None and "stage1.0.weight" in state and "classifier.weight" in state
            and "stage1.4.0.conv1.weight" in state and "stage4.0.0.conv1.weight" in state)


def is_authors_irn_state(obj: Any) -> bool:
    """True for the authors' ``res50_irn.pth`` layout (see the module docstring)."""
    state = _state_of(obj)
    return (state is not None and "stage5.0.0.conv1.weight" in state
            and "fc_edge6.weight" in state and "fc_dp7.3.weight" in state)


def _rename(state: Dict[str, torch.Tensor], renames, drop, source) -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key.startswith(drop) or _IRN_LOSS_BUFFERS.match(key):
            continue
        for old, new in renames:
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
        else:
            raise ValueError(f"{source}: key {key!r} of the authors' checkpoint layout has no "
                             f"counterpart in rib_ext's network")
    return out


def cam_state_from_authors(obj: Any, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Our :class:`CAMNet` state dict from the authors' ``res50_cam.pth`` state dict."""
    state = _state_of(obj)
    if state is None or not is_authors_cam_state(state):
        raise ValueError(f"{source}: not the authors' res50_cam.pth layout (stage1.0.weight, "
                         f"stage1.4.*, stage4.0.*, classifier.weight)")
    return _rename(state, _CAM_RENAMES + (("classifier.", "classifier."),), _CAM_DUPLICATES, source)


def cam_net_from_authors(obj: Any, source: str = "checkpoint"):
    """A :class:`CAMNet` (strides (2, 2, 2, 1)) holding the authors' classifier weights, or None
    when ``obj`` is not in their layout."""
    from rib_ext.models.checkpoint import _state_dict_problems, guess_resnet_depth
    from rib_ext.models.resnet_cam import CAMNet

    if not is_authors_cam_state(obj):
        return None
    state = cam_state_from_authors(obj, source)
    tv_keys = [re.sub(r"^stage\d\.", "", k) for k in state if not k.startswith("classifier.")]
    backbone = guess_resnet_depth(tv_keys)
    if backbone is None:
        raise ValueError(f"{source}: the authors' layout, but its backbone matches no torchvision "
                         f"ResNet depth")
    model = CAMNet(backbone, int(state["classifier.weight"].shape[0]), (2, 2, 2, 1))
    problems = _state_dict_problems(model.state_dict(), state)
    if problems:
        raise ValueError(f"{source}: authors' CAM checkpoint does not fit a {backbone} CAMNet: "
                         + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model


def irn_state_from_authors(obj: Any, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Our :class:`IRNet` state dict from the authors' ``res50_irn.pth`` state dict."""
    state = _state_of(obj)
    if state is None or not is_authors_irn_state(state):
        raise ValueError(f"{source}: not the authors' res50_irn.pth layout (stage5.0.*, "
                         f"fc_edge6.weight, fc_dp7.3.weight)")
    return _rename(state, _IRN_RENAMES, _IRN_DUPLICATES, source)


def irnet_from_authors(obj: Any, source: str = "checkpoint"):
    """A ResNet-50 :class:`IRNet` holding the authors' IRN weights, or None when ``obj`` is not
    in their layout."""
    from rib_ext.irn.network import IRNet

    if not is_authors_irn_state(obj):
        return None
    state = irn_state_from_authors(obj, source)
    net = IRNet("resnet50")
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: authors' IRN checkpoint does not fit a ResNet-50 IRNet: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return net


def read_state(path: str | Path) -> Any:
    """The object stored in ``path`` (CPU, weights only)."""
    from rib_ext.models.checkpoint import _read_torch_file

    return _read_torch_file(Path(path))
