"""Stage ``visualize``: pictures of the run (:func:`rib_ext.figures.visualize_run`).

Per image (a fixed, evenly spread set of the evaluated list) the image, its ground truth, the CAM
and RIB maps, both seeds at their best thresholds and the CRF / IRN masks made so far; a montage of
RIB's map after each step for a few images (re-adapted with the run's classifier and settings); the
target logit sums per step against the margin. Pictures are drawn afresh on every run (they are
cheap), so they always show the outputs now on disk.
"""
from __future__ import annotations

from rib_ext.stages.common import result_settings

UPSTREAM = ("make_cam", "rib", "eval_seed", "crf", "make_sem_seg", "data:eval", "truth:eval")


def settings(cfg) -> dict:
    return result_settings(cfg.visualize)


def run(ctx, cfg) -> dict:
    import numpy as np

    from rib_ext import distributed
    from rib_ext.rib import OtherImages
    from rib_ext.figures import visualize_run

    ctx.require_map_sets("visualize")
    vis = cfg.visualize
    model = pool = None
    if vis.montage_count > 0 and ctx.maps_dir("rib").is_dir():
        model = ctx.load_classifier()
        pool = OtherImages(ctx.pool_set, ctx.device, cfg.rib.other_resize_long, cfg.rib.other_crop,
                           cache_bytes=cfg.rib.image_cache_mb << 20)
    # Every rank draws its share of the panels and montages (the choice of images is the same on
    # every rank), rank 0 the logit curves.
    result = visualize_run(ctx.out, ctx.eval_set, count=vis.count, model=model, pool=pool,
                           rib_cfg=cfg.rib if model is not None else None,
                           montage_count=vis.montage_count if model is not None else 0,
                           device=ctx.device, dest=str(ctx.layout.pictures),
                           rank=distributed.rank(), world=distributed.world_size())
    ctx.barrier("visualize: the other ranks' pictures")
    images, montages = (int(n) for n in distributed.all_reduce_sum(
        np.array([len(result["images"]), len(result["steps"])], dtype=np.int64)))
    ctx.info(f"[visualize] {images} image panels, {montages} step montages -> {result['dir']}")
    return {"images": images, "montages": montages, "dir": result["dir"]}
