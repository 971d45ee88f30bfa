"""Images/s of the RIB pass: the engine under each speed setting against the reference loop and the
authors'-style loop, measured side by side in one run, one table per size.

    python benchmarks/bench_rib.py [--sizes small voc] [--device cpu|cuda] [--images N]
        [--variants NAME ...] [--json PATH] [--peak-tflops 798]

Sizes: ``small`` = ResNet-18, 128-px images, B 8, crop 128; ``voc`` = ResNet-50 output stride 16,
448-px targets, B 20, crop 512 (the paper's setting); both K 10, stops off (every image runs K steps).
Weights are random (speed does not depend on them); images come from the embedded demo generator.
``tiny`` (the tests' size: a narrow ResNet-10, 48-px images, B 2) checks the script, not speed.
``--list`` prints the variants. MFU = achieved TFLOP/s (FLOPs of one image counted with
torch.utils.flop_counter, forward and backward) over ``--peak-tflops`` (by default the dense bf16
peak of the GPU named in :data:`PEAK_TFLOPS`, e.g. 989 on an H100 or H200 SXM; none elsewhere).

Each variant is warmed up on a whole group (its G images: the grouped shapes, cuDNN's plans, the
group's graph captured) and timed on a multiple of G images (``--images`` rounded down, at least
G), so no timed run ends on an eager tail or pays a capture for the group; with
``cuda_graph_targets`` every new image still captures its own graph, inside the timing (that is
what the setting costs). Each row is printed (``row ...``) as soon as it is measured and names the
device, the operators' backend, torch and CUDA. With ``--json`` the file is rewritten (atomically)
after every variant, so a variant that fails or a run that is cut short keeps every figure measured
before it; a failing variant is logged with its error, recorded as such, and the others still
run. The FLOPs for MFU are counted after the variants (they fill in the rows' TFLOP/s and MFU).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rib_ext.config import DemoDataConfig, RIBConfig  # noqa: E402
from rib_ext.data import build_dataset  # noqa: E402
from rib_ext.rib import OtherImages, RIBEngine, Target  # noqa: E402
from rib_ext.rib import oracle_loop  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_facts, when loaded by path
from bench_facts import scratch_dir, device_name, print_row, run_facts, write_json  # noqa: E402

SIZES = {
    "tiny": dict(backbone="resnet_tiny", image_size=48, others=2, crop=48),  # the tests' size
    "small": dict(backbone="resnet18", image_size=128, others=8, crop=128),
    "voc": dict(backbone="resnet50", image_size=448, others=20, crop=512),
}
_FAST = dict(precision="bf16", channels_last=True, cudnn_benchmark=True, fold_stem=True)
# name -> RIBConfig overrides; "loop" / "authors" are the per-image reference loops.
VARIANTS = {
    "authors": None,
    "loop": None,
    "engine-before": dict(fold_stem=False, foreach_update=False, prefetch="off"),  # without the engine's speed settings
    "engine": {},
    "engine+fold": dict(fold_stem=True),
    "engine+tf32": dict(precision="tf32"),
    "engine+bf16": dict(precision="bf16"),
    "engine+cl": dict(channels_last=True, cudnn_benchmark=True),
    "engine+bf16+cl": _FAST,
    "engine+bf16+cl+prefetch": dict(_FAST, prefetch="on"),
    "G4 loop+bf16+cl": dict(_FAST, group_size=4),
    "G4 vmap+bf16+cl": dict(_FAST, group_size=4, head_batching="vmap"),
    "G8 vmap+bf16+cl": dict(_FAST, group_size=8, head_batching="vmap"),
    "Gauto+bf16+cl": dict(_FAST, group_size=0),
    # CUDA graphs: the other images' pass per G, the weights in slots stepped by one
    # kernel; "+targets": each target's passes captured too
    "engine+bf16+cl+graphs": dict(_FAST, cuda_graphs=True),
    "G4 vmap+bf16+cl+graphs": dict(_FAST, group_size=4, head_batching="vmap", cuda_graphs=True),
    "G4 vmap+bf16+cl+graphs+targets": dict(_FAST, group_size=4, head_batching="vmap",
                                           cuda_graphs=True, cuda_graph_targets=True),
    "G8 vmap+bf16+cl+graphs": dict(_FAST, group_size=8, head_batching="vmap", cuda_graphs=True),
}
CPU_DEFAULT = ["loop", "engine-before", "engine", "engine+bf16", "engine+cl", "G4 vmap+bf16+cl"]
# Dense bf16 peak TFLOP/s by device name, most specific first (vendor figures, no sparsity). The
# H200 SXM has the H100 SXM's compute; the PCIe and NVL boards run lower clocks.
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0),
               ("H100", 989.0), ("H200", 989.0)]


def peak_tflops(device_name: str):
    """The dense bf16 peak of ``device_name`` (None when the device is not in the table)."""
    return next((tf for key, tf in PEAK_TFLOPS if key in device_name), None)


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


def group_of(v, cfg) -> int:
    """The variant's group size as configured (0: automatic; 1 for the reference loops)."""
    settings = VARIANTS[v]
    return 1 if settings is None else int(settings.get("group_size", cfg.group_size))


