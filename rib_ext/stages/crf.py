"""Stage ``crf``: dense-CRF refinement of the seeds (IRN's unary from the thresholded maps), written
as class-index PNGs and evaluated with the same code as eval_seed (:func:`rib_ext.crf.refine_seeds`)."""
from __future__ import annotations

from rib_ext.crf import refine_seeds
from rib_ext.evaluation import percent
from rib_ext.stages.common import evaluation_summary, result_settings

UPSTREAM = ("make_cam", "rib", "eval_seed", "data:eval", "truth:eval")
# The threshold comes from eval_seed's result: the value is recorded, not eval_seed's settings.
RESULTS_FROM = ("eval_seed",)


def settings(cfg) -> dict:
    return result_settings(cfg.crf)


def derived(ctx, cfg, name: str) -> dict:
    """The seed threshold of map set ``name``, when it is eval_seed's best one (None before
    eval_seed has run): masks made at one threshold are never mixed with masks made at another."""
    return {} if cfg.crf.threshold is not None else {"threshold": ctx.seed_threshold(name)}


def run(ctx, cfg) -> dict:
    results = {}
    for name, maps_dir in ctx.require_map_sets("crf").items():
        threshold = cfg.crf.threshold
        if threshold is None:
            threshold = ctx.best_threshold(name, instead="--crf-threshold")  # recorded by derived()
        # Every rank refines its shard, in a pool of cfg.cpu_workers processes.
        result = refine_seeds(ctx.eval_set, maps_dir, threshold, cfg.crf, ctx.layout.crf_dir(name),
                              allow_missing=cfg.allow_missing, workers=cfg.cpu_workers)
        results[name] = evaluation_summary(result)
        if "miou" in result:
            ctx.info(f"[crf] {name.upper()} + CRF mIoU {percent(result['miou'])} at threshold "
                     f"{threshold:.2f}")
    return results
