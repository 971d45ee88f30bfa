"""Images/s of make_cam (4 scales x flip, IRN's .npy maps) in float32 and under the speed settings,
with the bf16 maps' per-image Pearson correlation against float32 on the same images.

    python benchmarks/bench_make_cam.py [--device cuda] [--images 32] [--size 448]
        [--backbone resnet50] [--json PATH]

Random weights (speed does not depend on them), demo images at ``--size`` pixels (VOC: ~500x375).
Each variant is warmed up on ``--warmup`` images, then timed on all of them; each row is printed
(``row ...``) as soon as it is measured, with the device, the operators' backend, torch and CUDA,
and ``--json`` is rewritten after each row.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rib_ext.config import DemoDataConfig, MakeCamConfig  # noqa: E402
from rib_ext.data import build_dataset  # noqa: E402
from rib_ext.io import load_npy_dict  # noqa: E402
from rib_ext.cam.maps import make_cam  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_facts, when loaded by path
from bench_facts import scratch_dir, print_row, run_facts, write_json  # noqa: E402

VARIANTS = {"float32": {}, "float32+cl": dict(channels_last=True, cudnn_benchmark=True),
            "tf32": dict(precision="tf32"),
            "bf16": dict(precision="bf16"),
            "bf16+cl": dict(precision="bf16", channels_last=True, cudnn_benchmark=True)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--warmup", type=int, default=2, help="warm-up images per variant")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from rib_ext.models import build_cam_net

    root = scratch_dir("make_cam_bench_")
    data = build_dataset("demo", root, "train", demo=DemoDataConfig(num_train=args.images, num_val=2,
                                                                    image_size=args.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_cam_net(args.backbone, data.num_classes, random_init=True)
    facts = run_facts(args.device)
    print(f"### make_cam: {args.backbone}, {args.size}-px images, {args.images} images, "
          f"scales {MakeCamConfig().scales} x flip; torch {facts['torch']}, CUDA {facts['cuda']}, "
          f"{facts['device_name']}, backend {facts['backend']}", flush=True)
    doc = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           **facts, "backbone": args.backbone, "size": args.size, "images": args.images, "rows": []}
    rows, maps = doc["rows"], {}
    for v in ["float32"] + [v for v in args.variants if v != "float32"]:
        cfg = dataclasses.replace(MakeCamConfig(device=args.device), **VARIANTS[v])
        # warm-up: cuDNN plans, the allocator (make_cam works on a copy: the model is unchanged)
        make_cam(model, _First(data, args.warmup), cfg, root / f"warm_{v}")
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        make_cam(model, data, cfg, root / v)
        if args.device == "cuda":
            torch.cuda.synchronize()
        ips = args.images / (time.perf_counter() - t0)
        maps[v] = {f.stem: load_npy_dict(f)["high_res"] for f in sorted((root / v).glob("*.npy"))}
        r = [np.corrcoef(maps["float32"][k].ravel(), maps[v][k].ravel())[0, 1]
             for k in maps["float32"] if maps["float32"][k].size > 1 and maps[v][k].std() > 0]
        rows.append({"variant": v, "settings": VARIANTS[v], "images_per_s": round(ips, 3),
                     "pearson_min": round(float(min(r)), 5) if r else None,
                     "pearson_mean": round(float(np.mean(r)), 5) if r else None, **facts})
        print_row(f"make_cam {v}", f"{ips:.2f} images/s, Pearson vs float32 min "
                  f"{rows[-1]['pearson_min']}")
        write_json(args.json, doc)
    print("| variant | images/s | Pearson vs float32 (min / mean) |")
    print("|---|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['images_per_s']:.2f} | {r['pearson_min']} / {r['pearson_mean']} |")


class _First:
    """The first ``n`` images of a dataset (the warm-up's)."""

    def __init__(self, data, n):
        self.data, self.n = data, max(1, min(n, len(data)))

    def __len__(self):
        return self.n

    def __getattr__(self, name):
        return getattr(self.data, name)


if __name__ == "__main__":
    main()
