"""Stage ``train_cam``: the multi-label classifier (:func:`rib_ext.cam.train.train_cam`)."""
from __future__ import annotations

from rib_ext.cam.train import train_cam
from rib_ext.stages.common import result_settings

UPSTREAM = ("data:train",)


def settings(cfg) -> dict:
    return result_settings(cfg.train_cam)


def run(ctx, cfg) -> dict:
    path = ctx.classifier_path()
    if ctx.is_main:  # one classifier; the other ranks wait for it
        path = train_cam(ctx.train_set, cfg.train_cam, ctx.stage_dir("train_cam"))
        ctx.info(f"[train_cam] {path}")
    ctx.barrier()
    return {"model": str(path)}
