"""Stage ``ir_label``: IRN's confident fg/bg labels from each map set (two thresholds + CRF); the
maths is :func:`rib_ext.irn.ir_label_stage`."""
from __future__ import annotations

from rib_ext import presets
from rib_ext.stages.common import plain_values, result_settings

UPSTREAM = ("make_cam", "rib", "eval_seed", "data:eval")
# With --irn-auto-thresholds the thresholds come from eval_seed's result: recorded as values.
RESULTS_FROM = ("eval_seed",)


def settings(cfg) -> dict:
    irn = result_settings(cfg.irn)
    return {"irn_auto_thresholds": cfg.irn_auto_thresholds, **{k: irn[k] for k in cfg.irn.IR_LABEL_FIELDS}}


def derived(ctx, cfg, name: str) -> dict:
    """The thresholds ir_label uses for map set ``name`` when they follow its best seed threshold
    (None before eval_seed has run)."""
    if not cfg.irn_auto_thresholds:
        return {}
    t = ctx.seed_threshold(name)
    return presets.confident_thresholds(t) if t is not None else {"conf_fg": None, "conf_bg": None}


def run(ctx, cfg) -> dict:
    from rib_ext.irn import ir_label_stage

    results = {}
    for name, maps_dir in ctx.require_map_sets("ir_label").items():  # every rank: its shard
        irn = cfg.irn
        if cfg.irn_auto_thresholds:
            irn = irn.replace(**presets.confident_thresholds(ctx.best_threshold(name)))  # recorded by derived()
        results[name] = plain_values(ir_label_stage(ctx.eval_set, maps_dir, ctx.layout.ir_label_dir(name), irn,
                                             workers=cfg.cpu_workers))
        ctx.info(f"[ir_label] {name}: fg > {irn.conf_fg}, bg <= {irn.conf_bg}: {results[name]}")
    return results

