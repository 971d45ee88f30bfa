"""Stage ``crf``: dense-CRF refinement of the seeds (IRN's unary from the thresholded maps), written
as class-index PNGs and evaluated with the same code as eval_seed."""
from __future__ import annotations

import time
from pathlib import Path

from rib_ext.config import CRFConfig
from rib_ext.crf import crf_from_maps
from rib_ext.data import load_label_png, save_index_png
from rib_ext.evaluation import (confusion_matrix, note_missing, percent, summarize_confusion,
                                 with_ground_truth, write_report)
from rib_ext.io import load_npy_dict
from rib_ext.stages.common import map_path, progress, require_maps, result_settings, split_complete

UPSTREAM = ("make_cam", "rib", "eval_seed", "data:eval")


def settings(cfg) -> dict:
    return result_settings(cfg.crf)


def run(ctx, cfg) -> dict:
    from rib_ext.stages.eval_seed import headline

    results = {}
    if not ctx.is_main:  # light enough for one rank; the others wait
        ctx.barrier()
        return results
    for name, maps_dir in ctx.require_map_sets("crf").items():
        threshold = cfg.crf.threshold
        if threshold is None:
            threshold = ctx.best_threshold(name)
        result = crf(ctx.eval_set, maps_dir, threshold, cfg.crf, ctx.stage_dir("crf", name),
                     allow_missing=cfg.allow_missing)
        results[name] = headline(result)
        if "miou" in result:
            ctx.info(f"[crf] {name.upper()} + CRF mIoU {percent(result['miou'])} at threshold "
                     f"{threshold:.2f}")
    ctx.barrier()
    return results


def crf(dataset, maps_dir: str | Path, threshold: float, cfg: CRFConfig, out_dir: str | Path,
        allow_missing: bool = False) -> dict:
    """Refine every image's seed at background ``threshold`` with the dense CRF.

    Writes ``out_dir/masks/<id>.png`` (VOC palette, class ids; existing ones are kept, so a rerun
    resumes) and, over the images with ground truth, ``out_dir/result.{json,md}``.
    """
    out_dir = Path(out_dir)
    mask_dir = out_dir / "masks"
    maps_dir = Path(maps_dir)
    with_gt, no_mask = with_ground_truth(dataset, dataset.ids, "crf", allow_missing)
    names = require_maps(maps_dir, dataset.ids, "crf", allow_missing)
    with_gt = set(with_gt)
    index = {name: i for i, name in enumerate(dataset.ids)}
    conf = 0
    evaluated = 0
    t0 = time.time()
    done = set(split_complete({n: mask_dir / f"{n}.png" for n in names}, "crf")[0])
    for name in progress(names, "crf"):
        i = index[name]
        png = mask_dir / f"{name}.png"
        if name in done:
            pred = load_label_png(png)
        else:
            maps = load_npy_dict(map_path(maps_dir, name))
            pred = crf_from_maps(dataset.image(i), maps["high_res"], maps["keys"], threshold, cfg)
            save_index_png(png, pred)  # class indices, as IRN-derived code reads them
        if name in with_gt:
            conf = conf + confusion_matrix(pred, dataset.mask(i), dataset.num_classes + 1)
            evaluated += 1
    result = note_missing({"threshold": threshold, "num_images": evaluated,
                           "seconds": round(time.time() - t0, 1)}, no_mask)
    if evaluated:
        result.update(summarize_confusion(conf))
        write_report(out_dir, result, ("background",) + tuple(dataset.class_names),
                     title=f"CRF-refined seeds (threshold {threshold:.2f})")
    return result