AUTO_MAX_GROUP = 16  # choose_group_size's cap: the most images an automatic G may warm up on


def run_size(name, args, device, variants, on_row=lambda res: None):
    """Measure ``variants`` at size ``name``; ``on_row(result so far)`` after each variant."""
    size = SIZES[name]
    n = args.images or (4 if device.type == "cpu" else 16)
    groups = [group_of(v, RIBConfig()) for v in variants]
    # enough targets for the largest group's warm-up and timed run
    n_targets = max([n] + [AUTO_MAX_GROUP if g == 0 and device.type == "cuda" else g for g in groups])
    root = scratch_dir("rib_bench_")
    data = build_dataset("demo", root, "train",
                         demo=DemoDataConfig(num_train=max(24, n_targets + 8), num_val=2,
                                             image_size=size["image_size"]))
    model = build_model(size["backbone"], data.num_classes, device)
    crop = size["crop"]
    cfg = RIBConfig(steps=args.steps, num_others=size["others"], other_crop=crop,
                    other_resize_long=(int(crop * 0.625), int(crop * 1.25)),
                    stop_on_margin=False, stop_on_explosion=False)
    pool = OtherImages(data, device, cfg.other_resize_long, cfg.other_crop)
    targets = [Target(i, data.name(i), data.image(i), data.labels(i), i) for i in range(n_targets)]
    for j in range(len(pool)):  # decode the pool once, so no variant pays the decoding
        pool.image(j)

    facts = run_facts(device)
    res = {"size": name, **size, "steps": args.steps, "images": n, "flops_per_image": None,
           "rows": []}
    for v in variants:
        try:
            row = measure(v, model, pool, targets, n, cfg, device)
            row.update(facts)
            print_row(f"{name} {v}", f"{row['images_per_s']:.3f} images/s over "
                      f"{row['timed_images']} images, G={row['group_size']}, peak "
                      f"{row['peak_memory_gb'] if row['peak_memory_gb'] is not None else '-'} GB; "
                      f"{facts['device_name']}, backend {facts['backend']}, torch {facts['torch']}, "
                      f"CUDA {facts['cuda']}")
        except Exception as e:  # one variant's failure must not cost the others' figures
            traceback.print_exc()
            row = {"variant": v, "settings": VARIANTS[v], "error": f"{type(e).__name__}: {e}",
                   **facts}
            print_row(f"{name} {v}", f"FAILED ({row['error']})")
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        res["rows"].append(row)
        on_row(res)
    if args.flops:  # last: the rows come first, MFU fills them in
        flops = res["flops_per_image"] = count_flops(model, pool, targets[0], cfg, device)
        for row in res["rows"]:
            if "images_per_s" in row:
                row["tflops"] = round(flops * row["images_per_s"] / 1e12, 3)
                if args.peak_tflops:
                    row["mfu"] = round(row["tflops"] / args.peak_tflops, 4)
        print_row(f"{name} flops", f"{flops:.4g} per image (K steps, forward and backward)")
        on_row(res)
    return res


