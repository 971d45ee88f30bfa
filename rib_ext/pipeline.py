"""``python -m rib_ext.pipeline``: the WSSS pipeline, stage by stage, on VOC, COCO or the embedded demo.

With no arguments it generates the embedded demo dataset (VOC layout) and runs every stage on the
CPU in a few minutes. Outputs go to ``--out`` (default ``rib_ext_out/``), one folder per stage, with
the run's settings in ``config.json``. Stages skip work already done, so a rerun resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from rib_ext.config import EvalSeedConfig, IRNConfig, PipelineConfig, RIBConfig, SegmentConfig
from rib_ext.io import save_json

STAGES = ("train_cam", "make_cam", "rib", "eval_seed", "crf", "ir_label", "train_irn",
          "make_sem_seg", "eval_mask", "segment")
# The default run stops at the pseudo masks: the segmentation network is a long training of its own.
DEFAULT_STAGES = STAGES[:-1]
STAGE_HELP = {
    "train_cam": "train the multi-label classifier (IRN's recipe)",
    "make_cam": "plain multi-scale + flip CAMs in IRN's .npy format (the baseline)",
    "rib": "RIB: per-image adaptation of the classifier, accumulated maps in IRN's format",
    "eval_seed": "threshold sweep of every map set made (cam, rib): best threshold, mIoU, P/R/F1",
    "crf": "dense-CRF refinement of every map set's seeds at its best threshold, evaluated",
    "ir_label": "IRN: confident fg/bg labels from each map set (two thresholds + CRF)",
    "train_irn": "IRN: the inter-pixel relation network on the confident labels",
    "make_sem_seg": "IRN: random walk of the maps over the learnt affinities -> pseudo masks",
    "eval_mask": "mIoU of the pseudo masks",
    "segment": "DeepLab-v2 trained on the pseudo masks (of rib, else cam), evaluated on --val-list",
}
MAP_SETS = {"cam": ("make_cam", "maps"), "rib": ("rib", "maps")}


def demo_preset(cfg: PipelineConfig) -> None:
    """Settings that let the embedded demo run end to end on 2 CPU cores in minutes."""
    size = cfg.demo.image_size
    # From random weights: a narrow ResNet whose every stage trains with batch-statistics BN and
    # ordinary momentum (the authors' recipe fine-tunes ImageNet weights, which the demo lacks).
    cfg.train_cam = dataclasses.replace(
        cfg.train_cam, backbone="resnet_tiny", random_init=True, from_scratch=True, epochs=12,
        batch_size=16, crop_size=size, resize_long=(int(size * 0.75), int(size * 1.25)), lr=0.1,
        classifier_lr_mult=1.0, authors_momentum=False)
    # Output stride 8: at 128 pixels an OS-16 CAM is 8x8, too coarse for objects of ~40 pixels.
    cfg.train_cam.strides = (2, 2, 1, 1)
    # Maps are made and evaluated on the held-out split: fewer images, so the CPU run stays short.
    cfg.eval_list = cfg.eval_list or "val"
    # The demo's maps peak higher than VOC's: sweep the whole range, and set IRN's confident-label
    # thresholds from each map set's best seed threshold (fg = best + 0.1, bg = best - 0.1).
    cfg.eval_seed = EvalSeedConfig(0.05, 0.95, 0.01)
    cfg.irn_auto_thresholds = True


def demo_rib_settings(size: int) -> dict:
    """RIB on the demo: its small images and classifier (the VOC numbers are for ResNet-50 on
    512-pixel crops), and fewer other images per step so that the CPU run stays short."""
    # lr: the VOC 8e-6 barely moves this small network's logits; 1e-4 grows the target logit sum
    # from ~10 to a few hundred over the 10 steps, the regime the VOC margin of 600 is set for.
    return dict(lr=1e-4, num_others=8, other_resize_long=(int(size * 0.75), int(size * 1.25)),
                other_crop=size)


def irn_config(cfg: PipelineConfig, args) -> IRNConfig:
    """IRN on the classifier's backbone: ImageNet weights when given; on the demo, the trained CAM
    network's own backbone (there are no ImageNet weights to start from)."""
    overrides = {"device": args.device}
    if cfg.dataset == "demo":
        size = cfg.demo.image_size
        overrides.update(backbone=cfg.train_cam.backbone, crop_size=size - size % 4, batch_size=16,
                         epochs=15, weights=str(Path(cfg.out_dir) / "train_cam" / "cam_net.pth"))
    else:
        overrides.update(backbone=cfg.train_cam.backbone, weights=cfg.train_cam.weights,
                         random_init=cfg.train_cam.random_init)
    if args.irn_epochs is not None:
        overrides["epochs"] = args.irn_epochs
    return IRNConfig.preset(args.irn_preset, **overrides)


