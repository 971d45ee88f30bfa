"""Stage ``train_irn``: IRN's inter-pixel relation network on each map set's confident labels; the
maths is :func:`rib_ext.irn.train_irn_stage`."""
from __future__ import annotations

from rib_ext.stages.common import brief, rank0_map_sets, result_settings

# train_cam: on the demo IRN starts from the trained classifier's backbone.
UPSTREAM = ("ir_label", "train_cam", "data:eval")


def settings(cfg) -> dict:
    others = set(cfg.irn.IR_LABEL_FIELDS) | set(cfg.irn.SEM_SEG_FIELDS)
    return {k: v for k, v in result_settings(cfg.irn).items() if k not in others}


def run(ctx, cfg) -> dict:
    from rib_ext.irn import train_irn_stage

    results = {}
    for name, _ in rank0_map_sets(ctx, "train_irn"):
        results[name] = brief(train_irn_stage(ctx.eval_set, ctx.stage_dir("ir_label", name),
                                              ctx.stage_dir("train_irn", name), cfg.irn))
        ctx.info(f"[train_irn] {name}: {results[name]}")
    return results

