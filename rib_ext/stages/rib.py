"""Stage ``rib``: RIB's localization maps for every image (:func:`rib_ext.rib.run.adapt_dataset`)."""
from __future__ import annotations

import dataclasses

from rib_ext.config import RIBSpeedConfig
from rib_ext.rib.run import adapt_dataset
from rib_ext.stages.common import result_settings

UPSTREAM = ("train_cam", "data:eval", "data:train")


# Speed settings that leave the maps as they are (benchmarks/RESULTS.md): the rib_speed section's
# but precision, which changes their rounding and stays in what provenance compares.
SPEED_ONLY = tuple(f.name for f in dataclasses.fields(RIBSpeedConfig) if f.name != "precision")


def settings(cfg) -> dict:
    return result_settings(cfg.rib, drop=SPEED_ONLY)


def run(ctx, cfg) -> dict:
    result = adapt_dataset(ctx.load_classifier(), ctx.eval_set, ctx.pool_set, cfg.rib, ctx.layout.rib_dir)
    ctx.info(f"[rib] {result}")
    return result
