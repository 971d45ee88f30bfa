"""Plain multi-scale + flip CAMs of a classifier in IRN's ``.npy`` format (the baseline maps)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from rib_ext import ops
from rib_ext.config import MakeCamConfig
from rib_ext.data import InferenceDataset
from rib_ext.io import save_npy
from rib_ext.outputs import MapChecker, map_path, no_class_maps
from rib_ext.precision import autocast, check_precision, cudnn_benchmark, memory_format
from rib_ext.runner import ImageResult, Output, PerImageStage, run_stage
from rib_ext.runtime import resolve_device

CAUSE = ("the classifier activates nowhere for the image's classes, the sign of a diverged "
         "training: train it again with a lower --lr (or check --cam-checkpoint)")


@torch.no_grad()
def image_maps(model, views, image_size, keys, precision: str = "float32",
               channels_last: bool = False) -> dict:
    """IRN's map dict of one image from its multi-scale views (each [2, 3, h, w]: image and flip
    in one call). The scales are separate calls: padding them to one size would change the maps
    near the borders. ``precision='bf16'`` runs the network under autocast; the maps are float32."""
    device = next(model.parameters()).device
    fmt = memory_format(channels_last)
    sums = []
    for v in views:
        with autocast(device, precision):
            cam = model.cam(v.to(device, non_blocking=True).contiguous(memory_format=fmt))
        cam = cam.float()
        sums.append(ops.cam_flip_merge(cam[0], cam[1]))
    return ops.finalize_maps(sums, image_size, keys)


def make_cam(model, dataset, cfg: MakeCamConfig, out_dir: str | Path) -> dict:
    """Write ``out_dir/<id>.npy`` for every image of ``dataset``; images already done are skipped.

    Returns ``{'written', 'skipped', 'seconds', 'images_per_second'}``.
    """
    out_dir = Path(out_dir)
    device = resolve_device(cfg.device)
    check_precision(cfg.precision)
    # A copy: moving it, eval() and channels_last would otherwise change the caller's model (and,
    # in a benchmark, every later setting would run on the earlier one's layout).
    model = copy.deepcopy(model).to(device).eval()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    index = {name: i for i, name in enumerate(dataset.ids)}
    checker = MapChecker("make_cam", CAUSE)

    def drive(_, todo, emit) -> None:
        subset = torch.utils.data.Subset(InferenceDataset(dataset, cfg.scales), [index[n] for n in todo])
        loader = torch.utils.data.DataLoader(subset, batch_size=None, num_workers=cfg.num_workers)
        # Set for this loop only (the process's value comes back after it).
        with cudnn_benchmark(cfg.cudnn_benchmark and device.type == "cuda"):
            for sample in loader:
                keys = np.nonzero(sample["label"].numpy())[0]
                if keys.size == 0:  # an image of no class (COCO): nothing to localise, no network call
                    maps = no_class_maps(sample["size"])
                else:
                    maps = image_maps(model, sample["views"], sample["size"], keys, cfg.precision,
                                      cfg.channels_last)
                checker.check(maps, sample["name"])
                checker.written(maps, sample["name"], map_path(out_dir, sample["name"]))
                emit(sample["name"], ImageResult(files={"maps": maps}))

    # An existing map counts as done only when it is whole (a broken one is made again, named).
    stage = PerImageStage("make_cam", {"maps": Output("{id}.npy", save_npy)}, drive=drive)
    run = run_stage(stage, None, dataset.ids, out_dir)
    checker.already_done = len(run.done)
    checker.finish()
    written, seconds = len(run.todo), run.seconds
    return {"written": written, "skipped": len(run.done), "seconds": seconds,
            "images_per_second": round(written / seconds, 2) if written and seconds > 0 else None}
