"""Stage ``make_sem_seg``: random walk of each map set's maps over IRN's affinities -> pseudo masks
(and the walk's scores, which the segment stage re-trains from); then, with ``saliency_dir``, the
RIB-Sal step: masks refined with saliency maps. The maths: :mod:`rib_ext.irn`."""
from __future__ import annotations

from rib_ext import presets
from rib_ext.stages.common import plain_values, result_settings

UPSTREAM = ("make_cam", "rib", "train_irn", "eval_seed", "data:eval")
# With --irn-auto-thresholds the walk's background threshold is eval_seed's best: recorded as a value.
RESULTS_FROM = ("eval_seed",)


def settings(cfg) -> dict:
    irn = result_settings(cfg.irn)
    return {"saliency_dir": cfg.saliency_dir, **{k: irn[k] for k in cfg.irn.SEM_SEG_FIELDS}}


def derived(ctx, cfg, name: str) -> dict:
    """The IRN network the masks of map set ``name`` were walked with (its sha256; None before
    train_irn has made it): a network trained again is never mixed with the masks of the last;
    with --irn-auto-thresholds, the background threshold taken from eval_seed."""
    from rib_ext.io import file_digest

    path = ctx.layout.irn_model(name)
    values = {"irn_model_sha256": file_digest(path) if path.is_file() else None}
    if cfg.irn_auto_thresholds:
        t = ctx.seed_threshold(name)
        values["sem_seg_bg_thres"] = presets.walk_background(t)["sem_seg_bg_thres"] if t is not None else None
    return values


def run(ctx, cfg) -> dict:
    from rib_ext.irn import make_sem_seg_stage

    results = {}
    # Every rank walks its shard of the images with the network train_irn wrote: wait until it is
    # there (train_irn may have run on rank 0 alone).
    ctx.barrier()
    for name, maps_dir in ctx.require_map_sets("make_sem_seg").items():
        irn = cfg.irn
        if cfg.irn_auto_thresholds:
            irn = irn.replace(**presets.walk_background(ctx.best_threshold(name)))  # recorded by derived()
        results[name] = plain_values(make_sem_seg_stage(ctx.eval_set, maps_dir, ctx.layout.irn_dir(name),
                                                 ctx.mask_dir(name), irn, score_dir=ctx.score_dir(name)))
        ctx.info(f"[make_sem_seg] {name}: background <= {irn.sem_seg_bg_thres}: {results[name]}")
        if cfg.saliency_dir:
            results[f"{name}_saliency"] = saliency(ctx, cfg, name)
    return results


def saliency(ctx, cfg, name: str) -> dict:
    """RIB-Sal: pixels where the pseudo mask and the saliency map disagree become ignore."""
    from rib_ext.irn import apply_saliency

    result = plain_values(apply_saliency(ctx.eval_set, ctx.mask_dir(name), cfg.saliency_dir,
                                  ctx.saliency_mask_dir(name), cfg.irn))
    ctx.info(f"[make_sem_seg] {name} + saliency: {result}")
    return result
