"""``python -m rib_ext.ablation``: sweep RIB options on a trained classifier, as the paper's tables do.

    python -m rib_ext.ablation --suite all                 # every suite below, on rib_ext_out/
    python -m rib_ext.ablation --option tau --values 0.3 0.4 0.5
    python -m rib_ext.ablation --option margin,lr --values 300:4e-6 600:8e-6

It reuses the classifier and the settings of a pipeline run (``--run``, default ``rib_ext_out``;
trained on the embedded demo first if that folder has none), runs the rib stage once per value on
the run's evaluation list (``--images`` caps it), and reports the seed mIoU per value in
``OUT/<suite>/results.{md,json}``; the per-step curve (seed mIoU after steps k = 0..K, the paper's
Figure 5) also as a PNG.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from rib_ext.config import EvalSeedConfig, RIBConfig
from rib_ext.io import save_figure, save_json, save_text

# The paper's ablations (Table 5, Table A1, Figure 5). Margin and lr pairs are multiples of the
# run's own values, so that they make sense on the demo's scale as on VOC's (600, 8e-6).
SUITES = {
    "tau": ("tau", ["0.3", "0.4", "0.5"]),
    "margin_lr": ("margin,lr", ["x0.5:x0.5", "x1:x1", "x2:x2"]),
    "pooling": ("pooling", ["gap", "gndrp"]),
    "others": ("num_others", ["1", "5", "10", "20"]),
    "loss": ("loss", ["bce_tanh", "bce_sigmoid", "bce_softsign", "rib"]),
}


def parse_value(base: RIBConfig, fields: list[str], text: str) -> dict:
    """``"0.3"`` or ``"600:8e-6"`` (one part per field; ``x2`` = twice the base value)."""
    parts = text.split(":")
    if len(parts) != len(fields):
        raise SystemExit(f"value {text!r} needs {len(fields)} part(s) for {','.join(fields)}")
    types = {f.name: f.type for f in dataclasses.fields(RIBConfig)}
    out = {}
    for name, part in zip(fields, parts):
        if name not in types:
            raise SystemExit(f"unknown RIB option {name!r}; options: {', '.join(sorted(types))}")
        current = getattr(base, name)
        if part.startswith("x"):
            out[name] = type(current)(current * float(part[1:]))
        elif isinstance(current, bool):
            out[name] = part.lower() in ("1", "true", "yes")
        elif isinstance(current, (int, float)):
            out[name] = type(current)(float(part))
        else:
            out[name] = part
    return out


def load_run(run: Path):
    """(pipeline config, classifier, train set, eval set) of a finished pipeline run: its own
    config.json, read as ``--config`` reads it."""
    from rib_ext import pipeline
    from rib_ext.stages.context import RunContext
    from rib_ext.layout import Layout

    layout = Layout(run)
    if not layout.config.exists() and not layout.classifier.exists():
        print(f"[ablation] no trained classifier in {run}: training one on the embedded demo")
        pipeline.run(pipeline.config_from_argv(["--out", str(run)]), ["train_cam"])
    cfg = pipeline.config_from_argv(["--config", str(layout.config), "--out", str(run)])
    ctx = RunContext(cfg)
    # The classifier the run's own maps came from: its --cam-checkpoint, else train_cam's.
    return cfg, ctx.load_classifier(), ctx.train_set, ctx.eval_set


def sweep(option: str, values: list[str], cfg, model, train_set, eval_set, out: Path) -> list[dict]:
    from rib_ext.evaluation import eval_seed
    from rib_ext.layout import Layout
    from rib_ext.rib.run import adapt_dataset

    fields = option.split(",")
    rows = []
    for text in values:
        changes = parse_value(cfg.rib, fields, text)
        tag = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in changes.items())
        folder = out / tag
        # Each value's folder is laid out as a run folder's rib stage.
        layout = Layout(folder)
        summary = adapt_dataset(model, eval_set, train_set, dataclasses.replace(cfg.rib, **changes), layout.rib_dir)
        result = eval_seed(eval_set, layout.maps_dir("rib"), cfg.eval_seed, folder / "eval",
                           title=f"RIB seed, {tag}")
        rows.append({"value": tag, "miou": result["miou"], "best_threshold": result["best_threshold"],
                     "precision": result["precision"], "recall": result["recall"],
                     "mean_steps": summary.get("mean_steps")})
        print(f"[ablation] {tag}: seed mIoU {100 * result['miou']:.1f}", flush=True)
    return rows


def step_curve(cfg, model, train_set, eval_set, out: Path) -> dict:
    """Seed mIoU of the maps after steps 0..K (step 0: the plain CAM), for GAP and GNDRP."""
    from rib_ext.evaluation import ThresholdSweep
    from rib_ext.rib import OtherImages, RIBEngine, Target
    from rib_ext.runtime import resolve_device

    device = resolve_device(cfg.rib.device)
    pool = OtherImages(train_set, device, cfg.rib.other_resize_long, cfg.rib.other_crop,
                       cache_bytes=cfg.rib.image_cache_mb << 20)
    pool_index = {n: j for j, n in enumerate(train_set.ids)}
    curves = {}
    for pooling in ("gap", "gndrp"):
        rib_cfg = dataclasses.replace(cfg.rib, pooling=pooling, stop_on_margin=False,
                                      stop_on_explosion=False)
        sweeps = [ThresholdSweep(eval_set.num_classes + 1, cfg.eval_seed) for _ in range(rib_cfg.steps)]
        engine = RIBEngine(model, pool, rib_cfg, device, snapshot_steps=True)
        targets = (Target(i, eval_set.name(i), eval_set.image(i), eval_set.labels(i),
                          pool_index.get(eval_set.name(i))) for i in range(len(eval_set)))

        def collect(result, sweeps=sweeps):
            gt = eval_set.mask(eval_set.ids.index(result.name))
            for k, maps in enumerate(result.step_maps):
                sweeps[k].update(maps["high_res"], maps["keys"], gt)

        engine.run(targets, on_result=collect)
        curves[pooling] = [s.result()["miou"] for s in sweeps]
        print(f"[ablation] per-step seed mIoU ({pooling}): "
              + " ".join(f"{100 * m:.1f}" for m in curves[pooling]), flush=True)
    plot_curves(out / "curve.png", curves)
    return curves


def plot_curves(path: Path, curves: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, values in curves.items():
        ax.plot(range(len(values)), [100 * v for v in values], marker="o", label=name.upper())
    ax.set_xlabel("maps summed over steps 0..k")
    ax.set_ylabel("seed mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(path, fig, dpi=100)


def table(option: str, rows: list[dict]) -> str:
    lines = [f"| {option} | seed mIoU | best t | precision | recall | mean steps |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['value']} | {100 * r['miou']:.1f} | {r['best_threshold']:.2f} | "
                     f"{100 * r['precision']:.1f} | {100 * r['recall']:.1f} | {r['mean_steps']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rib_ext.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="rib_ext_out", help="a pipeline output folder (its classifier "
                                                         "and settings are reused)")
    p.add_argument("--out", help="where the ablation goes (default: RUN/ablation)")
    p.add_argument("--suite", choices=sorted(SUITES) + ["curve", "all"],
                   help="one of the paper's ablations, or all of them")
    p.add_argument("--option", help="a RIBConfig field (or two, comma-separated) to sweep")
    p.add_argument("--values", nargs="+", help="values of --option; 'a:b' for two fields; 'x2' "
                                              "scales the run's value")
    p.add_argument("--images", type=int, help="use only the first N images of the evaluation list")
    p.add_argument("--steps", type=int, help="K for every value (default: the run's)")
    args = p.parse_args(argv)
    if not args.suite and not (args.option and args.values):
        p.error("give --suite, or --option with --values")

    run = Path(args.run)
    out = Path(args.out) if args.out else run / "ablation"
    cfg, model, train_set, eval_set = load_run(run)
    if args.images:
        eval_set._ids = eval_set.ids[: args.images]
    if args.steps:
        cfg.rib.steps = args.steps
    cfg.eval_seed = EvalSeedConfig()
    jobs = ([(s, *SUITES[s]) for s in SUITES] + [("curve", None, None)] if args.suite == "all"
            else [(args.suite, *SUITES.get(args.suite, (None, None)))] if args.suite
            else [(args.option.replace(",", "_"), args.option, args.values)])
    report = {}
    for name, option, values in jobs:
        if name == "curve":
            curves = step_curve(cfg, model, train_set, eval_set, out / "curve")
            report["curve"] = curves
            save_json(out / "curve" / "results.json", curves)
            continue
        rows = sweep(option, values, cfg, model, train_set, eval_set, out / name)
        report[name] = rows
        save_json(out / name / "results.json", rows)
        save_text(out / name / "results.md", table(option, rows))
        print(table(option, rows))
    save_json(out / "results.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