def segment_config(cfg: PipelineConfig, args) -> SegmentConfig:
    overrides = {"device": args.device}
    for field, value in (("backbone", args.segment_backbone), ("weights", args.segment_weights),
                         ("iterations", args.segment_iterations)):
        if value is not None:
            overrides[field] = value
    if cfg.dataset == "demo":
        size = cfg.demo.image_size
        overrides = {"backbone": "resnet18", "random_init": True, "iterations": 200,
                     "batch_size": 8, "crop_size": size, "lr": 1e-2, "retrain": False,
                     "use_crf": False, **overrides}
    return SegmentConfig.preset_for("coco" if cfg.dataset == "coco" else "voc", **overrides)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m rib_ext.pipeline", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="stages:\n" + "\n".join(f"  {s:10s} {h}" for s, h in STAGE_HELP.items()))
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=("demo", "voc", "coco"), default="demo",
                   help="dataset layout (default: demo, generated under OUT/data)")
    g.add_argument("--root", help="dataset root (VOC: the VOC2012 folder; COCO: the folder with "
                                  "train2014/ and annotations/)")
    g.add_argument("--train-list", help="ids (split name or list file) to train the classifier on "
                                        "(default: train; VOC users often pass train_aug.txt)")
    g.add_argument("--eval-list", help="ids to make and evaluate maps for (default: train, as in "
                                       "the papers' seed / pseudo-mask figures; the demo: val)")
    g.add_argument("--val-list", help="ids the segment stage is evaluated on (default: val)")
    g.add_argument("--demo-seed", type=int, help="seed of the generated demo dataset")
    g.add_argument("--demo-images", type=int, help="number of demo training images (240)")
    g.add_argument("--demo-val-images", type=int, help="number of demo val images (60)")
    g.add_argument("--demo-size", type=int, help="demo image size in pixels (128)")
    p.add_argument("--out", default="rib_ext_out", help="output folder (default: rib_ext_out)")
    p.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                   help=f"comma-separated stages to run, in pipeline order (default: "
                        f"{','.join(DEFAULT_STAGES)}; add segment for the final network)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--allow-missing", action="store_true",
                   help="skip images whose maps are missing instead of stopping")
    g = p.add_argument_group("train_cam")
    g.add_argument("--backbone", choices=("resnet18", "resnet34", "resnet50", "resnet101", "resnet_tiny"))
    g.add_argument("--weights", help="torchvision ImageNet checkpoint of the backbone (no download)")
    g.add_argument("--random-init", action="store_true", help="start from random weights (smoke tests)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--crop-size", type=int)
    g.add_argument("--lr", type=float, help="classifier lr (backbone: lr / 10)")
    g.add_argument("--seed", type=int)
    g = p.add_argument_group("rib (defaults: the paper's VOC settings, the authors' behaviour)")
    g.add_argument("--preset", choices=("reference", "paper"), default="reference",
                   help="reference: the authors' released code (default); paper: the equations")
    g.add_argument("--rib-steps", type=int, help="K, adaptation steps per image (10)")
    g.add_argument("--rib-lr", type=float, help="lambda, backbone step size (VOC 8e-6, COCO 5e-6)")
    g.add_argument("--num-others", type=int, help="B, other images per step (VOC 20, COCO 15)")
    g.add_argument("--margin", type=float, help="m (VOC 600, COCO 1000)")
    g.add_argument("--tau", type=float, help="GNDRP threshold (VOC 0.4, COCO 0.5)")
    g.add_argument("--pooling", choices=("gndrp", "gap"))
    g.add_argument("--rib-loss", choices=("rib", "bce_sigmoid", "bce_tanh", "bce_softsign"))
    g.add_argument("--group-size", type=int, help="G, images adapted at once (1)")
    g = p.add_argument_group("IRN refinement and segmentation")
    g.add_argument("--irn-preset", choices=("rib", "irn"), default="rib",
                   help="thresholds of the RIB authors (0.35/0.17, bg 0.27, map power 1.3; "
                        "default) or of IRN's own code (0.30/0.05, 0.25, 1.0)")
    g.add_argument("--irn-epochs", type=int, help="IRN training epochs (3; the demo: 15)")
    g.add_argument("--irn-auto-thresholds", action="store_true",
                   help="confident-label thresholds from each map set's best seed threshold t: "
                        "fg t + 0.1, bg t - 0.1 (the demo's default)")
    g.add_argument("--saliency-dir", help="saliency PNGs (RIB-Sal): disagreeing pixels become ignore")
    g.add_argument("--segment-backbone", choices=("resnet18", "resnet34", "resnet50", "resnet101"))
    g.add_argument("--segment-weights", help="torchvision ImageNet checkpoint for DeepLab's backbone")
    g.add_argument("--segment-iterations", type=int, help="DeepLab iterations (VOC 30k, COCO 100k)")
    g = p.add_argument_group("make_cam / eval_seed / crf")
    g.add_argument("--scales", type=float, nargs="+", help="inference scales (default 1.0 0.5 1.5 2.0)")
    g.add_argument("--thresholds", type=float, nargs=3, metavar=("START", "STOP", "STEP"),
                   help="background-threshold sweep, STOP inclusive (default 0.20 0.49 0.01)")
    g.add_argument("--crf-threshold", type=float,
                   help="background threshold of the CRF stage (default: eval_seed's best)")
    return p


