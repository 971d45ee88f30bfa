"""Forward + backward time of the RIB training step's pooling + loss, four ways, side by side.

    python benchmarks/bench_ops.py [--device cpu|cuda|all] [--behaviour authors|paper] [--no-compile]

For each realistic shape (26 rows = 6 target views + 20 other images; K = 20 and 80 classes; CAMs
of 32x32, 48x64 and 128x128) it times:
    loop      a transcription of the authors' per-row, per-class Python loop
    eager     the vectorised plain-PyTorch version (rib_ext.ops.oracle)
    compile   torch.compile of that vectorised version (dynamic shapes: compiled once for the six
              shapes, not once per shape; a per-shape static compile cost minutes on the GPU check)
    ours      rib_ext's fused gndrp_margin_loss kernel
and prints the times and the ratios (x = how many times faster ours is). Inputs come from the tests'
factories, so the benchmark measures exactly what the tests check. Each shape's row is printed
(``row ...``) as soon as it is measured, with the device, the operators' backend, torch and CUDA,
and ``--json`` is rewritten after each row.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import torch
import torch.utils.benchmark as tb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from factories import make_cam, make_labels  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_facts, when loaded by path
from bench_facts import print_row, run_facts, write_json  # noqa: E402

from rib_ext import ops  # noqa: E402
from rib_ext.ops import oracle  # noqa: E402

SHAPES = [(26, 20, 32, 32), (26, 20, 48, 64), (26, 20, 128, 128),
          (26, 80, 32, 32), (26, 80, 48, 64), (26, 80, 128, 128)]
TAU, MARGIN = 0.4, 600.0


def loop_step(cam, labels, behaviour):
    logits = oracle.gndrp_pool_loop(cam, labels > 0, TAU)
    return oracle.margin_loss(logits, labels, MARGIN, behaviour).sum()


def eager_step(cam, labels, behaviour):
    return oracle.gndrp_margin_loss(cam, labels, TAU, MARGIN, behaviour)[0]


def ours_step(cam, labels, behaviour):
    return ops.gndrp_margin_loss(cam, labels, TAU, MARGIN, behaviour)[0]


def fwd_bwd(step):
    def run(cam, labels, behaviour):
        cam.grad = None
        step(cam, labels, behaviour).backward()
    return run


def time_it(fn, cam, labels, behaviour, min_run_time):
    fn(cam, labels, behaviour)  # warm-up (and compilation)
    fn(cam, labels, behaviour)
    timer = tb.Timer(stmt="fn(cam, labels, behaviour)",
                     globals=dict(fn=fn, cam=cam, labels=labels, behaviour=behaviour))
    return timer.blocked_autorange(min_run_time=min_run_time).median


def bench_device(device, behaviour, use_compile, use_loop, min_run_time, shapes=SHAPES,
                 on_row=lambda shape, t: None):
    rows = []
    compiled = torch.compile(eager_step, dynamic=True) if use_compile else None
    for shape in shapes:
        cam = make_cam(*shape, device=device, requires_grad=True)
        labels = make_labels(shape[0], shape[1], device=device)
        t = {"ours": time_it(fwd_bwd(ours_step), cam, labels, behaviour, min_run_time),
             "eager": time_it(fwd_bwd(eager_step), cam, labels, behaviour, min_run_time)}
        if compiled is not None:
            t["compile"] = time_it(fwd_bwd(compiled), cam, labels, behaviour, min_run_time)
        if use_loop:
            t["loop"] = time_it(fwd_bwd(loop_step), cam, labels, behaviour, min_run_time / 4)
        rows.append((shape, t))
        on_row(shape, t)
    return rows


def format_table(device, rows):
    def ms(t, k):
        return f"{t[k] * 1e3:9.3f}" if k in t else "      n/a"

    def ratio(t, k):
        return f"{t[k] / t['ours']:8.1f}x" if k in t else "      n/a"

    lines = [f"device: {device}",
             "| N x K x H x W | loop ms | eager ms | compile ms | ours ms | vs loop | vs eager | vs compile |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for shape, t in rows:
        lines.append(f"| {'x'.join(map(str, shape))} | {ms(t, 'loop')} | {ms(t, 'eager')} | "
                     f"{ms(t, 'compile')} | {ms(t, 'ours')} | {ratio(t, 'loop')} | "
                     f"{ratio(t, 'eager')} | {ratio(t, 'compile')} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    p.add_argument("--behaviour", "--mode", default="authors", choices=list(ops.BEHAVIOURS))
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    p.add_argument("--no-loop", action="store_true", help="skip the (slow) authors' loop column")
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds per measurement")
    p.add_argument("--tiny", action="store_true", help="one small shape (a check of the script)")
    p.add_argument("--json", default=None, help="write the rows here (after each shape)")
    args = p.parse_args(argv)

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        print("no CUDA device: CUDA rows skipped")
        devices = [d for d in devices if d != "cuda"]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu cores {os.cpu_count()}, "
          f"{platform.processor() or platform.machine()}, behaviour {args.behaviour}")
    print(f"backends: " + ", ".join(f"{op}={ops.backend(op, d)}" for d in devices
                                    for op in ("gndrp_margin_loss",)))
    doc = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "behaviour": args.behaviour, "rows": []}
    for device in devices:
        facts = run_facts(device)

        def on_row(shape, t):
            doc["rows"].append({"shape": list(shape), "seconds": t, **facts})
            print_row(f"ops {device} {'x'.join(map(str, shape))}",
                      ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in t.items())
                      + f"; backend {facts['backend']}")
            write_json(args.json, doc)

        rows = bench_device(device, args.behaviour, not args.no_compile, not args.no_loop,
                            args.min_run_time, [(4, 3, 8, 8)] if args.tiny else SHAPES, on_row)
        if device == "cuda":
            print(f"gpu: {torch.cuda.get_device_name()}")
        print(format_table(device, rows))


if __name__ == "__main__":
    main()
