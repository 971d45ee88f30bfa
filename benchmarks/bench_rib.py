"""Images/s of the RIB pass: the engine under each speed setting against the reference loop and the
authors'-style loop, measured side by side in one run, one table per size.

    python benchmarks/bench_rib.py [--sizes small voc] [--device cpu|cuda] [--images N]
        [--variants NAME ...] [--json PATH] [--peak-tflops 798]

Sizes: ``small`` = ResNet-18, 128-px images, B 8, crop 128; ``voc`` = ResNet-50 output stride 16,
448-px targets, B 20, crop 512 (the paper's setting); both K 10, stops off (every image runs K steps).
Weights are random (speed does not depend on them); images come from the embedded demo generator.
``--list`` prints the variants. MFU = achieved TFLOP/s (FLOPs of one image counted with
torch.utils.flop_counter, forward and backward) over ``--peak-tflops`` (798: the bf16 dense rate
measured on an H100; give your GPU's, or leave it out for no MFU column).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rib_ext.config import DemoDataConfig, RIBConfig  # noqa: E402
from rib_ext.data import build_dataset  # noqa: E402
from rib_ext.io import save_text  # noqa: E402
from rib_ext.rib import OtherImages, RIBEngine, Target  # noqa: E402
from rib_ext.rib import oracle_loop  # noqa: E402

SIZES = {
    "small": dict(backbone="resnet18", image_size=128, others=8, crop=128),
    "voc": dict(backbone="resnet50", image_size=448, others=20, crop=512),
}
_FAST = dict(precision="bf16", channels_last=True, cudnn_benchmark=True, fold_stem=True)
# name -> RIBConfig overrides; "loop" / "authors" are the per-image reference loops.
VARIANTS = {
    "authors": None,
    "loop": None,
    "engine-before": dict(fold_stem=False, foreach_update=False, prefetch="off"),  # as before issue 13
    "engine": {},
    "engine+fold": dict(fold_stem=True),
    "engine+bf16": dict(precision="bf16"),
    "engine+cl": dict(channels_last=True, cudnn_benchmark=True),
    "engine+bf16+cl": _FAST,
    "engine+bf16+cl+prefetch": dict(_FAST, prefetch="on"),
    "G4 loop+bf16+cl": dict(_FAST, group_size=4),
    "G4 vmap+bf16+cl": dict(_FAST, group_size=4, head_batching="vmap"),
    "G8 vmap+bf16+cl": dict(_FAST, group_size=8, head_batching="vmap"),
    "Gauto+bf16+cl": dict(_FAST, group_size=0),
}
CPU_DEFAULT = ["loop", "engine-before", "engine", "engine+bf16", "engine+cl", "G4 vmap+bf16+cl"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_model(backbone, num_classes, device):
    from rib_ext.models import build_cam_net
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_cam_net(backbone, num_classes, random_init=True).to(device).eval()


def count_flops(model, pool, target, cfg, device) -> float:
    """FLOPs of one image's K steps (engine, G=1, float32), forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        RIBEngine(model, pool, dataclasses.replace(cfg, group_size=1), device).run([target])
    return float(counter.get_total_flops())


