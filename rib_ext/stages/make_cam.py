"""Stage ``make_cam``: plain multi-scale + flip CAMs in IRN's .npy format, the baseline seeds
(:func:`rib_ext.cam.maps.make_cam`)."""
from __future__ import annotations

from rib_ext.cam.maps import make_cam
from rib_ext.stages.common import result_settings

UPSTREAM = ("train_cam", "data:eval")


def settings(cfg) -> dict:
    return result_settings(cfg.make_cam, drop=("channels_last", "cudnn_benchmark"))


def run(ctx, cfg) -> dict:
    result = make_cam(ctx.load_classifier(), ctx.eval_set, cfg.make_cam, ctx.maps_dir("cam"))
    ctx.info(f"[make_cam] {result}")
    return result
