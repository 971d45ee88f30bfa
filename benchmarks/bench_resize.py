"""Pillow's bicubic resize against rib_ext's resize_bicubic_u8 (CPU, and CUDA when present), on
the data of one RIB step, side by side in one run.

    python benchmarks/bench_resize.py [--device cpu|cuda|all] [--min-run-time S] [--json PATH]

Workloads (VOC-sized sources, as the step sees them):
    others   the 20 other images of one step: sources of VOC's sizes (500 x 281..500, either
             orientation), each resized to a long side drawn in 320..640 (IRN's recipe)
    views    one target's multi-scale views (a 500 x 375 image at scales 0.5, 1.5, 2.0)
Columns: Pillow on the host (uint8 array in, uint8 array out, as sampling.py did); the operator on
the CPU (uint8 tensor in and out); on CUDA with the uint8 images already on the device
(resize only) and from pinned host memory (the copy in, as the image cache serves it). Images/s
counts resized images; the ratio is Pillow's time over the column's. Outputs are checked equal to
Pillow's before timing. The inputs come from the tests' image factory.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch
import torch.utils.benchmark as tb
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from factories import make_image  # noqa: E402

from rib_ext import ops  # noqa: E402


def other_images_step(seed: int = 0, count: int = 20) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """(source, (h, w)) for one step's other images, sized as OtherImages.recipe sizes them."""
    rng = np.random.default_rng(seed)
    work = []
    for i in range(count):
        short = int(rng.integers(281, 501))
        h, w = (500, short) if rng.random() < 0.3 else (short, 500)
        long_side = int(rng.integers(320, 641))
        scale = long_side / max(h, w)
        work.append((make_image(h, w, seed=seed * 100 + i),
                     (max(1, int(np.round(h * scale))), max(1, int(np.round(w * scale))))))
    return work


def target_views(scales=(0.5, 1.5, 2.0)) -> list[tuple[np.ndarray, tuple[int, int]]]:
    img = make_image(375, 500, seed=7)
    return [(img, (int(np.round(375 * s)), int(np.round(500 * s)))) for s in scales]


def pillow(work):
    return [np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC)) for img, (h, w) in work]


def ours(tensors, sizes):
    return [ops.resize_bicubic_u8(t, s) for t, s in zip(tensors, sizes)]


def ours_from_host(pinned, sizes, device):
    return [ops.resize_bicubic_u8(t.to(device, non_blocking=True), s) for t, s in zip(pinned, sizes)]


def measure(fn, min_run_time: float) -> float:
    fn()  # warm-up
    # torch.utils.benchmark synchronises CUDA around its measurements.
    return tb.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


def bench(name, work, devices, min_run_time) -> dict:
    sizes = [s for _, s in work]
    want = pillow(work)
    cpu_in = [torch.from_numpy(img) for img, _ in work]
    for got, ref in zip(ours(cpu_in, sizes), want):  # the same bytes, or the timing means nothing
        np.testing.assert_array_equal(got.numpy(), ref)
    times = {"pillow": measure(lambda: pillow(work), min_run_time)}
    if "cpu" in devices:
        times["cpu"] = measure(lambda: ours(cpu_in, sizes), min_run_time)
    if "cuda" in devices:
        on_device = [t.cuda() for t in cpu_in]
        pinned = [t.pin_memory() for t in cpu_in]
        for got, ref in zip(ours(on_device, sizes), want):
            np.testing.assert_array_equal(got.cpu().numpy(), ref)
        times["cuda"] = measure(lambda: ours(on_device, sizes), min_run_time)
        times["cuda+copy"] = measure(lambda: ours_from_host(pinned, sizes, "cuda"), min_run_time)
    return {"workload": name, "images": len(work), "seconds": times}


def format_table(rows) -> str:
    columns = ["pillow", "cpu", "cuda", "cuda+copy"]
    lines = ["| workload | images | " + " | ".join(f"{c} ms | {c} img/s" for c in columns)
             + " | cpu vs pillow | cuda vs pillow | cuda+copy vs pillow |",
             "|---|---:|" + "---:|" * (2 * len(columns) + 3)]
    for r in rows:
        t, n = r["seconds"], r["images"]
        cells = [f"{t[c] * 1e3:.2f} | {n / t[c]:.0f}" if c in t else "n/a | n/a" for c in columns]
        ratios = [f"{t['pillow'] / t[c]:.2f}x" if c in t else "n/a" for c in columns[1:]]
        lines.append(f"| {r['workload']} | {n} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    p.add_argument("--min-run-time", type=float, default=2.0, help="seconds per measurement")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        print("no CUDA device: CUDA columns skipped")
        devices = [d for d in devices if d != "cuda"]
    import PIL

    info = {"torch": torch.__version__, "pillow": PIL.__version__, "threads": torch.get_num_threads(),
            "cpu_cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name() if "cuda" in devices else None,
            "backends": {d: ops.backend("resize_bicubic_u8", d) for d in devices}}
    print(", ".join(f"{k} {v}" for k, v in info.items()))
    rows = [bench("others (20 images, long side 320..640)", other_images_step(), devices, args.min_run_time),
            bench("views (500x375 at 0.5, 1.5, 2.0)", target_views(), devices, args.min_run_time)]
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
