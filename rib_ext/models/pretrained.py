"""Backbone weights shipped inside the package, named by ``rib_ext:<name>`` wherever a weights file
is accepted (``--weights rib_ext:demo_world``).

Each file's sha256 is recorded here and checked on every load: a damaged or replaced file is an
error naming it, never a silently different network.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from rib_ext.checkpoints import CheckpointError
from rib_ext.io import file_sha256

PREFIX = "rib_ext:"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class Shipped(NamedTuple):
    backbone: str
    file: str  # under rib_ext/models/weights/
    sha256: str
    made_by: str  # the command that writes it, bit for bit on the CPU with the same torch version


SHIPPED = {
    # resnet_tiny pretrained on the demo world's 40 classes (rib_ext.data.demo_world)
    "demo_world": Shipped("resnet_tiny", "demo_world_resnet_tiny.pth",
                          "b50aaa1eda7e786d7b07fdb6f810a88c52776310cb5223782b38c7153965f40b",
                          "python -m rib_ext.cam.pretrain"),
}


class ShippedWeightsError(CheckpointError):
    """A ``rib_ext:`` name that is unknown, or a shipped file that is missing or altered."""


def is_shipped(weights) -> bool:
    return isinstance(weights, (str, os.PathLike)) and os.fspath(weights).startswith(PREFIX)


def shipped_path(name: str, check: bool = True) -> Path:
    """The file of the shipped weights ``name``; with ``check``, verified against its sha256."""
    if name not in SHIPPED:
        raise ShippedWeightsError(f"{PREFIX}{name}: no such shipped weights; known: "
                                  + ", ".join(PREFIX + n for n in sorted(SHIPPED)))
    entry = SHIPPED[name]
    path = WEIGHTS_DIR / entry.file
    if not check:
        return path
    if not path.is_file():
        raise ShippedWeightsError(f"{path}: the shipped weights {PREFIX}{name} are missing from the "
                                  f"installed package (reinstall it, or rebuild them: {entry.made_by})")
    digest = file_sha256(path)
    if digest != entry.sha256:
        raise ShippedWeightsError(f"{path}: sha256 {digest} is not the recorded {entry.sha256} of the "
                                  f"shipped weights {PREFIX}{name}: the file was altered or damaged "
                                  f"(reinstall the package, or rebuild it: {entry.made_by})")
    return path


def resolve_weights(weights: os.PathLike | str) -> Path:
    """A weights file: ``rib_ext:<name>`` is a shipped file (checked), anything else a path."""
    if is_shipped(weights):
        return shipped_path(os.fspath(weights)[len(PREFIX):])
    return Path(weights)