def config_from_args(args) -> PipelineConfig:
    cfg = PipelineConfig(dataset=args.dataset, root=args.root, out_dir=args.out,
                         train_list=args.train_list, eval_list=args.eval_list,
                         val_list=args.val_list, saliency_dir=args.saliency_dir,
                         allow_missing=args.allow_missing)
    if args.demo_seed is not None:
        cfg.demo.seed = args.demo_seed
    for field, value in (("num_train", args.demo_images), ("num_val", args.demo_val_images),
                         ("image_size", args.demo_size)):
        if value is not None:
            setattr(cfg.demo, field, value)
    if cfg.dataset == "demo":
        demo_preset(cfg)
    tc = cfg.train_cam
    for field, value in (("backbone", args.backbone), ("weights", args.weights),
                         ("epochs", args.epochs), ("batch_size", args.batch_size),
                         ("crop_size", args.crop_size), ("lr", args.lr), ("seed", args.seed)):
        if value is not None:
            setattr(tc, field, value)
    if args.random_init:
        tc.random_init = True
    if args.weights:
        tc.random_init = False
    tc.device = cfg.make_cam.device = args.device
    tc.num_workers = cfg.make_cam.num_workers = args.num_workers
    if args.scales:
        cfg.make_cam.scales = tuple(args.scales)
    rib_overrides = {k: v for k, v in (
        ("steps", args.rib_steps), ("lr", args.rib_lr), ("num_others", args.num_others),
        ("margin", args.margin), ("tau", args.tau), ("pooling", args.pooling),
        ("loss", args.rib_loss), ("group_size", args.group_size), ("seed", args.seed)) if v is not None}
    base = demo_rib_settings(cfg.demo.image_size) if cfg.dataset == "demo" else {}
    cfg.rib = RIBConfig.preset_for(args.preset, "coco" if cfg.dataset == "coco" else "voc",
                                   **{**base, **rib_overrides, "device": args.device})
    if args.scales:
        cfg.rib.scales = tuple(args.scales)
    cfg.irn = irn_config(cfg, args)
    cfg.segment = segment_config(cfg, args)
    if args.thresholds:
        cfg.eval_seed = EvalSeedConfig(*args.thresholds)
    if args.irn_auto_thresholds:
        cfg.irn_auto_thresholds = True
    if args.crf_threshold is not None:
        cfg.crf.threshold = args.crf_threshold
    return cfg


def parse_stages(text: str) -> list[str]:
    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    return [s for s in STAGES if s in stages]


def dataset_root(cfg: PipelineConfig) -> str:
    if cfg.root is not None:
        return cfg.root
    if cfg.dataset == "demo":
        return str(Path(cfg.out_dir) / "data")
    raise SystemExit(f"--root is required for --dataset {cfg.dataset}")


def open_datasets(cfg: PipelineConfig):
    from rib_ext.data import build_dataset

    root = dataset_root(cfg)
    kw = {"demo": cfg.demo} if cfg.dataset == "demo" else {}
    train = build_dataset(cfg.dataset, root, cfg.train_list or "train", **kw)
    evaluation = build_dataset(cfg.dataset, root, cfg.eval_list or "train", **kw)
    return train, evaluation


