"""RIB-Sal: pseudo masks checked against saliency maps (RIB, section 3.4).

Where the pseudo mask says foreground but the saliency map says background, or the reverse, the
pixel becomes 255 (ignored when the segmentation network trains); agreeing pixels and pixels
already ignored stay as they are. Saliency maps are 8-bit PNGs ``<id>.png``, 0..255; a pixel is
salient where its value is above ``saliency_threshold``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from rib_ext.data import IGNORE_INDEX, load_label_png, save_index_png
from rib_ext.io import preview
from rib_ext.config import IRNConfig
from rib_ext.outputs import check_settings, dataset_index, per_image_path, present_names
from rib_ext.runner import ImageResult, Output, PerImageStage, run_stage


class SaliencyError(ValueError):
    """A saliency map is missing, unreadable or does not fit its image."""


def load_saliency(path: str | Path, size_hw: Optional[Sequence[int]] = None) -> np.ndarray:
    """uint8 [H, W] saliency (colour PNGs are converted to grey), checked against ``size_hw``."""
    path = Path(path)
    if not path.is_file():
        raise SaliencyError(f"{path}: saliency map not found")
    try:
        with Image.open(path) as img:
            # Palette or colour maps are read by their grey level, not by palette index.
            sal = np.array(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as err:
        raise SaliencyError(f"{path}: cannot read saliency map ({type(err).__name__}: {err})") from err
    if size_hw is not None and sal.shape != tuple(size_hw):
        raise SaliencyError(f"{path}: saliency map is {sal.shape[0]}x{sal.shape[1]} (HxW) but its "
                            f"image is {size_hw[0]}x{size_hw[1]}")
    return sal


def refine_with_saliency(labels: np.ndarray, saliency: np.ndarray, threshold: int = 127) -> np.ndarray:
    """uint8 [H, W]: ``labels`` with 255 where labels and saliency disagree on fg vs bg."""
    labels, saliency = np.asarray(labels), np.asarray(saliency)
    if labels.shape != saliency.shape:
        raise SaliencyError(f"labels {labels.shape} and saliency {saliency.shape} differ in size")
    salient = saliency > threshold
    fg = (labels != 0) & (labels != IGNORE_INDEX)
    bg = labels == 0
    out = labels.astype(np.uint8, copy=True)
    out[(fg & ~salient) | (bg & salient)] = IGNORE_INDEX
    return out


def _refine_one(job: tuple, name: str) -> ImageResult:
    """One image's mask refined with its saliency map, and the pixels it newly ignores."""
    dataset, index, label_dir, saliency_dir, cfg = job
    labels = load_label_png(per_image_path(label_dir, name, ".png"))
    size = dataset.image_size(index[name]) if hasattr(dataset, "image_size") else labels.shape
    if labels.shape != tuple(size):
        raise SaliencyError(f"{per_image_path(label_dir, name, '.png')}: mask is "
                            f"{labels.shape[0]}x{labels.shape[1]} but the image is "
                            f"{size[0]}x{size[1]}")
    sal = load_saliency(per_image_path(saliency_dir, name, ".png"), size)
    out = refine_with_saliency(labels, sal, cfg.saliency_threshold)
    return ImageResult(files={"mask": out},
                 sums={"flipped": int(((out == IGNORE_INDEX) & (labels != IGNORE_INDEX)).sum()),
                       "pixels": out.size})


def _drive(job: tuple, todo: list, emit) -> None:
    # Every saliency map the images to do need is checked before the first is written.
    _require_saliency(job[3], todo)
    for name in todo:
        emit(name, _refine_one(job, name))


STAGE = PerImageStage("saliency", {"mask": Output("{id}.png", save_index_png)}, drive=_drive,
                      sums={"flipped": (), "pixels": ()})


def apply_saliency(dataset, label_dir: str | Path, saliency_dir: str | Path, out_dir: str | Path,
                   cfg: Optional[IRNConfig] = None) -> dict:
    """Write ``out_dir/<id>.png``: the masks of ``label_dir`` refined with ``saliency_dir``.

    A missing saliency map is an error naming it (a pseudo mask without its saliency check would
    silently differ from the rest); missing masks follow ``cfg.allow_missing``. Existing outputs are
    kept (resume). Returns ``{'written', 'skipped_existing', 'missing', 'newly_ignored_fraction',
    'seconds'}``; the fraction (pixels set to 255 here) is over the pixels written in this call, on every rank.
    """
    cfg = cfg if cfg is not None else IRNConfig()
    saliency_dir, out_dir = Path(saliency_dir), Path(out_dir)
    if not saliency_dir.is_dir():
        raise SaliencyError(f"saliency folder not found: {saliency_dir}")
    names, missing = present_names(label_dir, dataset.ids, ".png", "pseudo masks", "saliency",
                                   cfg.allow_missing)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_settings(out_dir, "saliency", {"saliency_threshold": cfg.saliency_threshold,
                                         "saliency_dir": str(saliency_dir.resolve())})
    job = (dataset, dataset_index(dataset), Path(label_dir), saliency_dir, cfg)
    run = run_stage(STAGE, job, names, out_dir)
    flipped, total = run.count("flipped"), run.count("pixels")
    return {"written": run.written, "skipped_existing": run.skipped, "missing": len(missing),
            "newly_ignored_fraction": round(flipped / total, 4) if total else None,
            "seconds": run.seconds}


def _require_saliency(saliency_dir: Path, names: Sequence[str]) -> None:
    present = {p.name for p in saliency_dir.iterdir()}
    missing = [n for n in names if f"{n}.png" not in present]
    if missing:
        raise SaliencyError(f"{saliency_dir / (missing[0] + '.png')}: saliency map not found "
                            f"({len(missing)} of {len(names)} images lack one: {preview(missing)})")
