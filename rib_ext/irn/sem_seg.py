"""Stages ``make_sem_seg`` (random walk -> pseudo masks) and ``eval_mask`` (their mIoU).

Per image: IRN's boundary map at scale 1.0 (image and mirror averaged), the stride-4 maps (** power,
RIB) times (1 - boundary) propagated by the random walk, upsampled x4 (bilinear), cropped to the
image, divided by their global max, stacked behind a constant background plane at
``sem_seg_bg_thres``; the argmax, mapped through the keys, is the pseudo mask.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rib_ext.data import multiscale_flip_views, save_index_png
from rib_ext.evaluation import evaluate_folder_masks, note_missing, with_ground_truth, write_report
from rib_ext.io import file_sha256, save_npy
from rib_ext.config import IRNConfig
from rib_ext.irn.network import infer_boundary, load_irnet
from rib_ext.irn.random_walk import propagate_maps
from rib_ext.ops.cam import strided_size
from rib_ext.outputs import check_settings, dataset_index, load_maps, per_image_path, present_names
from rib_ext.runner import ImageResult, Output, PerImageStage, on_main_rank, run_stage
from rib_ext.runtime import resolve_device
from rib_ext.irn.train_irn import MODEL_FILE


def walked_scores(walked: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
    """Per-class scores [K', H, W] in [0, 1]: walked maps [K', h, w] (stride 4) upsampled x4,
    cropped to the image and divided by their global max (all zero when nothing survived)."""
    h, w = int(image_size[0]), int(image_size[1])
    if walked.shape[0] == 0:
        return walked.new_zeros((0, h, w))
    up = F.interpolate(walked[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
    up = up[:, :h, :w]
    peak = up.max()
    # All-zero maps (nothing survived the walk) would divide by zero: that image is background.
    return up / peak if peak > 0 else torch.zeros_like(up)


def scores_to_labels(scores: torch.Tensor, keys: Sequence[int], bg_thres: float) -> np.ndarray:
    """Class ids uint8 [H, W]: argmax over [a background plane at ``bg_thres``, scores]."""
    lut = torch.as_tensor(np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1]),
                          device=scores.device)
    if scores.shape[0] == 0:
        return np.zeros(tuple(scores.shape[1:]), dtype=np.uint8)
    padded = F.pad(scores, (0, 0, 0, 0, 1, 0), value=bg_thres)
    return lut[padded.argmax(dim=0)].to(torch.uint8).cpu().numpy()


def walked_to_labels(walked: torch.Tensor, keys: Sequence[int], image_size: Sequence[int],
                     bg_thres: float) -> np.ndarray:
    """Class ids uint8 [H, W] from walked maps [K', h, w] (stride 4) and their 0-based keys."""
    return scores_to_labels(walked_scores(walked, image_size), keys, bg_thres)


def make_sem_seg(maps: torch.Tensor, keys: Sequence[int], boundary: torch.Tensor,
                 image_size: Sequence[int], cfg: Optional[IRNConfig] = None,
                 return_scores: bool = False):
    """One image's pseudo mask uint8 [H, W] (0 bg, keys + 1); with ``return_scores`` also the
    random-walk scores [K', H, W] in [0, 1] it was taken from (the segment stage's re-training
    starts from them).

    ``maps`` [K', ceil(H/4), ceil(W/4)] (IRN's ``cam``), ``boundary`` [ceil(H/4), ceil(W/4)] in
    [0, 1]; computed on ``boundary``'s device.
    """
    cfg = cfg if cfg is not None else IRNConfig()
    if tuple(boundary.shape) != strided_size(image_size, 4):
        raise ValueError(f"boundary {tuple(boundary.shape)} is not the stride-4 grid "
                         f"{strided_size(image_size, 4)} of a {image_size[0]}x{image_size[1]} image")
    maps = torch.as_tensor(maps).to(boundary.device)
    walked = propagate_maps(maps, boundary.float(), cfg.rw_radius, cfg.beta, cfg.exp_times,
                            cfg.map_power)
    scores = walked_scores(walked, image_size)
    labels = scores_to_labels(scores, keys, cfg.sem_seg_bg_thres)
    return (labels, scores) if return_scores else labels


def _model_path(irn: str | Path) -> Path:
    irn = Path(irn)
    return irn / MODEL_FILE if irn.is_dir() else irn


def _walk_one(job: dict, name: str) -> ImageResult:
    """One image's pseudo mask (and, with a score folder, its random-walk scores)."""
    dataset, maps_dir, cfg, device = job["dataset"], job["maps_dir"], job["cfg"], job["device"]
    if job.get("net") is None:  # loaded on the first image to do, not for a finished folder
        job["net"] = load_irnet(job["model_path"], device)
    i = job["index"][name]
    img = dataset.image(i)
    size = img.shape[:2]
    keys, maps = load_maps(per_image_path(maps_dir, name, ".npy"), dataset.num_classes, size,
                           "cam", labels=dataset.labels(i))
    views = multiscale_flip_views(img, (1.0,))[0].to(device)
    boundary = infer_boundary(job["net"], views, cfg.boundary_pad_to)
    mask, scores = make_sem_seg(maps, keys, boundary, size, cfg, return_scores=True)
    files = {"mask": mask}
    if job["scores"]:
        files["scores"] = {"keys": np.asarray(keys, dtype=np.int64),
                           "score": scores.cpu().numpy().astype(np.float16)}
    return ImageResult(files=files)


def make_sem_seg_stage(dataset, maps_dir: str | Path, irn: str | Path, out_dir: str | Path,
                       cfg: Optional[IRNConfig] = None,
                       score_dir: Optional[str | Path] = None) -> dict:
    """Write ``out_dir/<id>.png`` (grayscale class ids) for every image with maps.

    ``irn``: the train_irn output folder or its ``irn.pth``. ``score_dir``: also write each image's
    random-walk scores there as ``{'keys', 'score': float16 [K', H, W]}`` (what the segment
    stage's re-training starts from). Existing PNGs are kept (resume);
    missing maps stop the stage or are skipped (``cfg.allow_missing``). Returns ``{'written',
    'skipped_existing', 'missing', 'seconds', 'seconds_per_image'}`` (the counts over all ranks:
    under torchrun each rank walks its shard of the images).
    """
    cfg = cfg if cfg is not None else IRNConfig()
    out_dir = Path(out_dir)
    present, missing = present_names(maps_dir, dataset.ids, ".npy", "maps", "make_sem_seg",
                                     cfg.allow_missing)
    model_path = _model_path(irn)
    if not model_path.is_file():
        raise FileNotFoundError(f"make_sem_seg: IRN checkpoint not found: {model_path} "
                                f"(train_irn writes it)")
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(cfg, k) for k in ("rw_radius", "beta", "exp_times", "map_power",
                                             "sem_seg_bg_thres", "boundary_pad_to")}
    check_settings(out_dir, "make_sem_seg", {**settings, "model_sha256": file_sha256(model_path)})
    # The scores first: a mask on disk implies its scores are too.
    outputs = {"mask": Output("{id}.png", save_index_png)}
    if score_dir is not None:
        outputs = {"scores": Output(str(Path(score_dir).absolute() / "{id}.npy"), save_npy), **outputs}
    stage = PerImageStage("make_sem_seg", outputs, compute=_walk_one)
    job = {"dataset": dataset, "index": dataset_index(dataset), "maps_dir": Path(maps_dir), "cfg": cfg,
           "device": resolve_device(cfg.device), "model_path": model_path, "net": None,
           "scores": score_dir is not None}
    run = run_stage(stage, job, present, out_dir)
    todo = len(run.todo)
    return {"written": run.written, "skipped_existing": run.skipped, "missing": len(missing),
            "seconds": run.seconds,
            "seconds_per_image": round(run.seconds / todo, 3) if todo else None}


