"""Stage ``eval_seed``: the background-threshold sweep of the maps against the ground truth
(:func:`rib_ext.evaluation.eval_seed`)."""
from __future__ import annotations

import math

from rib_ext.evaluation import eval_seed, percent
from rib_ext.stages.common import evaluation_summary, result_settings

UPSTREAM = ("make_cam", "rib", "data:eval", "truth:eval")


def settings(cfg) -> dict:
    return result_settings(cfg.eval_seed)


def run(ctx, cfg) -> dict:
    results = {}
    for name, maps_dir in ctx.require_map_sets("eval_seed").items():
        out = ctx.layout.seed_dir(name)
        result = eval_seed(ctx.eval_set, maps_dir, cfg.eval_seed, out,
                           allow_missing=cfg.allow_missing, title=f"{name.upper()} seed")
        results[name] = evaluation_summary(result)
        ctx.info(f"[eval_seed] {name.upper()} seed mIoU {percent(result['miou'])} at threshold "
                 f"{result['best_threshold']:.2f} (precision {percent(result['precision'])}, "
                 f"recall {percent(result['recall'])}) -> {out / 'result.md'}")
        if math.isnan(result["precision"]):
            ctx.warn(f"[eval_seed] {name.upper()}: no pixel is foreground at the best threshold "
                     f"{result['best_threshold']:.2f}, so the precision is undefined: the maps "
                     f"are (nearly) empty; check the classifier (make_cam) or the thresholds")
    return results
