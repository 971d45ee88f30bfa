"""Classifiers named on the command line: ``camnet`` (the paper's ResNet, :class:`CAMNet`),
``torchvision:NAME`` (any name of ``torchvision.models.list_models()``) or ``timm:NAME`` (any name
``timm.create_model`` knows; timm is the optional extra ``pip install ".[timm]"``).

Nothing is downloaded: a model starts from random weights, or from a state dict file the user has
(``--weights FILE``), whose classification head is replaced for the dataset's classes; then
:func:`rib_ext.models.adapters.adapt` makes it follow RIB's protocol.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn as nn

from rib_ext.models.adapters import CAMClassifier, adapt

SOURCES = ("torchvision", "timm")


def parse_model(spec: str) -> Tuple[str, str]:
    """``"timm:convnext_tiny"`` -> ``("timm", "convnext_tiny")``; ``"camnet"`` -> ``("camnet", "")``."""
    if spec == "camnet":
        return "camnet", ""
    source, _, name = spec.partition(":")
    if source not in SOURCES or not name:
        raise ValueError(f"model must be 'camnet', 'torchvision:NAME' or 'timm:NAME', got {spec!r}")
    return source, name


def _timm():
    try:
        import timm
    except ImportError as err:
        raise ImportError("timm models need timm, the optional extra: pip install '.[timm]' "
                          "(or pip install timm)") from err
    return timm


def check_model_available(spec: str) -> None:
    """Raise ValueError naming the model if it does not exist (before any stage runs)."""
    source, name = parse_model(spec)
    if source == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models(torchvision.models):
            raise ValueError(f"model {spec!r}: torchvision has no classifier named {name!r} "
                             f"(torchvision.models.list_models())")
    elif source == "timm":
        if not _timm().is_model(name):
            raise ValueError(f"model {spec!r}: timm has no model named {name!r} (timm.list_models())")


def build_base(spec: str, num_classes: int) -> nn.Module:
    """The named network with random weights and a head of ``num_classes``."""
    source, name = parse_model(spec)
    check_model_available(spec)
    if source == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return _timm().create_model(name, pretrained=False, num_classes=num_classes)


def _head_keys(model: nn.Module, num_classes: int, state: dict) -> list:
    """Keys of ``state`` whose shape differs from ``model``'s only because the head has another
    class count: the head to replace."""
    own = model.state_dict()
    return [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)
            and _is_head_key(model, k, num_classes)]


def load_model_weights(model: nn.Module, path: os.PathLike | str, spec: str, num_classes: int) -> list:
    """Load the user's state dict ``path`` into ``model`` (a ``spec`` network); the head's weights
    of another class count are left out (the head is new). Returns the keys left out; raises
    ValueError naming the file when anything else does not fit."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for files it cannot read
        raise ValueError(f"--weights {path}: not a PyTorch state dict file ({type(err).__name__})") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--weights {path}: expected a state dict (name -> tensor) of {spec}")
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    head = _head_keys(model, num_classes, state)
    kept = {k: v for k, v in state.items() if k not in head}
    result = model.load_state_dict(kept, strict=False)
    missing = [k for k in result.missing_keys if k not in head and not _is_head_key(model, k, num_classes)]
    if missing or result.unexpected_keys:
        raise ValueError(f"--weights {path}: not a {spec} state dict: "
                         f"{len(missing)} weights missing ({', '.join(missing[:3])}...), "
                         f"{len(result.unexpected_keys)} unexpected "
                         f"({', '.join(result.unexpected_keys[:3])}...)")
    return head


def _is_head_key(model: nn.Module, key: str, num_classes: int) -> bool:
    shape = tuple(model.state_dict()[key].shape)
    return bool(shape) and shape[0] == num_classes and key.rsplit(".", 1)[-1] in ("weight", "bias")


def build_classifier(spec: str, num_classes: int, weights: Optional[str] = None,
                     random_init: bool = False, split: Optional[str] = None) -> CAMClassifier:
    """The ``spec`` network for ``num_classes`` classes from ``weights`` (or random weights when
    ``random_init``), adapted to RIB's protocol."""
    if (weights is None) == (not random_init):
        raise ValueError(f"model {spec}: give exactly one of --weights FILE (a state dict of the "
                         f"model; its head is replaced) and --random-init")
    base = build_base(spec, num_classes)
    if weights is not None:
        load_model_weights(base, weights, spec, num_classes)
    adapted = adapt(base, split=split, check=True)
    adapted.model_spec = spec
    return adapted


def rebuild_classifier(spec: str, num_classes: int, split: Optional[str]) -> CAMClassifier:
    """The structure of a saved adapted classifier, to load its state dict into."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the adapter's notes were given when it was trained
        return adapt(build_base(spec, num_classes), split=split, check=False)
