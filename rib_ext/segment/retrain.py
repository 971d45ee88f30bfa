"""The re-training technique of RIB's appendix (after earlier WSSS methods).

1. From each image's random-walk scores, keep the confident pixels: foreground (the best class)
   where its score is above 0.3, background where every score is below 0.2; ignore the rest.
2. Train DeepLab-v2 on those labels.
3. Fill the ignored pixels with that network's predictions and train again on the filled labels.

Score files are IRN-format ``.npy`` dicts: ``keys`` (0-based foreground class indices) and
``score`` or ``high_res``, float [K', H, W] in [0, 1] at the image's size (an IRN map dict is read
with its ``high_res`` as the scores).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

import numpy as np

from rib_ext.data import IGNORE_INDEX, load_label_png, save_label_png
from rib_ext.io import load_npy_dict
from rib_ext.runner import ImageResult, Output, PerImageStage, run_stage

from .data import check_labels

SCORE_FIELDS = ("score", "high_res")


def score_labels(scores: np.ndarray, keys: Sequence[int], fg: float = 0.3, bg: float = 0.2) -> np.ndarray:
    """uint8 [H, W]: ``keys[j] + 1`` where the best score (map ``j``) is > ``fg``, 0 where every
    score is < ``bg`` (all pixels when there is no map), 255 elsewhere.

    ``scores`` [K', H, W] in [0, 1]; ``keys`` [K'] 0-based foreground class indices.
    """
    scores = np.asarray(scores)
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if scores.ndim != 3 or scores.shape[0] != keys.size:
        raise ValueError(f"scores must be [K', H, W] with one key per map; got scores {scores.shape} "
                         f"and {keys.size} keys")
    if not 0.0 <= bg <= fg:
        raise ValueError(f"need 0 <= bg <= fg, got bg={bg}, fg={fg}")
    h, w = scores.shape[1:]
    if keys.size == 0:
        return np.zeros((h, w), dtype=np.uint8)
    if keys.min() < 0 or keys.max() >= IGNORE_INDEX - 1:
        raise ValueError(f"keys must be 0-based foreground class indices below {IGNORE_INDEX - 1}, "
                         f"got {keys.tolist()}")
    best = scores.argmax(axis=0)
    top = np.take_along_axis(scores, best[None], axis=0)[0]
    out = np.full((h, w), IGNORE_INDEX, dtype=np.uint8)
    out[top > fg] = (keys + 1).astype(np.uint8)[best[top > fg]]
    out[top < bg] = 0
    return out


def fill_ignored(labels: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """uint8 [H, W]: ``labels`` with its ignored (255) pixels taken from ``prediction``."""
    labels, prediction = np.asarray(labels), np.asarray(prediction)
    if labels.shape != prediction.shape:
        raise ValueError(f"labels {labels.shape} and prediction {prediction.shape} differ in size")
    return np.where(labels == IGNORE_INDEX, prediction, labels).astype(np.uint8)


def load_scores(path: str | Path, num_classes: int, size_hw: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """(keys [K'] int64, scores float32 [K', H, W]) of one score file, checked; errors name it."""
    path = Path(path)
    try:
        record = load_npy_dict(path)
    except Exception as err:  # np.load raises several types for truncated or foreign files
        raise ValueError(f"{path}: not a readable score file ({type(err).__name__}: {err})") from err
    field = next((f for f in SCORE_FIELDS if isinstance(record, dict) and f in record), None)
    if field is None or "keys" not in record:
        got = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{path}: expected a dict with 'keys' and 'score' (or IRN's 'high_res'), "
                         f"got {got}")
    keys = np.asarray(record["keys"]).reshape(-1).astype(np.int64)
    if keys.size and (keys.min() < 0 or keys.max() >= num_classes):
        raise ValueError(f"{path}: class keys {keys.tolist()} outside the dataset's {num_classes} "
                         f"classes (0..{num_classes - 1}): scores of another dataset?")
    scores = np.asarray(record[field], dtype=np.float32)
    expected = (keys.size, int(size_hw[0]), int(size_hw[1]))
    if scores.shape != expected:
        raise ValueError(f"{path}: '{field}' has shape {scores.shape}, expected {expected} for "
                         f"{keys.size} keys and an image of {size_hw[0]}x{size_hw[1]}")
    if scores.size and not (np.isfinite(scores).all() and scores.min() >= 0 and scores.max() <= 1 + 1e-6):
        raise ValueError(f"{path}: '{field}' must hold scores in [0, 1], found "
                         f"{np.nanmin(scores):.4g}..{np.nanmax(scores):.4g} (not normalised?)")
    return keys, scores


def _score_labels_one(job: tuple, name: str) -> ImageResult:
    dataset, index, score_dir, fg, bg = job
    keys, scores = load_scores(score_dir / f"{name}.npy", dataset.num_classes,
                               dataset.image_size(index[name]))
    return ImageResult(files={"labels": score_labels(scores, keys, fg, bg)})


def write_score_labels(dataset, names: Sequence[str], score_dir: str | Path, out_dir: str | Path,
                       fg: float, bg: float) -> int:
    """Write ``out_dir/<id>.png`` (confident labels) for ``names``; existing files are kept.
    Under torchrun each rank writes its shard; returns the number written over all ranks."""
    job = (dataset, {name: i for i, name in enumerate(dataset.ids)}, Path(score_dir), fg, bg)
    stage = PerImageStage("segment: confident labels", {"labels": Output("{id}.png", save_label_png)},
                          compute=_score_labels_one)
    return run_stage(stage, job, names, out_dir).written


def _filled_one(job: tuple, name: str) -> ImageResult:
    label_dir, prediction_dir, num_classes = job
    pred = load_label_png(prediction_dir / f"{name}.png")
    labels = check_labels(load_label_png(label_dir / f"{name}.png"), pred.shape, num_classes,
                          label_dir / f"{name}.png")
    return ImageResult(files={"labels": fill_ignored(labels, pred)})


def write_filled_labels(names: Sequence[str], label_dir: str | Path, prediction_dir: str | Path,
                        out_dir: str | Path, num_classes: int) -> int:
    """Write ``out_dir/<id>.png`` = :func:`fill_ignored` of the labels and the predictions.
    Under torchrun each rank writes its shard; returns the number written over all ranks."""
    stage = PerImageStage("segment: filled labels", {"labels": Output("{id}.png", save_label_png)},
                          compute=_filled_one)
    return run_stage(stage, (Path(label_dir), Path(prediction_dir), num_classes), names, out_dir).written
