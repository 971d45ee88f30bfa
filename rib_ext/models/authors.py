"""The IRN / RIB authors' published classifier checkpoint, converted to our network (their IRN
checkpoint: :mod:`rib_ext.irn.authors`).

``res50_cam.pth`` (the classifier, IRN's ``net/resnet50_cam.py``): a state dict with
``stage1.0.*`` (conv1), ``stage1.1.*`` (bn1), ``stage1.4.*`` (layer1), ``stage2.0.*`` (layer2),
``stage3.0.*`` (layer3), ``stage4.0.*`` (layer4), ``classifier.weight`` [K, 2048, 1, 1], plus the
same tensors again under ``resnet50.*``, ``backbone.*`` and ``newly_added.*`` (their modules are
registered twice). Everything maps onto :class:`CAMNet` (strides (2, 2, 2, 1), fixed batch norm).

Detection is by keys, so a file is recognised whatever it is named.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional

import torch

# Prefixes registered twice in the authors' modules (the same tensors under other names).
_CAM_DUPLICATES = ("resnet50.", "backbone.", "newly_added.")

_CAM_RENAMES = (("stage1.0.", "stage1.conv1."), ("stage1.1.", "stage1.bn1."),
                ("stage1.4.", "stage1.layer1."), ("stage2.0.", "stage2.layer2."),
                ("stage3.0.", "stage3.layer3."), ("stage4.0.", "stage4.layer4."))

def plain_state_dict(obj: Any) -> Optional[Dict[str, torch.Tensor]]:
    """A plain state dict (``module.`` prefixes removed), or None when ``obj`` is not one."""
    if not isinstance(obj, Mapping) or not obj:
        return None
    if not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        return None
    return {re.sub(r"^(module\.)+", "", k): v for k, v in obj.items()}


def is_authors_cam_state(obj: Any) -> bool:
    """True for the authors' ``res50_cam.pth`` layout (see the module docstring)."""
    state = plain_state_dict(obj)
    return (state is not None and "stage1.0.weight" in state and "classifier.weight" in state
            and "stage1.4.0.conv1.weight" in state and "stage4.0.0.conv1.weight" in state)


def rename_keys(state: Dict[str, torch.Tensor], renames, drop, source, skip=None) -> Dict[str, torch.Tensor]:
    """``state`` with the authors' prefixes renamed to ours; keys starting with ``drop`` or
    matching the regex ``skip`` are left out, any other unknown key is an error."""
    out = {}
    for key, value in state.items():
        if key.startswith(drop) or (skip is not None and skip.match(key)):
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
    state = plain_state_dict(obj)
    if state is None or not is_authors_cam_state(state):
        raise ValueError(f"{source}: not the authors' res50_cam.pth layout (stage1.0.weight, "
                         f"stage1.4.*, stage4.0.*, classifier.weight)")
    return rename_keys(state, _CAM_RENAMES + (("classifier.", "classifier."),), _CAM_DUPLICATES, source)
