"""Per-image files of a stage: inputs that may be missing, outputs that may already exist and be
whole (resume), a folder's settings record, and loading the maps in IRN's ``.npy`` format with
checks that name the file. Shared by the IRN and segmentation packages and the stages."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from rib_ext import distributed
from rib_ext.io import UnreadableFileError, file_is_complete, load_npy_dict, preview, save_json
from rib_ext.ops.cam import strided_size


def per_image_path(folder: str | Path, name: str, suffix: str) -> Path:
    return Path(folder) / f"{name}{suffix}"


def present_names(folder: str | Path, names: Sequence[str], suffix: str, what: str, stage: str,
                  allow_missing: bool = False) -> Tuple[List[str], List[str]]:
    """(names whose ``folder/<name><suffix>`` exists, names without it).

    Missing files raise ``FileNotFoundError`` listing them or, with ``allow_missing``, are named
    in a warning and left out.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{stage}: {what} folder not found: {folder}")
    present = {p.name for p in folder.iterdir()}
    missing = [n for n in names if f"{n}{suffix}" not in present]
    if missing:
        msg = (f"{stage}: {len(missing)} of {len(names)} images have no {what} in {folder}: "
               f"{preview(missing)}")
        if not allow_missing:
            raise FileNotFoundError(msg + " (run the stage that makes them, or pass --allow-missing)")
        warnings.warn(msg + "; they are skipped", stacklevel=3)
    gone = set(missing)
    return [n for n in names if n not in gone], missing


def split_done(out_dir: str | Path, names: Sequence[str], suffix: str = ".png") -> Tuple[List[str], List[str]]:
    """(names still to do, names whose output already exists and is whole): outputs are written
    atomically, but a copied or otherwise damaged file (empty, truncated) is made again, named in
    a warning."""
    out_dir = Path(out_dir)
    existing = {p.name for p in out_dir.iterdir()} if out_dir.is_dir() else set()
    found = {n: out_dir / f"{n}{suffix}" for n in names if f"{n}{suffix}" in existing}
    finished = set(split_complete(found, out_dir.name)[0])
    return [n for n in names if n not in finished], [n for n in names if n in finished]


def split_complete(paths: dict, what: str) -> tuple[list, list]:
    """(keys whose file exists and is whole, keys to (re)make); broken files are named in one
    warning, then made again."""
    done, todo, broken = [], [], []
    for key, path in paths.items():
        if not Path(path).exists():
            todo.append(key)
        elif file_is_complete(path):
            done.append(key)
        else:
            broken.append(str(path))
            todo.append(key)
    if broken:
        shown = ", ".join(broken[:5]) + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
        warnings.warn(f"{what}: {len(broken)} existing file(s) are empty or truncated and are made "
                      f"again: {shown}", stacklevel=3)
    return done, todo


def dataset_index(dataset) -> Dict[str, int]:
    return {name: i for i, name in enumerate(dataset.ids)}


# ----------------------------------------------------------------------------------------- maps

class MapFileError(UnreadableFileError):
    """A map file that is not its image's (other classes, another size, keys out of range) or not
    a map file at all: the message starts with the file."""


def load_maps(path: str | Path, num_classes: int, image_size: Sequence[int],
              field: str = "high_res", labels=None) -> Tuple[np.ndarray, torch.Tensor | np.ndarray]:
    """(keys [K'] int64, maps) of one IRN map file, checked against the dataset and the image: the
    one check every reader of map files makes.

    ``field`` "high_res" gives float32 [K', H, W]; "cam" gives [K', ceil(H/4), ceil(W/4)] (a tensor
    as IRN stores it). ``labels``: the image's class vector [num_classes] (the dataset's
    ``labels(i)``); given, the keys must be exactly its classes. Errors (:class:`MapFileError`)
    name the file: keys beyond the dataset's classes mean the maps folder belongs to another
    dataset; other classes or a wrong size, another image or split.
    """
    path = Path(path)
    try:
        record = load_npy_dict(path)
    except Exception as err:  # np.load raises several types for truncated or foreign files
        raise MapFileError(f"{path}: not a readable IRN map file ({type(err).__name__}: {err})") from err
    if not isinstance(record, dict) or "keys" not in record or field not in record:
        got = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise MapFileError(f"{path}: expected an IRN map dict with 'keys' and '{field}', got {got}")
    keys = np.asarray(record["keys"]).reshape(-1).astype(np.int64)
    if keys.size and (keys.min() < 0 or keys.max() >= num_classes):
        raise MapFileError(f"{path}: class keys {keys.tolist()} exceed the dataset's {num_classes} "
                           f"classes (0..{num_classes - 1}): is this maps folder from another dataset?")
    if labels is not None:
        classes = np.flatnonzero(np.asarray(labels)).astype(np.int64)
        if not np.array_equal(keys, classes):
            raise MapFileError(f"{path}: maps of classes {keys.tolist()}, but the image's classes are "
                               f"{classes.tolist()}: maps of another image or dataset?")
    maps = record[field]
    expected = tuple(int(v) for v in image_size) if field == "high_res" else strided_size(image_size, 4)
    shape = tuple(maps.shape)
    if len(shape) != 3 or shape[0] != keys.size or shape[1:] != expected:
        raise MapFileError(f"{path}: '{field}' has shape {shape}, expected ({keys.size}, "
                           f"{expected[0]}, {expected[1]}) for {keys.size} keys and an image of "
                           f"{image_size[0]}x{image_size[1]}: maps of another image or split?")
    return keys, maps


