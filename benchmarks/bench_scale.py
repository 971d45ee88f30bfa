"""Seconds per image of every per-image stage on 1 and 2 ranks (gloo), and of the CPU-bound stages
(crf, ir_label) with 1 and 2 worker processes, side by side in one run.

    python benchmarks/bench_scale.py [--images 16] [--size 96] [--crf-size 448] [--crf-images 12]
        [--threads N] [--stages ...] [--json PATH]

Ranks: torch.multiprocessing starts 1 or 2 processes (the 2 with a gloo process group, as torchrun
would), each with the machine's cores divided among them as intra-op threads (torchrun's
OMP_NUM_THREADS does the same); every stage is timed from barrier to barrier, so a rank's wait for
the slower one counts. Workers: one process, crf and ir_label with ``workers`` 1 and 2, on images of
``--crf-size`` pixels (VOC's are about 500x375; the dense CRF's cost grows with the pixels).
Random weights throughout (speed does not depend on them): a ``resnet_tiny`` classifier (the demo's),
IRN and DeepLab-v2 on ResNet-18. The training stages are not per-image and are not here.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rib_ext import distributed  # noqa: E402
from rib_ext.config import (CRFConfig, DemoDataConfig, EvalSeedConfig, MakeCamConfig,  # noqa: E402
                            RIBConfig, SegmentConfig)
from rib_ext.data import build_dataset  # noqa: E402
from rib_ext.io import save_text  # noqa: E402
from rib_ext.workers import available_cores  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_facts, when loaded by path
from bench_facts import scratch_dir  # noqa: E402

STAGES = ("make_cam", "rib", "eval_seed", "crf", "ir_label", "make_sem_seg", "eval_mask",
          "segment_infer")
POOLED = ("crf", "ir_label")
THRESHOLD = 0.3  # a fixed background threshold for crf (the pipeline takes eval_seed's best)


def _demo(root: Path, images: int, size: int):
    return build_dataset("demo", root / "data", "train",
                         demo=DemoDataConfig(seed=0, num_train=images, num_val=2, image_size=size))


def prepare(root: Path, images: int, size: int) -> dict:
    """The dataset (generated once) and random-weight networks saved under ``root``."""
    from rib_ext.irn import build_irnet, save_irnet
    from rib_ext.models import build_cam_net, save_cam_net
    from rib_ext.segment.model import build_deeplab, save_deeplab

    ds = _demo(root, images, size)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights, on purpose
        save_cam_net(root / "cam.pth", build_cam_net("resnet_tiny", ds.num_classes, random_init=True,
                                                     strides=(2, 2, 1, 1), from_scratch=True))
        save_irnet(root / "irn.pth", build_irnet("resnet18", random_init=True))
        save_deeplab(root / "deeplab.pth", build_deeplab("resnet18", ds.num_classes + 1,
                                                         random_init=True))
    return {"root": str(root), "images": images, "size": size}


def _irn_cfg():
    from rib_ext.irn import IRNConfig

    return IRNConfig.preset("voc", device="cpu", boundary_pad_to=None, conf_fg=0.35, conf_bg=0.15)


def run_stages(inputs: dict, out: Path, stages, workers: int, maps_dir: Path | None = None) -> dict:
    """{stage: wall seconds}, every rank taking its shard; maps from make_cam unless given."""
    from rib_ext.irn import eval_mask_stage, ir_label_stage, make_sem_seg_stage
    from rib_ext.models import load_cam_net
    from rib_ext.segment.infer import infer_stage
    from rib_ext.segment.model import load_deeplab
    from rib_ext.cam.maps import make_cam
    from rib_ext.crf import refine_seeds
    from rib_ext.evaluation import eval_seed
    from rib_ext.rib.run import adapt_dataset

    root = Path(inputs["root"])
    ds = _demo(root, inputs["images"], inputs["size"])
    maps = Path(maps_dir) if maps_dir is not None else out / "make_cam"
    size = inputs["size"]
    irn = _irn_cfg()
    seg = SegmentConfig(backbone="resnet18", random_init=True, scales=(1.0,), device="cpu")
    rib_cfg = RIBConfig(steps=2, num_others=2, other_resize_long=(size * 3 // 4, size * 5 // 4),
                        other_crop=size, device="cpu")
    jobs = {
        "make_cam": lambda: make_cam(load_cam_net(root / "cam.pth"), ds, MakeCamConfig(device="cpu"), maps),
        "rib": lambda: adapt_dataset(load_cam_net(root / "cam.pth"), ds, ds, rib_cfg, out / "rib"),
        "eval_seed": lambda: eval_seed(ds, maps, EvalSeedConfig(), out / "eval_seed"),
        "crf": lambda: refine_seeds(ds, maps, THRESHOLD, CRFConfig(), out / "crf", workers=workers),
        "ir_label": lambda: ir_label_stage(ds, maps, out / "ir_label", irn, workers=workers),
        "make_sem_seg": lambda: make_sem_seg_stage(ds, maps, root / "irn.pth", out / "sem_seg", irn),
        "eval_mask": lambda: eval_mask_stage(ds, out / "sem_seg", out / "eval_mask", irn),
        "segment_infer": lambda: infer_stage(load_deeplab(root / "deeplab.pth"), ds, out / "segment",
                                             seg, model_path=root / "deeplab.pth"),
    }
    seconds = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for stage in stages:
            distributed.barrier()
            t0 = time.perf_counter()
            jobs[stage]()
            distributed.barrier()
            seconds[stage] = time.perf_counter() - t0
    return seconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, inputs: dict, out: str, stages, workers: int,
          maps_dir, result: str, threads: int | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(threads or max(1, available_cores() // world))
    if world > 1:
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        seconds = run_stages(inputs, Path(out), stages, workers, maps_dir)
        if rank == 0:
            save_text(result, json.dumps(seconds))
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def measure(inputs: dict, out: Path, world: int, stages, workers: int = 1, maps_dir=None,
            threads: int | None = None) -> dict:
    result = out / "seconds.json"
    torch.multiprocessing.spawn(_rank, args=(world, _free_port(), inputs, str(out), tuple(stages),
                                             workers, maps_dir, str(result), threads),
                                nprocs=world, join=True)
    return json.loads(result.read_text())


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=16, help="images of the rank comparison")
    p.add_argument("--size", type=int, default=96, help="their size in pixels")
    p.add_argument("--crf-images", type=int, default=12, help="images of the worker comparison")
    p.add_argument("--crf-size", type=int, default=448, help="their size (VOC: about 500x375)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads per rank (default: the cores divided among the ranks; "
                        "1 isolates the sharding from threading, e.g. on a loaded machine)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    work = scratch_dir("bench_scale_")
    load_before = os.getloadavg()
    small = prepare(work / "small", args.images, args.size)
    small_maps = None
    if "make_cam" not in args.stages:  # the later stages read maps: make them first, untimed
        small_maps = str(work / "small_maps")
        measure(small, work / "small_prep", 1, ["make_cam"], maps_dir=small_maps, threads=args.threads)
    ranks = {w: measure(small, work / f"ranks{w}", w, args.stages, maps_dir=small_maps,
                        threads=args.threads) for w in (1, 2)}
    pooled = [s for s in args.stages if s in POOLED]
    workers = {}
    if pooled:
        big = prepare(work / "big", args.crf_images, args.crf_size)
        maps = work / "big_maps"
        measure(big, work / "big_prep", 1, ["make_cam"], maps_dir=str(maps), threads=args.threads)
        workers = {n: measure(big, work / f"workers{n}", 1, pooled, workers=n, maps_dir=str(maps),
                              threads=args.threads) for n in (1, 2)}
    load_after = os.getloadavg()

    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"bench_scale: {date}; {available_cores()} cores; torch {torch.__version__}; load average "
          f"(1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    threads = args.threads or "cores / ranks"
    print(f"\nRanks (gloo, CPU; {threads} intra-op threads each): {args.images} demo images of "
          f"{args.size} px, seconds per image (stage wall time / images)")
    print("| stage | 1 rank | 2 ranks | speed-up |")
    print("|---|---:|---:|---:|")
    for s in args.stages:
        a, b = ranks[1][s] / args.images, ranks[2][s] / args.images
        print(f"| {s} | {a:.4f} | {b:.4f} | {_ratio(a, b)} |")
    if workers:
        print(f"\nCRF worker processes (1 process): {args.crf_images} demo images of "
              f"{args.crf_size} px, seconds per image")
        print("| stage | 1 worker | 2 workers | speed-up |")
        print("|---|---:|---:|---:|")
        for s in pooled:
            a, b = workers[1][s] / args.crf_images, workers[2][s] / args.crf_images
            print(f"| {s} | {a:.4f} | {b:.4f} | {_ratio(a, b)} |")
    if args.json:
        save_text(args.json, json.dumps({
            "date": date, "cores": available_cores(), "torch": torch.__version__,
            "load_average_before": load_before, "load_average_after": load_after,
            "args": vars(args), "ranks_seconds": ranks, "workers_seconds": workers}, indent=1))


if __name__ == "__main__":
    main()
