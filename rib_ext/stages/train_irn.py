"""Stage ``train_irn``: IRN's inter-pixel relation network on each map set's confident labels; the
maths is :func:`rib_ext.irn.train_irn_stage`."""
from __future__ import annotations

from rib_ext.stages.common import plain_values, result_settings

# train_cam: on the demo IRN starts from the trained classifier's backbone.
UPSTREAM = ("ir_label", "train_cam", "data:eval")


def settings(cfg) -> dict:
    others = set(cfg.irn.IR_LABEL_FIELDS) | set(cfg.irn.SEM_SEG_FIELDS)
    return {k: v for k, v in result_settings(cfg.irn).items() if k not in others}


def check(cfg) -> None:
    """Before any stage runs: the training crop must hold IRN's path pairs at stride 4 (else
    train_irn would stop only after the stages before it have done their work)."""
    from rib_ext.config import ConfigError
    from rib_ext.irn.path_index import PathIndex

    grid = cfg.irn.crop_size // 4
    try:
        PathIndex(cfg.irn.path_radius).source_shape(grid, grid)
    except ValueError as err:
        demo = " (on the demo the crop is the image size: --demo-size)" if cfg.dataset == "demo" else ""
        raise ConfigError(f"train_irn: --irn.crop_size {cfg.irn.crop_size}{demo} gives a {grid}x{grid} "
                          f"grid at stride 4, too small for --irn.path_radius {cfg.irn.path_radius}: "
                          f"{err}; use a larger crop or a smaller --irn.path_radius") from None


def run(ctx, cfg) -> dict:
    from rib_ext.irn import train_irn_stage

    # Every rank trains its share of each batch (DDP), on labels every rank must see complete.
    ctx.barrier("ir_label's confident labels")
    results = {}
    for name in ctx.require_map_sets("train_irn"):
        results[name] = plain_values(train_irn_stage(ctx.eval_set, ctx.layout.ir_label_dir(name),
                                                     ctx.layout.irn_dir(name), cfg.irn))
        ctx.info(f"[train_irn] {name}: {results[name]}")
    return results