def run_size(name, args, device, variants):
    size = SIZES[name]
    n = args.images or (4 if device.type == "cpu" else 16)
    root = Path(tempfile.mkdtemp(prefix="rib_bench_"))
    data = build_dataset("demo", root, "train",
                         demo=DemoDataConfig(num_train=max(24, n + 8), num_val=2,
                                             image_size=size["image_size"]))
    model = build_model(size["backbone"], data.num_classes, device)
    crop = size["crop"]
    cfg = RIBConfig(steps=args.steps, num_others=size["others"], other_crop=crop,
                    other_resize_long=(int(crop * 0.625), int(crop * 1.25)),
                    stop_on_margin=False, stop_on_explosion=False)
    pool = OtherImages(data, device, cfg.other_resize_long, cfg.other_crop)
    targets = [Target(i, data.name(i), data.image(i), data.labels(i), i) for i in range(n)]
    for j in range(len(pool)):  # decode the pool once, so no variant pays the decoding
        pool.image(j)

    flops = count_flops(model, pool, targets[0], cfg, device) if args.flops else None
    rows = []
    for v in variants:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        extra = {}
        if v in ("loop", "authors"):
            run = lambda ts: [oracle_loop.adapt_one(model, t, pool, cfg, per_row_loop=v == "authors")
                              for t in ts]
            settings = {"per_row_loop": v == "authors"}
        else:
            vcfg = dataclasses.replace(cfg, **VARIANTS[v])
            settings = VARIANTS[v]
            engine = RIBEngine(model, pool, vcfg, device)

            def run(ts, engine=engine):
                return engine.run(ts)
        run(targets[:1])  # warm-up (cuDNN plans, the automatic G's measurement)
        if v not in ("loop", "authors") and engine.group_choice:
            extra["group_choice"] = engine.group_choice
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        run(targets)
        sync(device)
        ips = n / (time.perf_counter() - t0)
        row = {"variant": v, "settings": settings, "images_per_s": round(ips, 4),
               "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
               if device.type == "cuda" else None, **extra}
        if flops:
            row["tflops"] = round(flops * ips / 1e12, 3)
            if args.peak_tflops:
                row["mfu"] = round(row["tflops"] / args.peak_tflops, 4)
        rows.append(row)
        print(f"  {name} {v}: {ips:.3f} images/s", file=sys.stderr, flush=True)
    return {"size": name, **size, "steps": args.steps, "images": n,
            "flops_per_image": flops, "rows": rows}


def print_table(res, device_desc):
    print(f"\n### {res['size']}: {res['backbone']}, {res['image_size']}-px targets, "
          f"B {res['others']}, crop {res['crop']}, K {res['steps']}, {res['images']} images; "
          f"{device_desc}")
    base = {r["variant"]: r["images_per_s"] for r in res["rows"]}
    ref = base.get("loop")
    authors = base.get("authors")
    print("| variant | images/s | vs loop | vs authors' | TFLOP/s | MFU | peak GB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in res["rows"]:
        ips = r["images_per_s"]
        g = f" (G={r['group_choice']['group_size']})" if "group_choice" in r else ""
        print(f"| {r['variant']}{g} | {ips:.3f} | "
              f"{f'{ips / ref:.2f}x' if ref else '-'} | {f'{ips / authors:.2f}x' if authors else '-'} | "
              f"{r.get('tflops', '-')} | {r.get('mfu', '-')} | {r['peak_memory_gb'] or '-'} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", nargs="+", default=["small"], choices=sorted(SIZES))
    p.add_argument("--images", type=int, default=0, help="timed images per variant (0: 4 CPU, 16 GPU)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--variants", nargs="+", default=None,
                   help="names from --list (default: all on CUDA, a short list on the CPU)")
    p.add_argument("--no-flops", dest="flops", action="store_false")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak for MFU (default 798 on an H100, else none)")
    p.add_argument("--json", default=None, help="write every figure and setting here")
    p.add_argument("--list", action="store_true")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(f"{k}: {v}" for k, v in VARIANTS.items()))
        return
    device = torch.device(args.device)
    variants = args.variants or (list(VARIANTS) if device.type == "cuda" else CPU_DEFAULT)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; see --list")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    if args.peak_tflops is None and "H100" in name:
        args.peak_tflops = 798.0
    desc = (f"torch {torch.__version__}, {device.type} ({name})"
            + (f", {torch.get_num_threads()} threads, {os.cpu_count()} cores" if device.type == "cpu" else ""))
    results = [run_size(s, args, device, variants) for s in args.sizes]
    for res in results:
        print_table(res, desc)
    if args.json:
        save_text(args.json, json.dumps({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": device.type, "device_name": name, "torch": torch.__version__,
            "cuda": torch.version.cuda, "threads": torch.get_num_threads(),
            "peak_tflops": args.peak_tflops, "command": " ".join(sys.argv), "sizes": results}, indent=1))


if __name__ == "__main__":
    main()
