"""``python -m rib_ext.toy``: the RIB paper's toy experiment (Figures 1c and 2b) on a CPU."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from rib_ext.config_fields import ConfigError
from rib_ext.toy.config import ToyConfig


def parse_args(argv=None) -> argparse.Namespace:
    d = ToyConfig()
    p = argparse.ArgumentParser(
        prog="python -m rib_ext.toy",
        description=(
            "Toy experiment of RIB (NeurIPS 2021, Sec. 3.1): digits '2' and '8', 10% of them with "
            "a circle ('2') or a square ('8'); a 5-conv + linear classifier trained with sigmoid "
            "BCE; the high gradient ratio (HGR) of the digit (R_D), the shape (R_ND) and the "
            "background (R_BG) in the input-gradient map of every conv layer and of the logit "
            "(Fig. 1c), and of the logit during RIB's per-image fine-tuning (Fig. 2b). Writes "
            "table.md, results.json and PNG plots to --out, prints the table and a verdict on "
            "each of the paper's two claims."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=d.out, help="output folder")
    p.add_argument("--seeds", type=int, default=len(d.seeds),
                   help="number of seeds (0..N-1); results are mean ± std over them")
    p.add_argument("--mnist", metavar="DIR", default=None,
                   help="folder with MNIST's train-images-idx3-ubyte and train-labels-idx1-ubyte "
                        "(optionally .gz); default: scikit-learn's bundled 8x8 digits, upsampled")
    p.add_argument("--rib-steps", type=int, default=d.rib_steps, help="RIB iterations K")
    p.add_argument("--rib-lr", type=float, default=d.rib_lr, help="RIB SGD learning rate")
    p.add_argument("--rib-margin", type=float, default=d.rib_margin,
                   help="RIB margin m in -min(m, y_c)")
    p.add_argument("--rib-grid", nargs="+", metavar="LR:M", default=[],
                   help="extra RIB settings (learning rate:margin) rerun on the same trained models "
                        "to check claim 2's sensitivity, e.g. --rib-grid 3e-4:600 1e-3:15")
    p.add_argument("--rib-batch", type=int, default=d.rib_batch,
                   help="RIB batch B: the image plus B-1 others, redrawn every iteration")
    p.add_argument("--eval-images", type=int, default=d.eval_images,
                   help="shape-carrying images the HGR is averaged over")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="seeds run in this many parallel processes (one torch thread each)")
    return p.parse_args(argv)


def _grid(items) -> tuple:
    try:
        return tuple((float(lr), float(m)) for lr, m in (item.split(":") for item in items))
    except ValueError:
        raise SystemExit(f"--rib-grid takes LR:M pairs, got {' '.join(items)}") from None


def config_from_args(args: argparse.Namespace) -> ToyConfig:
    if args.seeds < 1:
        raise SystemExit("--seeds must be at least 1")
    try:
        return _replace(args)
    except ConfigError as err:  # a flag out of its range (ToyConfig states each)
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _replace(args: argparse.Namespace) -> ToyConfig:
    return dataclasses.replace(
        ToyConfig(), out=args.out, seeds=tuple(range(args.seeds)), mnist_dir=args.mnist,
        rib_steps=args.rib_steps, rib_lr=args.rib_lr, rib_margin=args.rib_margin,
        rib_grid=_grid(args.rib_grid), rib_batch=args.rib_batch,
        eval_images=args.eval_images, workers=args.workers)


def main(argv=None) -> dict:
    t0 = time.perf_counter()
    cfg = config_from_args(parse_args(argv))
    from rib_ext.toy.experiment import run_toy
    from rib_ext.toy.report import markdown

    try:
        if cfg.mnist_dir:
            # Here, before any worker starts, so a wrong folder fails at once and plainly.
            from rib_ext.toy.mnist import load_mnist_train

            load_mnist_train(cfg.mnist_dir)
        results = run_toy(cfg, log=lambda m: print(m, flush=True))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(markdown(results))
    print(f"Outputs in {cfg.out}: {', '.join(results['files'])}")
    print(f"Total elapsed (with imports and plots): {time.perf_counter() - t0:.1f} s")
    return results


if __name__ == "__main__":
    main()
