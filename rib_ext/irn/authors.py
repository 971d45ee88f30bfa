"""The IRN authors' published ``res50_irn.pth``, converted to our :class:`IRNet`.

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
from typing import Any, Dict

import torch

from rib_ext.models.authors import rename_keys, plain_state_dict

# Prefixes registered twice in the authors' modules (the same tensors under other names).
_IRN_DUPLICATES = ("resnet50.", "backbone.", "edge_layers.", "dp_layers.", "fc_dp7.4.")
# The training loss's buffers: rebuilt from the settings, not weights.
_IRN_LOSS_BUFFERS = re.compile(r"^(path_indices\d+|disp_target)$")

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



def is_authors_irn_state(obj: Any) -> bool:
    """True for the authors' ``res50_irn.pth`` layout (see the module docstring)."""
    state = plain_state_dict(obj)
    return (state is not None and "stage5.0.0.conv1.weight" in state
            and "fc_edge6.weight" in state and "fc_dp7.3.weight" in state)


def irn_state_from_authors(obj: Any, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Our :class:`IRNet` state dict from the authors' ``res50_irn.pth`` state dict."""
    state = plain_state_dict(obj)
    if state is None or not is_authors_irn_state(state):
        raise ValueError(f"{source}: not the authors' res50_irn.pth layout (stage5.0.*, "
                         f"fc_edge6.weight, fc_dp7.3.weight)")
    return rename_keys(state, _IRN_RENAMES, _IRN_DUPLICATES, source, _IRN_LOSS_BUFFERS)
