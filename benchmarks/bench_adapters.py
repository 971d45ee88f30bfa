"""Images/s of RIB on other classifiers: the engine (G=1 and G=4) against the plain per-image loop
(one model copy, one optimizer), for a torchvision CNN, a timm CNN and a vision transformer,
measured side by side in one run.

    python benchmarks/bench_adapters.py [--device cpu|cuda] [--images 4] [--size 112]
        [--steps 3] [--others 4] [--families NAME ...] [--json PATH]

Weights are random (speed does not depend on them); every image runs ``--steps`` steps (stops off).
Each row is printed, and the JSON rewritten, as soon as it is measured.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_facts import print_row, run_facts, write_json  # noqa: E402
from rib_ext.config import RIBConfig  # noqa: E402
from rib_ext.models.adapters import adapt  # noqa: E402
from rib_ext.rib import OtherImages, RIBEngine, Target, oracle_loop  # noqa: E402

K = 5


def _families():
    import torchvision.models as tvm

    def timm_model(name, **kw):
        import timm

        return timm.create_model(name, num_classes=K, **kw)

    return {
        "torchvision:resnet50": lambda: tvm.resnet50(num_classes=K),
        "timm:convnext_tiny": lambda: timm_model("convnext_tiny"),
        "timm:deit_small_patch16_224": lambda: timm_model("deit_small_patch16_224", global_pool="avg"),
    }


class _Pool:
    def __init__(self, n: int, size: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.images = [rng.integers(0, 256, (size, size + 16 * (i % 2), 3), dtype=np.uint8)
                       for i in range(n)]
        self.labels = np.zeros((n, K), np.float32)
        self.labels[np.arange(n), np.arange(n) % K] = 1

    def image(self, i):
        return self.images[i]

    def label_matrix(self):
        return self.labels


def _time(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=4, help="target images per measurement (a multiple of 4)")
    ap.add_argument("--size", type=int, default=112, help="target image side (pixels)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--others", type=int, default=4, help="other images per step (B)")
    ap.add_argument("--families", nargs="+", default=None, help="default: all three")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    families = _families()
    names = args.families or list(families)
    pool_data = _Pool(4 * args.images, args.size)
    pool = OtherImages(pool_data, device, resize_long=(args.size, args.size + 32), crop=args.size)
    targets = [Target(i, f"t{i}", pool_data.image(i), pool_data.labels[i], pool_index=i)
               for i in range(args.images)]
    facts = run_facts(device.type)
    env = {**facts, "threads": torch.get_num_threads(), "images": args.images, "size": args.size,
           "steps": args.steps, "others": args.others}
    print(" ".join(f"{k} {v}" for k, v in env.items()))
    print("| model | loop img/s | engine G=1 img/s | engine G=4 img/s | G=1 / loop | G=4 / loop |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = adapt(families[name]()).to(device).eval()
        cfg = {g: RIBConfig.preset(steps=args.steps, num_others=args.others, margin=1e9,
                                   stop_on_explosion=False, group_size=g,
                                   other_resize_long=(args.size, args.size + 32), other_crop=args.size)
               for g in (1, 4)}
        # Warm-up: one group of each kind (lazy initialisations, allocator, cuDNN's choices).
        RIBEngine(model, pool, cfg[4], device).run(targets[:4])
        oracle_loop.adapt_one(model, targets[0], pool, cfg[1])
        n = len(targets)
        t_loop = _time(lambda: [oracle_loop.adapt_one(model, t, pool, cfg[1]) for t in targets], device)
        t_g1 = _time(lambda: RIBEngine(model, pool, cfg[1], device).run(targets), device)
        t_g4 = _time(lambda: RIBEngine(model, pool, cfg[4], device).run(targets), device)
        row = {"model": name, "loop": n / t_loop, "engine_g1": n / t_g1, "engine_g4": n / t_g4, **facts}
        rows.append(row)
        print(f"| {name} | {row['loop']:.2f} | {row['engine_g1']:.2f} | {row['engine_g4']:.2f} | "
              f"{t_loop / t_g1:.2f}x | {t_loop / t_g4:.2f}x |", flush=True)
        print_row(f"adapters {name}", f"loop {row['loop']:.3f}, G1 {row['engine_g1']:.3f}, "
                                      f"G4 {row['engine_g4']:.3f} images/s")
        if args.json:
            write_json(args.json, {"env": env, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
