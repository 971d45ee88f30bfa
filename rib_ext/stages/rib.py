"""Stage ``rib``: RIB's localization maps for every image (:func:`rib_ext.rib.run.adapt_dataset`)."""
from __future__ import annotations

from rib_ext.rib.run import adapt_dataset
from rib_ext.stages.common import result_settings

UPSTREAM = ("train_cam", "data:eval", "data:train")


# Speed settings that leave the maps as they are (benchmarks/RESULTS.md); precision does not.
SPEED_ONLY = ("group_size", "head_batching", "channels_last", "cudnn_benchmark", "fold_stem",
              "foreach_update", "group_memory_gb", "image_cache_mb", "prefetch", "cuda_graphs",
              "cuda_graph_targets")


def settings(cfg) -> dict:
    return result_settings(cfg.rib, drop=SPEED_ONLY)


def run(ctx, cfg) -> dict:
    result = adapt_dataset(ctx.load_classifier(), ctx.eval_set, ctx.pool_set, cfg.rib, ctx.layout.rib_dir)
    ctx.info(f"[rib] {result}")
    return result
