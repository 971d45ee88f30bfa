"""Loading ImageNet backbones and saving / loading our own trained CAM networks.

There is no download: the user supplies a torchvision ResNet checkpoint file, or asks explicitly for
random initialisation (useful for smoke tests; far below the paper's figures).
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from rib_ext.checkpoints import CheckpointError, MissingCheckpointError, read_checkpoint, write_checkpoint
from rib_ext.io import preview
from rib_ext.models import authors
from rib_ext.models.pretrained import resolve_weights
from rib_ext.models.resnet_cam import BACKBONES, CAMNet

# torchvision's IMAGENET1K_V1 files (what IRN / RIB start from), for the error messages.
TORCHVISION_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "resnet101": "resnet101-63fe2227.pth",
}

# Blocks per stage of each depth, and whether it uses Bottleneck blocks (conv3 present).
_DEPTH_LAYOUT = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
}

CAM_CHECKPOINT_FORMAT = "rib_ext.cam_net"
CAM_CHECKPOINT_VERSION = 1


class MissingWeightsError(FileNotFoundError):
    """No ImageNet backbone weights were given, or the given file does not exist."""


def missing_weights_message(backbone: str, path: Optional[os.PathLike | str] = None) -> str:
    fname = TORCHVISION_FILES.get(backbone, f"{backbone}-<hash>.pth")
    head = (f"ImageNet weights file not found: {path}" if path is not None
            else f"no ImageNet weights given for the {backbone} backbone")
    return (f"{head}. Pass the path of a torchvision {backbone} checkpoint (IMAGENET1K_V1, e.g. "
            f"{fname} from https://download.pytorch.org/models/{fname}; torchvision caches "
            f"downloads in ~/.cache/torch/hub/checkpoints/) with --weights, or pass --random-init "
            f"to start from random weights (a smoke test only: results fall far below the paper's).")


def check_weights_choice(backbone: str, weights, random_init: bool, hint: str = "") -> None:
    """Exactly one of ImageNet ``weights`` and ``random_init``; the error says how to get weights
    (``hint``: what else the network may start from)."""
    if weights is not None and random_init:
        raise ValueError(f"both weights ({weights}) and random_init were given; choose one")
    if weights is None and not random_init:
        raise MissingWeightsError(missing_weights_message(backbone) + hint)


def warn_random_init(what: str, outcome: str) -> None:
    """The warning of a randomly initialised backbone (``what``: the network and its backbone;
    ``outcome``: what will fall below the paper's figures), pointing at the caller's caller."""
    warnings.warn(f"{what} backbone randomly initialised (no ImageNet weights): fine for a smoke "
                  f"test, but {outcome} will be far below the paper's", UserWarning, stacklevel=3)


def _unwrap_state_dict(obj: Any, path: Path) -> Dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict (a dict of tensors), got {type(obj).__name__}")
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise ValueError(f"{path}: expected a state dict of tensors; non-tensor entries: "
                         f"{preview(bad)}")
    # DataParallel / DistributedDataParallel checkpoints prefix every key with 'module.'.
    return {re.sub(r"^(module\.)+", "", k): v for k, v in obj.items()}


def guess_resnet_depth(keys: Sequence[str]) -> Optional[str]:
    """The torchvision ResNet name whose layout matches these state-dict keys, if any."""
    keys = set(keys)
    counts = tuple(len({k.split(".")[1] for k in keys if k.startswith(f"layer{i}.")})
                   for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in keys
    for name, layout in _DEPTH_LAYOUT.items():
        if layout == (counts, bottleneck):
            return name
    return None


def _state_dict_problems(expected: Mapping[str, torch.Tensor],
                         given: Mapping[str, torch.Tensor]) -> List[str]:
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {tuple(given[k].shape)} (expected {tuple(v.shape)})"
              for k, v in expected.items() if k in given and given[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {preview(unexpected)}")
    if shapes:
        problems.append(f"wrong shapes: {preview(shapes)}")
    return problems


def load_backbone_weights(model: CAMNet, path: os.PathLike | str) -> CAMNet:
    """Load a torchvision ResNet state-dict file into ``model``'s backbone (in place).

    Accepts a raw state dict or one wrapped under ``state_dict`` / ``model``, with or without
    ``module.`` prefixes; torchvision's ``fc.*`` head is ignored (the classifier stays as
    initialised). Anything else that does not match raises ``ValueError`` naming the file.
    ``rib_ext:<name>`` loads weights shipped with the package (:mod:`rib_ext.models.pretrained`).
    """
    path = resolve_weights(path)
    if not path.is_file():
        raise MissingWeightsError(missing_weights_message(model.backbone_name, path))
    state = _unwrap_state_dict(read_checkpoint(path, None, None, "PyTorch checkpoint"), path)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    view = model.torchvision_view()
    problems = _state_dict_problems(view.state_dict(), state)
    if problems:
        guess = guess_resnet_depth(list(state))
        hint = (f" The file looks like a {guess} checkpoint." if guess and guess != model.backbone_name
                else "")
        if guess and guess != model.backbone_name:
            raise CheckpointError(f"{path}: torchvision {guess} weights, but the backbone is "
                                  f"{model.backbone_name}: pass --backbone {guess} to use them, or "
                                  f"--weights of a {model.backbone_name}")
        raise CheckpointError(f"{path}: not a torchvision {model.backbone_name} state dict: "
                              + "; ".join(problems) + "." + hint)
    view.load_state_dict(state, strict=True)
    return model


def build_cam_net(backbone: str = "resnet50", num_classes: int = 20,
                  weights: Optional[os.PathLike | str] = None, random_init: bool = False,
                  strides: Sequence[int] = (2, 2, 2, 1), from_scratch: bool = False) -> CAMNet:
    """A :class:`CAMNet` with ImageNet backbone weights from ``weights``, or random weights when
    ``random_init`` (warns, unless ``from_scratch``: training every stage from random weights is
    then the plan). Exactly one of the two must be given."""
    check_weights_choice(backbone, weights, random_init)
    model = CAMNet(backbone, num_classes, strides, from_scratch=from_scratch)
    if random_init:
        if not from_scratch:  # training from scratch (the demo) is random by design: no warning
            warn_random_init(backbone, "maps and scores")
        return model
    return load_backbone_weights(model, weights)


# A trained ResNet classifier's parameters stay within a few units (ImageNet's BN scales reach
# about 10); weight decay and batch norm keep them there. A training that diverged leaves far larger
# ones (measured: 5e4 after one step at lr 1e6, 5e16 after more) with a finite loss, and maps that
# are zero everywhere. The bound leaves two orders of magnitude of room.
WEIGHT_LIMIT = 1e3


def weight_problem(model: torch.nn.Module) -> Optional[str]:
    """What is wrong with a network's weights (a non-finite value anywhere, a parameter beyond
    :data:`WEIGHT_LIMIT`), or None."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"non-finite values in {name}"
    worst, where = 0.0, ""
    for name, p in model.named_parameters():
        top = float(p.detach().abs().max()) if p.numel() else 0.0
        if top > worst:
            worst, where = top, name
    if worst > WEIGHT_LIMIT:
        return f"weights up to {worst:.3g} (in {where}; a trained classifier's stay below {WEIGHT_LIMIT:g})"
    return None