def run(cfg: PipelineConfig, stages: list[str]) -> dict:
    """Run ``stages`` with ``cfg``; returns a summary dict (also saved as OUT/summary.json)."""
    from rib_ext import distributed
    from rib_ext.stages.common import resolve_device

    distributed.init_from_env()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if distributed.rank() == 0:
        save_json(out / "config.json", {"stages": stages, **dataclasses.asdict(cfg)})
    train_set, eval_set = open_datasets(cfg)
    say(f"[pipeline] dataset {cfg.dataset}: {len(train_set)} training images, {len(eval_set)} "
        f"images to map and evaluate, {train_set.num_classes} classes; device "
        f"{resolve_device(cfg.train_cam.device)}; output {out}")
    summary: dict = {}
    t_start = time.time()
    for stage in stages:
        t0 = time.time()
        summary[stage] = STAGE_RUNNERS[stage](cfg, out, train_set, eval_set)
        summary[stage]["stage_seconds"] = round(time.time() - t0, 1)
    summary["seconds"] = round(time.time() - t_start, 1)
    if distributed.rank() == 0:
        save_json(out / "summary.json", summary)
    say(f"[pipeline] done in {summary['seconds']} s; summary in {out / 'summary.json'}")
    return summary


def say(text: str) -> None:
    from rib_ext import distributed

    if distributed.rank() == 0:
        print(text, flush=True)


def map_sets(out: Path) -> dict[str, Path]:
    """The map sets this run has made so far (cam: make_cam's, rib: the rib stage's)."""
    found = {}
    for name, (stage, sub) in MAP_SETS.items():
        d = out / stage / sub
        if d.is_dir() and any(d.glob("*.npy")):
            found[name] = d
    return found


def _train_cam(cfg, out, train_set, eval_set) -> dict:
    from rib_ext import distributed
    from rib_ext.stages.train_cam import train_cam

    path = Path(out / "train_cam")
    if distributed.rank() == 0:  # one classifier; the other ranks wait for it
        path = train_cam(train_set, cfg.train_cam, out / "train_cam")
        say(f"[train_cam] {path}")
    distributed.barrier()
    return {"model": str(path)}


def _make_cam(cfg, out, train_set, eval_set) -> dict:
    from rib_ext.stages.make_cam import make_cam
    from rib_ext.stages.train_cam import load_trained

    result = make_cam(load_trained(out / "train_cam"), eval_set, cfg.make_cam, out / "make_cam" / "maps")
    say(f"[make_cam] {result}")
    return result


def _rib(cfg, out, train_set, eval_set) -> dict:
    from rib_ext.stages.rib import rib
    from rib_ext.stages.train_cam import load_trained

    result = rib(load_trained(out / "train_cam"), eval_set, train_set, cfg.rib, out / "rib")
    say(f"[rib] {result}")
    return result


def _eval_seed(cfg, out, train_set, eval_set) -> dict:
    from rib_ext.stages.eval_seed import eval_seed

    results = {}
    for name, maps_dir in map_sets(out).items():
        result = eval_seed(eval_set, maps_dir, cfg.eval_seed, out / "eval_seed" / name,
                           allow_missing=cfg.allow_missing, title=f"{name.upper()} seed")
        results[name] = _headline(result)
        say(f"[eval_seed] {name.upper()} seed mIoU {100 * result['miou']:.1f} at threshold "
            f"{result['best_threshold']:.2f} (precision {100 * result['precision']:.1f}, recall "
            f"{100 * result['recall']:.1f}) -> {out / 'eval_seed' / name / 'result.md'}")
    if not results:
        raise SystemExit(f"eval_seed: no maps under {out} yet: run make_cam or rib first")
    return results


def _crf(cfg, out, train_set, eval_set) -> dict:
    from rib_ext import distributed
    from rib_ext.stages.crf import crf

    results = {}
    if distributed.rank() != 0:  # light enough for one rank; the others wait
        distributed.barrier()
        return results
    for name, maps_dir in map_sets(out).items():
        threshold = cfg.crf.threshold
        if threshold is None:
            threshold = _saved_best_threshold(out / "eval_seed" / name)
        result = crf(eval_set, maps_dir, threshold, cfg.crf, out / "crf" / name,
                     allow_missing=cfg.allow_missing)
        results[name] = _headline(result)
        if "miou" in result:
            say(f"[crf] {name.upper()} + CRF mIoU {100 * result['miou']:.1f} at threshold {threshold:.2f}")
    distributed.barrier()
    return results


def _ir_label(cfg, out, train_set, eval_set) -> dict:
    from rib_ext.irn import ir_label_stage

    results = {}
    for name, maps_dir in _rank0_map_sets(out):
        irn = cfg.irn
        if cfg.irn_auto_thresholds:
            t = _saved_best_threshold(out / "eval_seed" / name)
            irn = irn.replace(conf_fg=round(min(t + 0.1, 0.99), 2), conf_bg=round(max(t - 0.1, 0.0), 2))
        results[name] = ir_label_stage(eval_set, maps_dir, out / "ir_label" / name, irn)
        say(f"[ir_label] {name}: fg > {irn.conf_fg}, bg <= {irn.conf_bg}: {_brief(results[name])}")
    return results


