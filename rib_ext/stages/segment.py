"""Stage ``segment``: DeepLab-v2 trained on the pseudo masks (of rib, else cam), evaluated on the
val list; the maths is :func:`rib_ext.segment.segment_stage`."""
from __future__ import annotations

from rib_ext.stages.common import evaluation_summary, result_settings

UPSTREAM = ("make_sem_seg", "data:eval", "data:val", "truth:val")


def settings(cfg) -> dict:
    return result_settings(cfg.segment)


def run(ctx, cfg) -> dict:
    from rib_ext.evaluation import percent
    from rib_ext.segment import segment_stage

    # Every rank: the training is data-parallel and the inference sharded (segment_stage).
    ctx.barrier("make_sem_seg's pseudo masks")
    sets = ctx.require_map_sets("segment")
    name = "rib" if "rib" in sets else "cam"
    # RIB-Sal: train on the saliency-refined masks, without re-training (as the paper does).
    saliency = ctx.saliency_mask_dir(name) if cfg.saliency_dir else None
    scores = ctx.score_dir(name)
    seg = cfg.segment
    result = segment_stage(ctx.eval_set, ctx.mask_dir(name), ctx.val_set, ctx.layout.segment_dir, seg,
                           score_dir=scores if scores.is_dir() else None, saliency_dir=saliency)
    if result.get("miou") is not None:
        ctx.info(f"[segment] DeepLab-v2 on the {name.upper()} pseudo masks: val mIoU "
                 f"{percent(result['miou'])}")
    return evaluation_summary(result)