def load_image_maps(path: str | Path, dataset, index: int, field: str = "high_res"):
    """:func:`load_maps` of image ``index`` of ``dataset``: checked against its classes and its
    size (from the image's header)."""
    return load_maps(path, dataset.num_classes, dataset.image_size(index), field,
                     labels=dataset.labels(index))


# ------------------------------------------------------------------------------------- settings

class MixedOutputsError(ValueError):
    """A stage folder holds outputs made with other settings (or an unreadable settings record):
    a user's error, printed as ``error: ...``; nothing of the folder is overwritten."""


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
            raise MixedOutputsError(f"{path}: unreadable settings file ({err}); delete it to go on") from err
        if old != record:
            diff = {k: (old.get(k), record.get(k)) for k in sorted(set(old) | set(record))
                    if old.get(k) != record.get(k)}
            raise MixedOutputsError(f"{stage}: {Path(out_dir)} holds outputs made with other settings "
                             f"(was, now: {diff}); use another output folder or empty this one")
        return
    save_json(path, record)


def map_path(maps_dir: Path, name: str) -> Path:
    return Path(maps_dir) / f"{name}.npy"


def require_maps(maps_dir: Path, names: Sequence[str], stage: str, allow_missing: bool = False) -> list[str]:
    """The names whose maps exist in ``maps_dir`` (:func:`present_names` for IRN map files)."""
    return present_names(maps_dir, names, ".npy", "maps", stage, allow_missing)[0]


# ------------------------------------------------------------------------------ maps written

def no_class_maps(image_size: Sequence[int]) -> dict:
    """The map dict of an image with no class (COCO keeps them, as the authors' code does): keys
    empty and maps of zero classes, so every reader finds its fields; evaluated, it predicts
    background everywhere."""
    h, w = int(image_size[0]), int(image_size[1])
    return {"keys": np.zeros(0, dtype=np.int64), "cam": torch.zeros((0, *strided_size((h, w), 4))),
            "high_res": np.zeros((0, h, w), dtype=np.float32)}


class BadMapsError(ValueError):
    """Maps that are not finite, or zero for every image: a diverged network, never a result to
    evaluate (an all-zero map set scores a plausible-looking mIoU, 14 on the demo, every pixel
    background, with an undefined precision). The message names the images and the likely cause."""


def _keys(maps: dict) -> list:
    return np.asarray(maps["keys"]).tolist()


def maps_are_empty(maps: dict) -> bool:
    """Whether an image with classes got maps that are zero everywhere for all of them (an image
    with no class, keys empty on COCO, has nothing to show and is not empty in this sense)."""
    return len(maps["keys"]) > 0 and not (np.asarray(maps["high_res"]) > 0).any()


class MapChecker:
    """Used while a stage writes maps: :meth:`check` before each write (non-finite maps raise at
    once, naming the image), :meth:`written` after it, :meth:`finish` at the end. One image whose
    maps are zero is possible for a weak classifier: it is named in a warning."""

    def __init__(self, stage: str, cause: str, already_done: int = 0):
        # already_done: maps of this set made by an earlier run (resume); with any, empty maps of
        # this run are a few images, not the whole set, so they are only named.
        self.stage, self.cause, self.already_done = stage, cause, already_done
        self.count = 0
        self.empty: List[tuple] = []  # (name, path) of images whose maps are zero everywhere

    def check(self, maps: dict, name: str) -> None:
        if len(maps["keys"]) and not np.isfinite(np.asarray(maps["high_res"])).all():
            raise BadMapsError(f"{self.stage}: image {name} (classes {_keys(maps)}) got maps with "
                               f"non-finite values: {self.cause}; nothing was written for it")

    def written(self, maps: dict, name: str, path: Path | None = None) -> None:
        if len(maps["keys"]):
            self.count += 1
            if maps_are_empty(maps):
                self.empty.append((name, path))

    def finish(self) -> None:
        """Raise when every image's maps are empty (their files are removed first, so a rerun
        does not take them for done); warn naming the images when only some are."""
        # Decided over all ranks (each writes its shard): every rank raises, or none does.
        empty, count, done = (int(v) for v in distributed.all_reduce_sum(
            np.array([len(self.empty), self.count, self.already_done], dtype=np.int64)))
        names = [n for n, _ in self.empty]
        if count and empty == count and not done:
            for _, path in self.empty:
                if path is not None:
                    Path(path).unlink(missing_ok=True)
            raise BadMapsError(f"{self.stage}: the maps of all {count} images are zero "
                               f"everywhere for every class of the image ({preview(names)}): "
                               f"{self.cause}; they were not kept")
        if names:
            warnings.warn(f"{self.stage}: {len(names)} of {self.count} images got maps that are "
                          f"zero everywhere for all their classes (a weak classifier?): "
                          f"{preview(names)}", stacklevel=2)
