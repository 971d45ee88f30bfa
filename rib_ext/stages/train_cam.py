"""Stage ``train_cam``: the multi-label classifier (:func:`rib_ext.cam.train.train_cam`)."""
from __future__ import annotations

from rib_ext.cam.train import train_cam
from rib_ext.stages.common import result_settings

UPSTREAM = ("data:train",)


def settings(cfg) -> dict:
    return result_settings(cfg.train_cam)


def run(ctx, cfg) -> dict:
    # Every rank trains its share of each batch (DDP); rank 0 writes the model, the others wait.
    path = train_cam(ctx.train_set, cfg.train_cam, ctx.layout.classifier_dir)
    ctx.info(f"[train_cam] {path}")
    return {"model": str(path)}
