"""Dense CRF refinement of label maps (IRN's ``imutils.crf_inference_label``), via pydensecrf.

pydensecrf is imported on first use so the rest of the package works without it (the GPU machine,
for one, does not have it).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from rib_ext.config import CRFConfig
from rib_ext.data import load_label_png, save_index_png
from rib_ext.evaluation import (confusion_matrix, indices_to_class_ids, note_missing, seed_label_indices,
                                summarize_confusion, with_ground_truth, write_report)
from rib_ext.outputs import load_maps, map_path, require_maps
from rib_ext.runner import ImageResult, Output, PerImageStage, on_main_rank, run_stage
from rib_ext.workers import resolve_workers


def _densecrf():
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_labels
    except ImportError as err:
        raise ImportError("the dense CRF needs pydensecrf: `pip install pydensecrf2` (the package "
                          "named pydensecrf fails to build with Cython 3; pydensecrf2 provides the "
                          "same pydensecrf module)") from err
    return dcrf, unary_from_labels


def _check_image(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {img.dtype} {img.shape}")
    # pydensecrf takes a writable, C-contiguous buffer: a flipped or cropped view, or the
    # read-only array of a decoded PIL image, must be copied first.
    return np.require(img, requirements=["C_CONTIGUOUS", "WRITEABLE"])


def crf_refine_labels(img: np.ndarray, labels: np.ndarray, n_labels: int,
                      cfg: Optional[CRFConfig] = None) -> np.ndarray:
    """Refine ``labels`` [H, W] (values 0..n_labels-1) on the RGB image ``img`` uint8 [H, W, 3].

    Unary from the labels with confidence ``gt_prob`` (label 0 is an ordinary label, not "unsure"),
    a Gaussian and a bilateral pairwise term, ``iterations`` mean-field steps; returns the argmax
    label index map [H, W] (int64).
    """
    cfg = cfg if cfg is not None else CRFConfig()
    img = _check_image(img)
    labels = np.asarray(labels)
    h, w = img.shape[:2]
    if labels.shape != (h, w):
        raise ValueError(f"labels are {labels.shape} but the image is {(h, w)}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"labels hold values outside 0..{n_labels - 1}: "
                         f"{np.unique(labels[(labels < 0) | (labels >= n_labels)])[:5].tolist()}")
    if n_labels == 1:
        # One label: nothing to decide (and unary_from_labels would divide by n_labels - 1 = 0).
        return np.zeros((h, w), dtype=np.int64)
    dcrf, unary_from_labels = _densecrf()
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(unary_from_labels(labels.astype(np.int64), n_labels, gt_prob=cfg.gt_prob,
                                         zero_unsure=False))
    crf.addPairwiseGaussian(sxy=cfg.gaussian_sxy, compat=cfg.gaussian_compat)
    crf.addPairwiseBilateral(sxy=cfg.bilateral_sxy, srgb=cfg.bilateral_srgb, rgbim=img,
                             compat=cfg.bilateral_compat)
    q = np.asarray(crf.inference(cfg.iterations)).reshape(n_labels, h, w)
    return np.argmax(q, axis=0)


def crf_from_maps(img: np.ndarray, maps: np.ndarray, keys: np.ndarray,
                  threshold: Optional[float] = None, cfg: Optional[CRFConfig] = None) -> np.ndarray:
    """IRN's seed -> CRF: threshold the maps into a seed, refine it, return class ids [H, W].

    ``maps`` [K', H, W] max-normalised (``high_res``), ``keys`` [K'] 0-based foreground class
    indices; ``threshold`` defaults to ``cfg.threshold``. The result holds 0 (background) or
    keys + 1.
    """
    cfg = cfg if cfg is not None else CRFConfig()
    threshold = threshold if threshold is not None else cfg.threshold
    if threshold is None:
        raise ValueError("no background threshold: pass one or set CRFConfig.threshold "
                         "(e.g. the best threshold of eval_seed)")
    maps = np.asarray(maps)
    keys = np.asarray(keys).reshape(-1)
    if maps.ndim != 3 or keys.size != maps.shape[0]:
        raise ValueError(f"maps must be [K', H, W] with one key per map; got maps {maps.shape} "
                         f"and {keys.size} keys")
    indices = seed_label_indices(maps, threshold)
    refined = crf_refine_labels(img, indices, maps.shape[0] + 1, cfg)
    return indices_to_class_ids(refined, keys)


# ------------------------------------------------------------------ the crf stage's work

@dataclass(frozen=True)
class _Job:
    """What a worker needs to refine and score one image (inherited by forked workers)."""

    dataset: object
    index: dict
    maps_dir: Path
    threshold: float
    cfg: CRFConfig


def _score(job: _Job, name: str, pred: np.ndarray) -> dict:
    gt = job.dataset.mask(job.index[name])
    if gt is None:
        return {}
    return {"confusion": confusion_matrix(pred, gt, job.dataset.num_classes + 1), "evaluated": 1}


def _refine_one(job: _Job, name: str) -> ImageResult:
    """One image's refined mask and its confusion counts (without ground truth, none)."""
    i = job.index[name]
    img = job.dataset.image(i)
    keys, maps = load_maps(map_path(job.maps_dir, name), job.dataset.num_classes, img.shape[:2],
                           labels=job.dataset.labels(i))
    pred = crf_from_maps(img, maps, keys, job.threshold, job.cfg)
    # class indices, as IRN-derived code reads them
    return ImageResult(files={"mask": pred}, sums=_score(job, name, pred))


def _reread_one(job: _Job, name: str, paths: dict) -> ImageResult:
    """A mask made by an earlier run: read back and scored."""
    return ImageResult(sums=_score(job, name, load_label_png(paths["mask"])))


def refine_seeds(dataset, maps_dir: str | Path, threshold: float, cfg: CRFConfig, out_dir: str | Path,
                 allow_missing: bool = False, workers: Optional[int] = None) -> dict:
    """Refine every image's seed at background ``threshold`` with the dense CRF.

    Writes ``out_dir/masks/<id>.png`` (class ids; existing ones are kept, so a rerun resumes) and,
    over the images with ground truth, ``out_dir/result.{json,md}``. Under torchrun each rank
    refines its shard of the images and the confusion counts are summed over the ranks (rank 0
    writes the report); within a rank ``workers`` processes share the images (None: the cores
    available). The masks and figures are the same for any number of ranks and workers.
    """
    out_dir = Path(out_dir)
    maps_dir = Path(maps_dir)
    no_mask = with_ground_truth(dataset, dataset.ids, "crf", allow_missing)[1]
    names = require_maps(maps_dir, dataset.ids, "crf", allow_missing)
    size = dataset.num_classes + 1
    stage = PerImageStage("crf", {"mask": Output("masks/{id}.png", save_index_png)},
                          compute=_refine_one, reuse=_reread_one,
                          sums={"confusion": (size, size), "evaluated": ()})
    job = _Job(dataset, {n: i for i, n in enumerate(dataset.ids)}, maps_dir, threshold, cfg)
    run = run_stage(stage, job, names, out_dir, workers=resolve_workers(workers))
    evaluated = run.count("evaluated")
    result = note_missing({"threshold": threshold, "num_images": evaluated, "written": run.written,
                           "seconds": round(run.seconds, 1)}, no_mask)
    if evaluated:
        result.update(summarize_confusion(run.sums["confusion"]))
    on_main_rank(lambda: evaluated and write_report(
        out_dir, result, ("background",) + tuple(dataset.class_names),
        title=f"CRF-refined seeds (threshold {threshold:.2f})"))
    return result