def save_cam_net(path: os.PathLike | str, model: CAMNet,
                 meta: Optional[Dict[str, Any]] = None) -> None:
    """Save a trained CAM network atomically. ``meta`` must hold only plain Python values
    (str, int, float, bool, None, lists, dicts), which ``weights_only`` loading accepts."""
    adapted = getattr(model, "model_spec", None) is not None
    record = {
        "format": CAM_CHECKPOINT_FORMAT,
        "version": CAM_CHECKPOINT_VERSION,
        # An adapted torchvision/timm classifier is named by its model and split instead.
        "backbone": model.model_spec if adapted else model.backbone_name,
        "model": model.model_spec if adapted else "camnet",
        "split": model.split if adapted else None,
        "num_classes": model.num_classes,
        "strides": [] if adapted else list(model.strides),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    write_checkpoint(path, record)


def load_cam_checkpoint(path: os.PathLike | str) -> Dict[str, Any]:
    """The record written by :func:`save_cam_net` (backbone, num_classes, strides, state_dict,
    meta), checked for format."""
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpointError(f"CAM network checkpoint not found: {path} (train_cam writes it)")
    return read_checkpoint(path, CAM_CHECKPOINT_FORMAT, CAM_CHECKPOINT_VERSION,
                           "rib_ext CAM network checkpoint",
                           " (train_cam writes it; ImageNet backbone weights go to --weights)")


def load_cam_net(path: os.PathLike | str, device: torch.device | str = "cpu") -> CAMNet:
    """Rebuild the network saved by :func:`save_cam_net`, on ``device``, in eval mode. The IRN /
    RIB authors' ``res50_cam.pth`` state dicts load too, recognised by their keys
    (:mod:`rib_ext.models.authors`)."""
    if Path(path).is_file():
        obj = read_checkpoint(path, None, None, "PyTorch checkpoint")
        model = cam_net_from_authors(obj, str(path))
        if model is None:
            model = cam_net_from_state_dict(obj, str(path))
        if model is not None:
            check_cam_weights(model, path)
            return model.to(device).eval()
    record = load_cam_checkpoint(path)
    # DataParallel / DistributedDataParallel prefix every key with 'module.'.
    record["state_dict"] = authors.plain_state_dict(record.get("state_dict")) or record.get("state_dict")
    try:
        if record.get("model", "camnet") != "camnet":
            from rib_ext.models.zoo import rebuild_classifier

            model = rebuild_classifier(record["model"], record["num_classes"], record.get("split"))
            model.model_spec = record["model"]
        else:
            model = CAMNet(record["backbone"], record["num_classes"], tuple(record["strides"]))
    except (KeyError, TypeError, ValueError, ImportError) as err:
        raise ValueError(f"{path}: cannot rebuild the CAM network: {err}") from err
    problems = _state_dict_problems(model.state_dict(), record["state_dict"])
    if problems:
        raise CheckpointError(f"{path}: state dict does not match a {record['backbone']} CAMNet "
                              f"with {record['num_classes']} classes: " + "; ".join(problems))
    model.load_state_dict(record["state_dict"], strict=True)
    names = (record.get("meta") or {}).get("class_names")
    model.class_names = tuple(names) if isinstance(names, (list, tuple)) else None  # for messages
    check_cam_weights(model, path, (record.get("meta") or {}).get("config", {}).get("lr"))
    return model.to(device).eval()


def check_cam_weights(model: CAMNet, path, lr=None) -> None:
    """Refuse a classifier whose weights show a diverged training (its maps would be all zero)."""
    problem = weight_problem(model)
    if problem is not None:
        at = f" (it was trained with learning rate {lr:g})" if isinstance(lr, (int, float)) else ""
        raise CheckpointError(f"{path}: the classifier has {problem}: its training diverged{at}; "
                              f"train it again with a lower --lr")


def cam_net_from_state_dict(obj: Any, source: str = "checkpoint"):
    """A :class:`CAMNet` from a bare state dict of one (``torch.save(model.state_dict())``, with
    DataParallel's ``module.`` prefixes or without), or None when ``obj`` is not one. A
    torchvision ImageNet state dict is refused, naming the flag that takes it."""
    state = authors.plain_state_dict(obj)
    if state is None or "format" in obj:
        return None
    if "classifier.weight" not in state or "stage1.0.weight" in state:
        depth = guess_resnet_depth(list(state))
        if depth is not None:
            raise CheckpointError(f"{source}: torchvision {depth} ImageNet weights, not a trained "
                                  f"classifier: pass them with --weights (train_cam trains the "
                                  f"classifier from them), not as the classifier checkpoint")
        return None
    tv_keys = [re.sub(r"^stage\d\.", "", k) for k in state if not k.startswith("classifier.")]
    backbone = guess_resnet_depth(tv_keys)
    candidates = [backbone] if backbone else [b for b in BACKBONES]
    for name in candidates:
        model = CAMNet(name, int(state["classifier.weight"].shape[0]), (2, 2, 2, 1))
        if not _state_dict_problems(model.state_dict(), state):
            model.load_state_dict(state, strict=True)
            model.class_names = None
            return model
    raise CheckpointError(f"{source}: a state dict with a classifier, but of no rib_ext CAMNet "
                          f"backbone ({', '.join(BACKBONES)})")


def cam_net_from_authors(obj: Any, source: str = "checkpoint"):
    """A :class:`CAMNet` (strides (2, 2, 2, 1)) holding the authors' classifier weights, or None
    when ``obj`` is not in their layout."""
    if not authors.is_authors_cam_state(obj):
        return None
    state = authors.cam_state_from_authors(obj, source)
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
