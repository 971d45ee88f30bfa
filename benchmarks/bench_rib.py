"""Images/s of the RIB pass: our engine (fused ops, cached stage-2 features, functional weight
copies, grouped) against the slow per-image reference loop, measured side by side in one run.

    python benchmarks/bench_rib.py [--device cpu|cuda] [--images 6] [--groups 1 4] [--size 128]
        [--backbone resnet18] [--steps 10] [--others 8] [--crop 128] [--authors-pooling]

Weights are random (speed does not depend on them); images come from the embedded demo generator
at ``--size`` pixels. ``--authors-pooling`` makes the loop use the authors' per-row, per-class
Python GNDRP (the released code's hot spot) instead of the vectorised reference.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from factories import tiny_cam_net  # noqa: E402

from rib_ext.config import DemoDataConfig, RIBConfig  # noqa: E402
from rib_ext.data import build_dataset  # noqa: E402
from rib_ext.rib import OtherImages, RIBEngine, Target  # noqa: E402
from rib_ext.rib import reference_loop  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--groups", type=int, nargs="+", default=[1, 4])
    p.add_argument("--size", type=int, default=128, help="demo image size (VOC images: ~500x375)")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--others", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--authors-pooling", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)

    root = Path(tempfile.mkdtemp(prefix="rib_bench_"))
    data = build_dataset("demo", root, "train",
                         demo=DemoDataConfig(num_train=max(24, args.images), num_val=2,
                                             image_size=args.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tiny_cam_net(data.num_classes) if args.backbone == "resnet18" else None
    if model is None:
        from rib_ext.models import build_cam_net
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_cam_net(args.backbone, data.num_classes, random_init=True)
    model = model.to(device).eval()
    cfg = RIBConfig(steps=args.steps, num_others=args.others, other_crop=args.crop,
                    other_resize_long=(int(args.crop * 0.75), int(args.crop * 1.25)),
                    stop_on_margin=False, stop_on_explosion=False)  # every image runs K steps
    pool = OtherImages(data, device, cfg.other_resize_long, cfg.other_crop)
    targets = [Target(i, data.name(i), data.image(i), data.labels(i), i) for i in range(args.images)]
    for t in targets:  # decode the pool once for both, so neither pays the JPEG decoding
        pool.image(t.index)
    for j in range(len(pool)):
        pool.image(j)

    rows = []
    t0 = time.perf_counter()
    for t in targets:
        reference_loop.adapt_one(model, t, pool, cfg, per_row_loop=args.authors_pooling)
    sync(device)
    loop_s = time.perf_counter() - t0
    rows.append(("reference loop" + (" (authors' pooling)" if args.authors_pooling else ""),
                 args.images / loop_s))
    for g in args.groups:
        for batching in ("loop", "vmap") if g > 1 else ("loop",):
            engine = RIBEngine(model, pool, RIBConfig(**{**cfg.__dict__, "group_size": g,
                                                         "head_batching": batching}), device)
            engine.run(targets[:1])  # warm-up
            sync(device)
            t0 = time.perf_counter()
            engine.run(targets)
            sync(device)
            rows.append((f"engine G={g}" + (f" ({batching})" if g > 1 else ""),
                         args.images / (time.perf_counter() - t0)))

    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else
             f", {torch.get_num_threads()} threads, {os.cpu_count()} cores")
          + f"; {args.backbone}, K={args.steps}, B={args.others}, crop {args.crop}, "
            f"images {args.size}px, {args.images} images")
    base = rows[0][1]
    print("| method | images/s | vs loop |")
    print("|---|---:|---:|")
    for name, ips in rows:
        print(f"| {name} | {ips:.3f} | {ips / base:.2f}x |")


if __name__ == "__main__":
    main()