def measure(v, model, pool, targets, images, cfg, device) -> dict:
    """One variant's row: images/s over a multiple of its G images (``images`` rounded down, at
    least G) after a warm-up on a whole group (for an automatic G: one image to choose it, then
    the group)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    extra, engine = {}, None
    if v in ("loop", "authors"):
        def run(ts):
            return [oracle_loop.adapt_one(model, t, pool, cfg, per_row_loop=v == "authors")
                    for t in ts]
        settings = {"per_row_loop": v == "authors"}
        g = 1
    else:
        settings = VARIANTS[v]
        engine = RIBEngine(model, pool, dataclasses.replace(cfg, **settings), device)
        run = engine.run
        g = engine.group_size
        if g == 0:
            run(targets[:1])  # the automatic G's measurement
            g = engine.group_size
    warm = targets[:g]
    run(warm)  # warm-up on a whole group: its shapes, cuDNN's plans, the group's graph
    if engine is not None and engine.group_choice:
        extra["group_choice"] = engine.group_choice
    if engine is not None and engine.graph_error:
        extra["graph_error"] = engine.graph_error  # captured nothing: the row ran eagerly
    timed = targets[:min(len(targets), max(g, images // g * g))]
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run(timed)
    sync(device)
    ips = len(timed) / (time.perf_counter() - t0)
    return {"variant": v, "settings": settings, "images_per_s": round(ips, 4), "group_size": g,
            "warmup_images": len(warm), "timed_images": len(timed),
            "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if device.type == "cuda" else None, **extra}


def print_table(res, device_desc):
    print(f"\n### {res['size']}: {res['backbone']}, {res['image_size']}-px targets, "
          f"B {res['others']}, crop {res['crop']}, K {res['steps']}, {res['images']} images; "
          f"{device_desc}")
    base = {r["variant"]: r["images_per_s"] for r in res["rows"] if "error" not in r}
    ref = base.get("loop")
    authors = base.get("authors")
    print("| variant | images/s | vs loop | vs authors' | TFLOP/s | MFU | peak GB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in res["rows"]:
        if "error" in r:
            print(f"| {r['variant']} | failed: {r['error'][:80]} | | | | | |")
            continue
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
                   help="the device's dense bf16 peak for MFU (default: by device name, "
                        "989 on an H100 or H200 SXM; none on other devices)")
    p.add_argument("--json", default=None, help="write every figure and setting here (after "
                                                "each variant)")
    p.add_argument("--list", action="store_true")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(f"{k}: {v}" for k, v in VARIANTS.items()))
        return 0
    device = torch.device(args.device)
    variants = args.variants or (list(VARIANTS) if device.type == "cuda" else CPU_DEFAULT)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; see --list")
    name = device_name(device)
    if args.peak_tflops is None:
        args.peak_tflops = peak_tflops(name) if device.type == "cuda" else None
    desc = (f"torch {torch.__version__}, {device.type} ({name})"
            + (f", {torch.get_num_threads()} threads, {os.cpu_count()} cores" if device.type == "cpu" else ""))
    doc = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           **run_facts(device), "threads": torch.get_num_threads(),
           "peak_tflops": args.peak_tflops, "command": " ".join(sys.argv), "sizes": []}

    print(f"### bench_rib: {desc}", flush=True)

    def write(res):
        write_json(args.json, {**doc, "sizes": doc["sizes"] + [res]})

    for s in args.sizes:
        doc["sizes"].append(run_size(s, args, device, variants, write))
    for res in doc["sizes"]:
        print_table(res, desc)
    failed = [r["variant"] for res in doc["sizes"] for r in res["rows"] if "error" in r]
    if failed:
        print(f"\nfailed variants: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