def _train_irn(cfg, out, train_set, eval_set) -> dict:
    from rib_ext.irn import train_irn_stage

    results = {}
    for name, _ in _rank0_map_sets(out):
        results[name] = _brief(train_irn_stage(eval_set, out / "ir_label" / name,
                                               out / "train_irn" / name, cfg.irn))
        say(f"[train_irn] {name}: {results[name]}")
    return results


def _make_sem_seg(cfg, out, train_set, eval_set) -> dict:
    from rib_ext.irn import apply_saliency, make_sem_seg_stage

    results = {}
    for name, maps_dir in _rank0_map_sets(out):
        masks = out / "make_sem_seg" / name
        results[name] = _brief(make_sem_seg_stage(eval_set, maps_dir, out / "train_irn" / name,
                                                  masks, cfg.irn, score_dir=_score_dir(out, name)))
        if cfg.saliency_dir:
            results[name + "_saliency"] = _brief(apply_saliency(
                eval_set, masks, cfg.saliency_dir, out / "make_sem_seg" / f"{name}_saliency", cfg.irn))
        say(f"[make_sem_seg] {name}: {results[name]}")
    return results


def _eval_mask(cfg, out, train_set, eval_set) -> dict:
    from rib_ext.irn import eval_mask_stage

    results = {}
    for name, _ in _rank0_map_sets(out):
        result = eval_mask_stage(eval_set, out / "make_sem_seg" / name, out / "eval_mask" / name,
                                 cfg.irn)
        results[name] = _headline(result)
        say(f"[eval_mask] {name.upper()} -> IRN pseudo-mask mIoU {100 * result['miou']:.1f} "
            f"-> {out / 'eval_mask' / name / 'result.md'}")
    return results


def _segment(cfg, out, train_set, eval_set) -> dict:
    from rib_ext.data import build_dataset
    from rib_ext.segment import segment_stage

    sets = dict(_rank0_map_sets(out))
    name = "rib" if "rib" in sets else "cam"
    labels = out / "make_sem_seg" / name
    # RIB-Sal: train on the saliency-refined masks, without re-training (as the paper does).
    saliency = out / "make_sem_seg" / f"{name}_saliency" if cfg.saliency_dir else None
    val_set = build_dataset(cfg.dataset, dataset_root(cfg), cfg.val_list or "val",
                            **({"demo": cfg.demo} if cfg.dataset == "demo" else {}))
    scores = _score_dir(out, name)
    result = segment_stage(eval_set, labels, val_set, out / "segment", cfg.segment,
                           score_dir=scores if scores.is_dir() else None, saliency_dir=saliency)
    if result.get("miou") is not None:
        say(f"[segment] DeepLab-v2 on the {name.upper()} pseudo masks: val mIoU "
            f"{100 * result['miou']:.1f}")
    return _headline(result)


def _score_dir(out: Path, name: str) -> Path:
    """Where make_sem_seg keeps a map set's random-walk scores (the segment stage re-trains from)."""
    return out / "make_sem_seg" / f"{name}_scores"


def _rank0_map_sets(out: Path):
    """IRN's stages run on rank 0 (training one network per map set); other ranks get nothing."""
    from rib_ext import distributed

    return list(map_sets(out).items()) if distributed.rank() == 0 else []


def _brief(result: dict) -> dict:
    return {k: v for k, v in result.items() if isinstance(v, (int, float, str, type(None)))}


STAGE_RUNNERS = {"train_cam": _train_cam, "make_cam": _make_cam, "rib": _rib,
                 "eval_seed": _eval_seed, "crf": _crf, "ir_label": _ir_label,
                 "train_irn": _train_irn, "make_sem_seg": _make_sem_seg, "eval_mask": _eval_mask,
                 "segment": _segment}


def _headline(result: dict) -> dict:
    keep = ("best_threshold", "threshold", "miou", "precision", "recall", "f1", "num_images", "seconds")
    return {k: result[k] for k in keep if k in result}


def _saved_best_threshold(eval_dir: Path) -> float:
    path = eval_dir / "result.json"
    if not path.exists():
        raise SystemExit(f"crf needs a background threshold: pass --crf-threshold or run eval_seed "
                         f"first (no {path})")
    return float(json.loads(path.read_text())["best_threshold"])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    run(cfg, parse_stages(args.stages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
