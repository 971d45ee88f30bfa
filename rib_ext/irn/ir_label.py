"""Stage ``ir_label``: confident labels from the maps, IRN's training target.

Per image two CRF-refined seeds are made from the full-size maps: one at the high threshold
``conf_fg`` (confident foreground) and one at the low threshold ``conf_bg`` (where even a weak
activation counts as object, what stays background is confident background). Combined: class id
where the high pass says foreground, 0 where both passes say background, 255 (uncertain) elsewhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from rib_ext.config import CRFConfig
from rib_ext.crf import crf_from_maps
from rib_ext.data import IGNORE_INDEX, save_index_png
from rib_ext.config import IRNConfig
from rib_ext.outputs import check_settings, dataset_index, load_maps, per_image_path, present_names
from rib_ext.runner import ImageResult, Output, PerImageStage, run_stage
from rib_ext.workers import resolve_workers


def combine_confident(fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """uint8 [H, W] from the class-id maps of the high-threshold (``fg``) and low-threshold (``bg``)
    passes: fg's class where it has one, else 0 where bg is background too, else 255."""
    fg, bg = np.asarray(fg), np.asarray(bg)
    if fg.shape != bg.shape:
        raise ValueError(f"the two passes differ in shape: {fg.shape} vs {bg.shape}")
    out = np.where(fg != 0, fg, np.where(bg == 0, 0, IGNORE_INDEX))
    return out.astype(np.uint8)


def confident_labels(img: np.ndarray, maps: np.ndarray, keys: np.ndarray, conf_fg: float,
                     conf_bg: float, crf: Optional[CRFConfig] = None) -> np.ndarray:
    """One image's confident labels, uint8 [H, W] (0 bg, keys + 1, 255 uncertain).

    ``img`` uint8 [H, W, 3]; ``maps`` [K', H, W] max-normalised (``high_res``); ``keys`` [K'].
    A pixel is foreground in a pass only where some map is strictly above the threshold.
    """
    fg = crf_from_maps(img, maps, keys, conf_fg, crf)
    bg = crf_from_maps(img, maps, keys, conf_bg, crf)
    return combine_confident(fg, bg)


def _label_one(job: tuple, name: str) -> ImageResult:
    """One image's confident labels (a pool worker's task)."""
    dataset, index, maps_dir, cfg = job
    i = index[name]
    img = dataset.image(i)
    keys, maps = load_maps(per_image_path(maps_dir, name, ".npy"), dataset.num_classes,
                           img.shape[:2], "high_res", labels=dataset.labels(i))
    return ImageResult(files={"labels": confident_labels(img, maps, keys, cfg.conf_fg, cfg.conf_bg, cfg.crf)})


# Grayscale indices: 0 bg, class ids, 255 uncertain.
STAGE = PerImageStage("ir_label", {"labels": Output("{id}.png", save_index_png)}, compute=_label_one)


def ir_label_stage(dataset, maps_dir: str | Path, out_dir: str | Path,
                   cfg: Optional[IRNConfig] = None, workers: Optional[int] = None) -> dict:
    """Write ``out_dir/<id>.png`` (grayscale indices; 0 bg, class ids, 255 uncertain) per image.

    Images whose PNG exists are skipped (outputs are atomic, so a rerun resumes); images without
    maps stop the stage with a list, or are skipped with a warning (``cfg.allow_missing``). Under
    torchrun each rank labels its shard; within a rank ``workers`` processes share the images
    (None: the cores available; 0 or 1: this process). Returns ``{'written',
    'skipped_existing', 'missing', 'seconds'}``, the counts summed over the ranks.
    """
    cfg = cfg if cfg is not None else IRNConfig()
    out_dir = Path(out_dir)
    present, missing = present_names(maps_dir, dataset.ids, ".npy", "maps", "ir_label",
                                     cfg.allow_missing)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_settings(out_dir, "ir_label", {"conf_fg": cfg.conf_fg, "conf_bg": cfg.conf_bg,
                                         "crf": cfg.as_dict()["crf"]})
    job = (dataset, dataset_index(dataset), Path(maps_dir), cfg)
    run = run_stage(STAGE, job, present, out_dir, workers=resolve_workers(workers))
    return {"written": run.written, "skipped_existing": run.skipped, "missing": len(missing),
            "seconds": run.seconds}
