"""``python -m rib_ext.visualize``: pictures of a folder of IRN-format ``.npy`` maps, or of a run.

    python -m rib_ext.visualize MAPS_DIR --dataset voc --root VOC2012 [--list train] [--gt]
    python -m rib_ext.visualize --run rib_ext_out          # a finished pipeline output folder
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rib_ext.figures import DEFAULT_COUNT, visualize_maps, visualize_run
from rib_ext.layout import Layout


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rib_ext.visualize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("maps_dir", nargs="*", help="folder(s) of <id>.npy maps (IRN's format); "
                                              "NAME=DIR to caption one")
    p.add_argument("--run", help="a pipeline output folder: draw its maps, seeds, CRF and IRN masks "
                                 "and RIB's logit curves")
    p.add_argument("--dataset", choices=("voc", "coco", "demo"), default="demo")
    p.add_argument("--root", help="dataset root (the demo: OUT/data of the run)")
    p.add_argument("--list", default=None, help="split name or id-list file the maps belong to "
                                                "(default: train; the demo: val; --run: the run's)")
    p.add_argument("--gt", action="store_true", help="draw the ground-truth mask too")
    p.add_argument("--threshold", type=float, help="also draw each map set's seed at this "
                                                   "background threshold")
    p.add_argument("--ids", nargs="+", help="these images (default: --count spread over the list)")
    p.add_argument("--count", type=int, default=DEFAULT_COUNT)
    p.add_argument("--steps", type=int, default=0, metavar="N",
                   help="with --run: re-adapt the first N of the images with the run's classifier "
                        "and RIB settings and draw the map after each step (CPU: seconds per image)")
    p.add_argument("--out", help="output folder (default: MAPS_DIR/../visualize, or RUN/visualize)")
    return p


def _dataset(args, root: str | None, split: str):
    from rib_ext.data import VOCDataset, build_dataset

    if root is None:
        raise SystemExit("--root is required (the dataset the maps were made from)")
    if args.dataset == "demo":
        # An existing demo folder is read as it is (VOC layout): regenerating it with default
        # settings could replace the images the maps were made from.
        return VOCDataset(root, split)
    return build_dataset(args.dataset, root, split)


def _run_rib_parts(args, run: Path, root: str, saved: dict):
    """The run's trained classifier, its other-image pool and its RIB settings (from config.json)."""
    from rib_ext.config import PipelineConfig, from_plain
    from rib_ext.rib import OtherImages
    from rib_ext.cam.train import load_trained
    from rib_ext.stages.options import RUN_RECORD_KEYS

    if "rib" not in saved:
        raise SystemExit(f"{Layout(run).config}: no rib settings: --steps needs a pipeline run")
    # Read as --config reads it: the run-wide settings (the seed) are given at its top level.
    settings = from_plain(PipelineConfig, {k: v for k, v in saved.items() if k not in RUN_RECORD_KEYS})
    rib_cfg = settings.rib.replace(device="cpu")
    pool_set = _dataset(args, root, saved.get("train_list") or "train")
    pool = OtherImages(pool_set, "cpu", rib_cfg.other_resize_long, rib_cfg.other_crop)
    return load_trained(Layout(run).classifier_dir), pool, rib_cfg


def main(argv=None) -> int:
    from rib_ext.stages.options import run_command

    args = build_parser().parse_args(argv)
    return run_command(lambda: _main(args))


def _main(args) -> int:
    if args.run:
        import json

        run = Path(args.run)
        layout = Layout(run)
        saved = json.loads(layout.config.read_text()) if layout.config.is_file() else {}
        root = args.root or saved.get("root") or (str(layout.demo_data) if args.dataset == "demo" else None)
        split = args.list or saved.get("eval_list") or ("val" if args.dataset == "demo" else "train")
        dataset = _dataset(args, root, split)
        model = pool = rib_cfg = None
        if args.steps > 0:
            model, pool, rib_cfg = _run_rib_parts(args, run, root, saved)
        result = visualize_run(run, dataset, ids=args.ids, count=args.count, dest=args.out,
                               model=model, pool=pool, rib_cfg=rib_cfg, montage_count=args.steps)
        print(f"[visualize] {len(result['images'])} panels in {result['dir']}")
        return 0
    if not args.maps_dir:
        raise SystemExit("give a maps folder or --run OUT")
    maps_dirs = {}
    for item in args.maps_dir:
        caption, _, path = item.partition("=") if "=" in item else ("", "", item)
        path = Path(path)
        if not path.is_dir():
            raise SystemExit(f"{path}: not a folder")
        # ".../make_cam/maps" reads better as "make_cam" than as "maps".
        caption = caption or (path.resolve().parent.name if path.name == "maps" else path.name)
        maps_dirs[caption] = path
    dataset = _dataset(args, args.root, args.list or ("val" if args.dataset == "demo" else "train"))
    # Beside the (first) maps folder's stage folder, as a run folder keeps its pictures.
    out = Path(args.out) if args.out else Layout(Path(next(iter(maps_dirs.values()))).parent).pictures
    thresholds = {k: args.threshold for k in maps_dirs} if args.threshold is not None else None
    paths = visualize_maps(maps_dirs, dataset, out, ids=args.ids, count=args.count, gt=args.gt,
                           thresholds=thresholds)
    print(f"[visualize] {len(paths)} panels in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