def eval_mask_stage(dataset, mask_dir: str | Path, out_dir: str | Path,
                    cfg: Optional[IRNConfig] = None) -> dict:
    """mIoU of the pseudo masks in ``mask_dir`` over the images with ground truth.

    Writes ``out_dir/result.json``, ``result.md`` and ``confusion.npy``. Returns ``{'miou',
    'num_images', 'missing', 'seconds', 'per_class_iou'}``.
    """
    cfg = cfg if cfg is not None else IRNConfig()
    t0 = time.time()
    with_gt, no_mask = with_ground_truth(dataset, dataset.ids, "eval_mask", cfg.allow_missing)
    if not with_gt:
        raise ValueError("eval_mask: no image of the dataset has a ground-truth mask")
    names, missing = present_names(mask_dir, with_gt, ".png", "pseudo masks", "eval_mask",
                                   cfg.allow_missing)
    if not names:
        raise ValueError(f"eval_mask: none of the {len(with_gt)} images with ground truth has a "
                         f"mask in {mask_dir}")
    # Under torchrun each rank scores its shard; the confusion counts are summed over the ranks.
    result = note_missing(evaluate_folder_masks(dataset, names, mask_dir, "eval_mask"), no_mask)
    class_names = ("background",) + tuple(dataset.class_names)
    on_main_rank(lambda: write_report(out_dir, result, class_names,
                                      title="Pseudo masks (IRN random walk)"))
    return {"miou": result["miou"], "num_images": result["num_images"], "missing": len(missing),
            "per_class_iou": dict(zip(class_names, result["per_class_iou"])),
            "seconds": round(time.time() - t0, 2)}
