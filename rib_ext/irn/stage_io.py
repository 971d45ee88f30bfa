"""What the IRN stages share: per-image input files that may be missing, outputs that may already
exist (resume), and loading the maps in IRN's ``.npy`` format with checks that name the file."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from rib_ext.data.base import preview
from rib_ext.io import load_npy_dict, save_json
from rib_ext.stages.common import progress, resolve_device  # noqa: F401  (re-exported)


def per_image_path(folder: str | Path, name: str, suffix: str) -> Path:
    return Path(folder) / f"{name}{suffix}"


def present_names(folder: str | Path, names: Sequence[str], suffix: str, what: str, stage: str,
                  on_missing: str = "error") -> Tuple[List[str], List[str]]:
    """(names whose ``folder/<name><suffix>`` exists, names without it).

    Missing files raise ``FileNotFoundError`` listing them (``on_missing="error"``) or warn, listing
    them, and are left out (``"skip"``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{stage}: {what} folder not found: {folder}")
    present = {p.name for p in folder.iterdir()}
    missing = [n for n in names if f"{n}{suffix}" not in present]
    if missing:
        msg = (f"{stage}: {len(missing)} of {len(names)} images have no {what} in {folder}: "
               f"{preview(missing)}")
        if on_missing == "error":
            raise FileNotFoundError(msg + " (make them first, or set on_missing='skip')")
        if on_missing != "skip":
            raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
        warnings.warn(msg + "; they are skipped", stacklevel=3)
    gone = set(missing)
    return [n for n in names if n not in gone], missing


def split_done(out_dir: str | Path, names: Sequence[str], suffix: str = ".png") -> Tuple[List[str], List[str]]:
    """(names still to do, names whose output already exists and is whole): outputs are written
    atomically, but a copied or otherwise damaged file (empty, truncated) is made again, named in
    a warning."""
    from rib_ext.stages.common import split_complete

    out_dir = Path(out_dir)
    existing = {p.name for p in out_dir.iterdir()} if out_dir.is_dir() else set()
    found = {n: out_dir / f"{n}{suffix}" for n in names if f"{n}{suffix}" in existing}
    finished = set(split_complete(found, out_dir.name)[0])
    return [n for n in names if n not in finished], [n for n in names if n in finished]


def dataset_index(dataset) -> Dict[str, int]:
    return {name: i for i, name in enumerate(dataset.ids)}


# ----------------------------------------------------------------------------------------- maps

def strided_size(size_hw: Sequence[int], stride: int = 4) -> Tuple[int, int]:
    return (int(size_hw[0]) - 1) // stride + 1, (int(size_hw[1]) - 1) // stride + 1


def load_maps(path: str | Path, num_classes: int, image_size: Sequence[int],
              field: str = "high_res") -> Tuple[np.ndarray, torch.Tensor | np.ndarray]:
    """(keys [K'] int64, maps) of one IRN map file, checked against the dataset and the image.

    ``field`` "high_res" gives float32 [K', H, W]; "cam" gives [K', ceil(H/4), ceil(W/4)] (a tensor
    as IRN stores it). Errors name the file: keys beyond the dataset's classes mean the maps folder
    belongs to another dataset; a wrong size, another image or split.
    """
    path = Path(path)
    try:
        record = load_npy_dict(path)
    except Exception as err:  # np.load raises several types for truncated or foreign files
        raise ValueError(f"{path}: not a readable IRN map file ({type(err).__name__}: {err})") from err
    if not isinstance(record, dict) or "keys" not in record or field not in record:
        got = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{path}: expected an IRN map dict with 'keys' and '{field}', got {got}")
    keys = np.asarray(record["keys"]).reshape(-1).astype(np.int64)
    if keys.size and (keys.min() < 0 or keys.max() >= num_classes):
        raise ValueError(f"{path}: class keys {keys.tolist()} exceed the dataset's {num_classes} "
                         f"classes (0..{num_classes - 1}): is this maps folder from another dataset?")
    maps = record[field]
    expected = tuple(image_size) if field == "high_res" else strided_size(image_size)
    shape = tuple(maps.shape)
    if len(shape) != 3 or shape[0] != keys.size or shape[1:] != expected:
        raise ValueError(f"{path}: '{field}' has shape {shape}, expected ({keys.size}, "
                         f"{expected[0]}, {expected[1]}) for {keys.size} keys and an image of "
                         f"{image_size[0]}x{image_size[1]}: maps of another image or split?")
    return keys, maps


# ------------------------------------------------------------------------------------- settings

SETTINGS_FILE = "settings.json"


def check_settings(out_dir: str | Path, stage: str, settings: Dict) -> None:
    """Record the settings that shape a stage's outputs in ``out_dir/settings.json``; on a rerun
    (resume) refuse to mix outputs made with other settings in one folder."""
    path = Path(out_dir) / SETTINGS_FILE
    record = {"stage": stage, **json.loads(json.dumps(settings))}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError as err:
            raise ValueError(f"{path}: unreadable settings file ({err}); delete it to go on") from err
        if old != record:
            diff = {k: (old.get(k), record.get(k)) for k in sorted(set(old) | set(record))
                    if old.get(k) != record.get(k)}
            raise ValueError(f"{stage}: {Path(out_dir)} holds outputs made with other settings "
                             f"(was, now: {diff}); use another output folder or empty this one")
        return
    save_json(path, record)

