"""Stage ``eval_seed``: the background-threshold sweep of the maps against the ground truth."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from rib_ext import distributed
from rib_ext.config import EvalSeedConfig
from rib_ext.evaluation import (ThresholdSweep, json_figures, note_missing, percent, plot_sweep,
                                 with_ground_truth, write_report)
from rib_ext.io import load_npy_dict
from rib_ext.stages.common import map_path, progress, require_maps, result_settings

UPSTREAM = ("make_cam", "rib", "data:eval")


def settings(cfg) -> dict:
    return result_settings(cfg.eval_seed)


def run(ctx, cfg) -> dict:
    results = {}
    for name, maps_dir in ctx.require_map_sets("eval_seed").items():
        out = ctx.stage_dir("eval_seed", name)
        result = eval_seed(ctx.eval_set, maps_dir, cfg.eval_seed, out,
                           allow_missing=cfg.allow_missing, title=f"{name.upper()} seed")
        results[name] = headline(result)
        ctx.info(f"[eval_seed] {name.upper()} seed mIoU {percent(result['miou'])} at threshold "
                 f"{result['best_threshold']:.2f} (precision {percent(result['precision'])}, "
                 f"recall {percent(result['recall'])}) -> {out / 'result.md'}")
        if math.isnan(result["precision"]):
            ctx.warn(f"[eval_seed] {name.upper()}: no pixel is foreground at the best threshold "
                     f"{result['best_threshold']:.2f}, so the precision is undefined: the maps "
                     f"are (nearly) empty; check the classifier (make_cam) or the thresholds")
    return results


def headline(result: dict) -> dict:
    """The figures a summary keeps of an evaluation."""
    keep = ("best_threshold", "threshold", "miou", "precision", "recall", "f1", "num_images", "seconds")
    return json_figures({k: result[k] for k in keep if k in result})


def eval_seed(dataset, maps_dir: str | Path, cfg: EvalSeedConfig, out_dir: str | Path,
              allow_missing: bool = False, title: str = "Seed evaluation") -> dict:
    """mIoU of ``argmax([t, maps])`` for every threshold t of the sweep, over the images that have
    a ground-truth mask; writes result.json, result.md, confusion.npy and sweep.png to ``out_dir``.
    """
    maps_dir = Path(maps_dir)
    names, no_mask = with_ground_truth(dataset, dataset.ids, "eval_seed", allow_missing)
    names = require_maps(maps_dir, names, "eval_seed", allow_missing)
    index = {name: i for i, name in enumerate(dataset.ids)}
    sweep = ThresholdSweep(num_classes=dataset.num_classes + 1, cfg=cfg)
    for name in progress(distributed.shard(names), "eval_seed"):
        gt = dataset.mask(index[name])
        maps = load_npy_dict(map_path(maps_dir, name))
        sweep.update(maps["high_res"], maps["keys"], gt)
    # Confusion matrices are plain counts: summing them over ranks gives the whole list's.
    sweep.confusions = distributed.all_reduce_sum(sweep.confusions)
    sweep.num_images = int(distributed.all_reduce_sum(np.array([sweep.num_images]))[0])
    if sweep.num_images == 0:
        raise ValueError(f"eval_seed: no image of the list has a ground-truth mask ({len(dataset)} images)")
    result = note_missing(sweep.result(), no_mask)
    out_dir = Path(out_dir)
    if distributed.rank() != 0:
        return result
    write_report(out_dir, result, ("background",) + tuple(dataset.class_names), title=title)
    plot_sweep(out_dir / "sweep.png", result)
    return result
