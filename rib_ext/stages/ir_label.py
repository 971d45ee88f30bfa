"""Stage ``ir_label``: IRN's confident fg/bg labels from each map set (two thresholds + CRF); the
maths is :func:`rib_ext.irn.ir_label_stage`."""
from __future__ import annotations

from rib_ext.stages.common import brief, result_settings

UPSTREAM = ("make_cam", "rib", "eval_seed", "data:eval")


def settings(cfg) -> dict:
    irn = result_settings(cfg.irn)
    return {"irn_auto_thresholds": cfg.irn_auto_thresholds, **{k: irn[k] for k in cfg.irn.IR_LABEL_FIELDS}}


def run(ctx, cfg) -> dict:
    from rib_ext.irn import ir_label_stage

    results = {}
    for name, maps_dir in ctx.require_map_sets("ir_label").items():  # every rank: its shard
        irn = cfg.irn
        if cfg.irn_auto_thresholds:
            t = ctx.best_threshold(name)
            irn = irn.replace(conf_fg=round(min(t + 0.1, 0.99), 2), conf_bg=round(max(t - 0.1, 0.0), 2))
        results[name] = brief(ir_label_stage(ctx.eval_set, maps_dir, ctx.layout.ir_label_dir(name), irn,
                                             workers=cfg.cpu_workers))
        ctx.info(f"[ir_label] {name}: fg > {irn.conf_fg}, bg <= {irn.conf_bg}: {results[name]}")
    return results

