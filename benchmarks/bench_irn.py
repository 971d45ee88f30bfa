"""IRN random walk: sparse propagation (ours) vs the authors' dense matrix power, time and memory.

    PYTHONPATH=. python benchmarks/bench_irn.py                      # CPU, 500x375 image + smaller
    PYTHONPATH=. python benchmarks/bench_irn.py --device cuda
    PYTHONPATH=. python benchmarks/bench_irn.py --sizes 94x125 --classes 1 3 --full-dense

Each (size, classes, method) runs in its own process so that its peak memory can be read
(``ru_maxrss`` growth on CPU, ``max_memory_allocated`` on CUDA). A 500x375 image is a 94x125
stride-4 grid: the dense transition matrix is 11,750^2 floats (0.55 GB) and squaring it 8 times
takes minutes on a laptop CPU, so by default the dense time on grids above ``--extrapolate-above``
pixels is measured with one squaring and extrapolated (build + 8 x squaring; memory is measured, as
one squaring already reaches the peak). ``--full-dense`` measures it in full.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from rib_ext.irn.random_walk import random_walk, random_walk_dense

METHODS = ("dense", "csr", "shift")
OPTS = argparse.Namespace(repeat=3, threads=None)  # passed on to the measuring processes


def make_inputs(h: int, w: int, k: int, seed: int = 0, device: str = "cpu"):
    """Maps [k, h, w] in [0, 1] and a boundary [h, w] mostly near 0 with a few strong edges (the
    tests' factory, float32)."""
    g = torch.Generator().manual_seed(seed)
    boundary = torch.rand(h, w, generator=g) ** 4
    maps = torch.rand(k, h, w, generator=g)
    return maps.to(device), boundary.to(device)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_child(args) -> None:
    """One measurement; prints a JSON line and saves the walked maps to ``args.out``."""
    h, w = args.size
    maps, boundary = make_inputs(h, w, args.k, device=args.device)
    walk = random_walk_dense if args.method == "dense" else random_walk
    kw = {} if args.method == "dense" else {"method": args.method}
    if args.device.startswith("cuda"):  # warm up kernels and the allocator, then measure the peak
        walk(maps, boundary, 5, 10.0, 0, **kw)
        torch.cuda.reset_peak_memory_stats()
    base = _rss_mb()
    times = []
    for _ in range(args.repeat if args.method != "dense" else 1):
        _sync(args.device)
        t0 = time.perf_counter()
        out = walk(maps, boundary, 5, 10.0, args.exp_times, **kw)
        _sync(args.device)
        times.append(time.perf_counter() - t0)
    seconds = min(times)  # the least disturbed run: the machine may be shared
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    np.save(args.out, out.float().cpu().numpy())
    print(json.dumps({"seconds": seconds, "peak_mb": max(peak, 0.0)}))


def measure(method, size, k, exp_times, device, out) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--sizes", f"{size[0]}x{size[1]}",
           "--classes", str(k), "--exp-times", str(exp_times), "--device", device, "--out", out,
           "--repeat", str(OPTS.repeat)] + (["--threads", str(OPTS.threads)] if OPTS.threads else [])
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if res.returncode != 0:
        raise RuntimeError(f"{method} {size} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def dense_row(size, k, exp_times, device, tmp, full: bool) -> dict:
    if full:
        r = measure("dense", size, k, exp_times, device, f"{tmp}/dense.npy")
        return {**r, "note": "measured"}
    # Build + one squaring, and build alone: squaring time = difference; total = build + 8 x that.
    one = measure("dense", size, k, 1, device, f"{tmp}/dense1.npy")
    zero = measure("dense", size, k, 0, device, f"{tmp}/dense0.npy")
    square = max(one["seconds"] - zero["seconds"], 0.0)
    return {"seconds": zero["seconds"] + exp_times * square, "peak_mb": one["peak_mb"],
            "note": f"extrapolated (1 squaring: {square:.1f} s)"}


def parse_size(text: str):
    h, w = text.lower().split("x")
    return int(h), int(w)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(24, 32), (47, 63), (94, 125)],
                   help="stride-4 grids HxW (94x125 = a 375x500 image)")
    p.add_argument("--classes", nargs="+", type=int, default=[2])
    p.add_argument("--exp-times", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--full-dense", action="store_true", help="never extrapolate the dense time")
    p.add_argument("--extrapolate-above", type=int, default=4000, help="grid pixels")
    p.add_argument("--repeat", type=int, default=3, help="sparse runs per measurement (min kept)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    OPTS.repeat, OPTS.threads = args.repeat, args.threads
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        args.method, args.size, args.k = args.child, args.sizes[0], args.classes[0]
        run_child(args)
        return

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} CPU threads "
          f"({os.cpu_count()} cores, load {load:.1f}), {2 ** args.exp_times} walk steps, radius 5, "
          f"beta 10, best of {args.repeat} sparse runs")
    header = (f"{'grid':>8} {'pixels':>7} {'K':>3} {'method':>6} {'seconds':>9} {'peak MB':>9} "
              f"{'time x':>8} {'mem x':>8} {'max|diff|':>10}  note")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for k in args.classes:
                full = args.full_dense or size[0] * size[1] <= args.extrapolate_above
                dense = dense_row(size, k, args.exp_times, args.device, tmp, full)
                ref = np.load(f"{tmp}/dense.npy") if full else None
                _row(size, k, "dense", dense, dense, None, dense["note"])
                for method in ("csr", "shift"):
                    r = measure(method, size, k, args.exp_times, args.device, f"{tmp}/{method}.npy")
                    diff = (np.abs(np.load(f"{tmp}/{method}.npy") - ref).max()
                            if ref is not None else None)
                    _row(size, k, method, r, dense, diff, "")
    print("time x / mem x: the dense reference's seconds / peak memory divided by the method's. "
          "max|diff|: largest difference from the dense result (maps in [0, 1]).")


def _row(size, k, method, r, dense, diff, note) -> None:
    tx = dense["seconds"] / r["seconds"] if r["seconds"] > 0 else float("inf")
    mx = dense["peak_mb"] / r["peak_mb"] if r["peak_mb"] > 0 else float("inf")
    diff_s = "-" if diff is None else f"{diff:.2e}"
    print(f"{size[0]:>3}x{size[1]:<4} {size[0] * size[1]:>7} {k:>3} {method:>6} "
          f"{r['seconds']:>9.3f} {r['peak_mb']:>9.1f} {tx:>8.1f} {mx:>8.1f} {diff_s:>10}  {note}")


if __name__ == "__main__":
    main()
