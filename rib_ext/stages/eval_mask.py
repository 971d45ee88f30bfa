"""Stage ``eval_mask``: mIoU of each map set's pseudo masks (:func:`rib_ext.irn.eval_mask_stage`)."""
from __future__ import annotations

from rib_ext.stages.common import evaluation_summary

UPSTREAM = ("make_sem_seg", "data:eval", "truth:eval")


def settings(cfg) -> dict:
    return {}


def run(ctx, cfg) -> dict:
    from rib_ext.evaluation import percent
    from rib_ext.irn import eval_mask_stage

    results = {}
    for name in ctx.require_map_sets("eval_mask"):  # each rank scores its shard of the masks
        out = ctx.layout.mask_eval_dir(name)
        result = eval_mask_stage(ctx.eval_set, ctx.mask_dir(name), out, cfg.irn)
        results[name] = evaluation_summary(result)
        ctx.info(f"[eval_mask] {name.upper()} -> IRN pseudo-mask mIoU {percent(result['miou'])} "
                 f"-> {out / 'result.md'}")
    return results
