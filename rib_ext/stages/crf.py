"""Stage ``crf``: dense-CRF refinement of the seeds (IRN's unary from the thresholded maps), written
as class-index PNGs and evaluated with the same code as eval_seed."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from rib_ext import distributed
from rib_ext.config import CRFConfig
from rib_ext.crf import crf_from_maps
from rib_ext.data import load_label_png, save_index_png
from rib_ext.evaluation import confusion_matrix, summarize_confusion, write_report
from rib_ext.io import load_npy_dict
from rib_ext.stages.common import map_path, progress, require_maps, result_settings, split_complete
from rib_ext.workers import resolve_workers, run_tasks

UPSTREAM = ("make_cam", "rib", "eval_seed", "data:eval")


def settings(cfg) -> dict:
    return result_settings(cfg.crf)


def run(ctx, cfg) -> dict:
    from rib_ext.stages.eval_seed import headline

    results = {}
    for name, maps_dir in ctx.require_map_sets("crf").items():
        threshold = cfg.crf.threshold
        if threshold is None:
            threshold = ctx.best_threshold(name)
        result = crf(ctx.eval_set, maps_dir, threshold, cfg.crf, ctx.stage_dir("crf", name),
                     allow_missing=cfg.allow_missing, workers=cfg.cpu_workers)
        results[name] = headline(result)
        if "miou" in result:
            ctx.info(f"[crf] {name.upper()} + CRF mIoU {100 * result['miou']:.1f} at threshold "
                     f"{threshold:.2f}")
    return results


@dataclass(frozen=True)
class _Job:
    """What a worker needs to refine and score one image (inherited by forked workers)."""

    dataset: object
    index: dict
    maps_dir: Path
    mask_dir: Path
    threshold: float
    cfg: CRFConfig
    done: frozenset  # names whose mask exists and is whole: read back, not made again


def _refine_one(job: _Job, name: str):
    """(confusion matrix or None without ground truth, 1 if the mask was written here else 0)."""
    i = job.index[name]
    png = job.mask_dir / f"{name}.png"
    if name in job.done:
        pred, written = load_label_png(png), 0
    else:
        maps = load_npy_dict(map_path(job.maps_dir, name))
        pred = crf_from_maps(job.dataset.image(i), maps["high_res"], maps["keys"], job.threshold,
                             job.cfg)
        save_index_png(png, pred)  # class indices, as IRN-derived code reads them; atomic
        written = 1
    gt = job.dataset.mask(i)
    conf = None if gt is None else confusion_matrix(pred, gt, job.dataset.num_classes + 1)
    return conf, written


def crf(dataset, maps_dir: str | Path, threshold: float, cfg: CRFConfig, out_dir: str | Path,
        allow_missing: bool = False, workers: Optional[int] = None) -> dict:
    """Refine every image's seed at background ``threshold`` with the dense CRF.

    Writes ``out_dir/masks/<id>.png`` (class ids; existing ones are kept, so a rerun resumes) and,
    over the images with ground truth, ``out_dir/result.{json,md}``. Under torchrun each rank
    refines its shard of the images and the confusion counts are summed over the ranks (rank 0
    writes the report); within a rank ``workers`` processes share the images (None: the cores
    available). The masks and figures are the same for any number of ranks and workers.
    """
    out_dir = Path(out_dir)
    mask_dir = out_dir / "masks"
    maps_dir = Path(maps_dir)
    names = require_maps(maps_dir, dataset.ids, "crf", allow_missing)
    mask_dir.mkdir(parents=True, exist_ok=True)
    mine = distributed.shard(names)
    done = split_complete({n: mask_dir / f"{n}.png" for n in mine}, "crf")[0]
    job = _Job(dataset, {n: i for i, n in enumerate(dataset.ids)}, maps_dir, mask_dir, threshold,
               cfg, frozenset(done))
    size = dataset.num_classes + 1
    conf = np.zeros((size, size), dtype=np.int64)
    counts = np.zeros(2, dtype=np.int64)  # images evaluated, masks written
    t0 = time.time()
    bar = progress(None, "crf", total=len(mine))
    for _, (image_conf, written) in run_tasks(_refine_one, job, mine, resolve_workers(workers)):
        if image_conf is not None:
            conf += image_conf
            counts[0] += 1
        counts[1] += written
        bar.update(1)
    bar.close()
    seconds = time.time() - t0
    # Integer counts: summed over ranks they are the whole list's, in any order.
    conf = distributed.all_reduce_sum(conf)
    evaluated, written = (int(x) for x in distributed.all_reduce_sum(counts))
    result = {"threshold": threshold, "num_images": evaluated, "written": written,
              "seconds": round(seconds, 1)}
    if evaluated:
        result.update(summarize_confusion(conf))
        if distributed.rank() == 0:
            write_report(out_dir, result, ("background",) + tuple(dataset.class_names),
                         title=f"CRF-refined seeds (threshold {threshold:.2f})")
    distributed.barrier()
    return result
