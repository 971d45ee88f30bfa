"""bf16 against float32 RIB maps on the embedded demo, for the same draws, against the criteria bf16 must meet:
per-image Pearson correlation of ``high_res`` (>= 0.99), seed mIoU (within 0.3), the same stop
decision (>= 95 % of images).

    python benchmarks/precision_fidelity.py OUT [--device cpu|cuda] [--variant tf32|bf16|bf16+cl]
        [--pipeline-args "--epochs 4 --demo-val-images 30"]

Trains the demo classifier once (OUT/float32/train_cam, reused when present), runs the rib and
eval_seed stages in float32 and in the variant on the demo's held-out images, and prints and saves
(OUT/fidelity.json) the comparison. On the CPU, bf16 autocast is a proxy for the GPU's (other
kernels, same number format).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rib_ext import pipeline  # noqa: E402
from rib_ext.io import load_npy_dict, save_json  # noqa: E402

VARIANTS = {"tf32": dict(precision="tf32"),
            "bf16": dict(precision="bf16"),
            "bf16+cl": dict(precision="bf16", channels_last=True, cudnn_benchmark=True)}


def run_variant(out: Path, device: str, overrides: dict, stages: list[str], extra: list[str]) -> dict:
    cfg = pipeline.config_from_argv(
        ["--out", str(out), "--device", device] + extra)
    # The speed settings' section: run() validates the tree, which copies it into cfg.rib.
    for k, v in overrides.items():
        setattr(cfg.rib_speed, k, v)
    return pipeline.run(cfg, stages)


def best_miou(out: Path) -> float:
    """The RIB seed mIoU (%) at the sweep's best threshold."""
    path = out / "eval_seed" / "rib" / "result.json"
    return round(100 * float(json.loads(path.read_text())["miou"]), 2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--device", default="cpu")
    p.add_argument("--variant", default="bf16", choices=list(VARIANTS))
    p.add_argument("--pipeline-args", default="", help="more pipeline flags, e.g. '--epochs 4'")
    args = p.parse_args(argv)
    out = Path(args.out)
    extra = args.pipeline_args.split()
    ref, var = out / "float32", out / args.variant
    if not (ref / "rib" / "records.jsonl").exists():
        trained = (ref / "train_cam" / "cam_net.pth").exists()
        run_variant(ref, args.device, {}, (["train_cam"] if not trained else []) + ["rib", "eval_seed"],
                    extra)
    if var.exists():
        shutil.rmtree(var / "rib", ignore_errors=True)
    (var / "train_cam").mkdir(parents=True, exist_ok=True)
    for f in (ref / "train_cam").iterdir():
        if f.is_file():
            shutil.copy2(f, var / "train_cam" / f.name)
    run_variant(var, args.device, VARIANTS[args.variant], ["rib", "eval_seed"], extra)

    r, same_stop, names = [], 0, sorted(f.stem for f in (ref / "rib" / "maps").glob("*.npy"))
    recs = {}
    for run in (ref, var):
        recs[run] = {json.loads(line)["name"]: json.loads(line)
                     for line in (run / "rib" / "records.jsonl").read_text().splitlines()}
    for name in names:
        a = load_npy_dict(ref / "rib" / "maps" / f"{name}.npy")["high_res"]
        b = load_npy_dict(var / "rib" / "maps" / f"{name}.npy")["high_res"]
        if a.size > 1 and a.std() > 0 and b.std() > 0:
            r.append(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]))
        ra, rb = recs[ref][name], recs[var][name]
        same_stop += (ra["stop"], ra["steps"]) == (rb["stop"], rb["steps"])
    res = {"variant": args.variant, "device": args.device, "images": len(names),
           "pearson_min": round(min(r), 5), "pearson_mean": round(float(np.mean(r)), 5),
           "pearson_ge_0.99": round(float(np.mean(np.array(r) >= 0.99)), 4),
           "same_stop_fraction": round(same_stop / len(names), 4),
           "seed_miou_float32": best_miou(ref), f"seed_miou_{args.variant}": best_miou(var)}
    res["seed_miou_diff"] = round(res[f"seed_miou_{args.variant}"] - res["seed_miou_float32"], 3)
    save_json(out / f"fidelity_{args.variant}.json", res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
