"""``python -m rib_ext.pipeline``: the WSSS pipeline, stage by stage, on VOC, COCO or the embedded demo.

With no arguments it generates the embedded demo dataset (VOC layout) and runs every stage on the
CPU in a few minutes. Outputs go to ``--out`` (default ``rib_ext_out/``), one folder per stage, each
with a provenance record (its settings and input fingerprints); the run's resolved settings are in
``config.json`` (rerun them with ``--config``), its figures in ``summary.json``. Stages skip work
already done, so a rerun resumes; a rerun with other settings stops unless ``--overwrite``.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import List

from rib_ext.config import PipelineConfig, plain_dict
from rib_ext.stages import options
from rib_ext.stages.registry import STAGES, parse_stages, stage_module

# The stage list and the command line live in rib_ext.stages (registry, options); this module runs them.
build_parser = options.build_parser
config_from_argv = options.config_from_argv

log = logging.getLogger("rib_ext")


def environment(ctx) -> dict:
    """What the run actually used besides its settings."""
    import subprocess

    import torch

    import rib_ext
    from rib_ext import distributed, ops

    env = {"rib_ext_version": getattr(rib_ext, "__version__", None), "torch": torch.__version__,
           "device": str(ctx.device), "world_size": distributed.world_size(),
           "python": sys.version.split()[0]}
    try:
        env["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(rib_ext.__file__).parent, capture_output=True,
            text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    try:
        env["operator_backends"] = ops.backends()
    except Exception as err:  # reporting must never stop a run
        env["operator_backends"] = f"unavailable ({type(err).__name__}: {err})"
    return env


def run(cfg: PipelineConfig, stages: List[str], overwrite: bool = False) -> dict:
    """Run ``stages`` with ``cfg``; returns this run's summary (merged into OUT/summary.json)."""
    from rib_ext import distributed
    from rib_ext.io import save_json
    from rib_ext.stages.context import RunContext
    from rib_ext.stages.provenance import Provenance

    distributed.init_from_env()
    if not logging.getLogger("rib_ext").handlers:  # called as a library (e.g. the ablation)
        setup_logging()
    cfg.validate()
    ctx = RunContext(cfg, overwrite=overwrite)
    if cfg.cam_checkpoint and "train_cam" in stages:
        ctx.info(f"[pipeline] --cam-checkpoint {cfg.cam_checkpoint}: train_cam is skipped")
        stages = [s for s in stages if s != "train_cam"]
    # Before anything is written or generated: outputs made with other settings stop the run.
    prov = Provenance(ctx, list(STAGES))
    stages = prov.plan(stages)
    ctx.out.mkdir(parents=True, exist_ok=True)
    ctx.write_json(ctx.out / "config.json", {"stages": stages, "environment": environment(ctx),
                                             **plain_dict(cfg)})
    train_set, eval_set = ctx.train_set, ctx.eval_set
    ctx.info(f"[pipeline] dataset {cfg.dataset} ({options.describe(cfg)}): {len(train_set)} "
             f"training images, {len(eval_set)} images to map and evaluate, "
             f"{train_set.num_classes} classes; device {ctx.device}; output {ctx.out}")
    summary: dict = {}
    t_start = time.time()
    summary_path = ctx.out / "summary.json"
    for stage in stages:
        t0 = time.time()
        prov.write(stage)
        summary[stage] = stage_module(stage).run(ctx, cfg)
        summary[stage]["stage_seconds"] = round(time.time() - t0, 1)
        if ctx.is_main:  # merged after every stage: earlier runs' and stages' figures stay
            save_json(summary_path, {**_read_json(summary_path), **summary,
                                     "seconds": round(time.time() - t_start, 1)})
    summary["seconds"] = round(time.time() - t_start, 1)
    if ctx.is_main:
        save_json(summary_path, {**_read_json(summary_path), **summary})
    ctx.info(f"[pipeline] done in {summary['seconds']} s; summary in {summary_path}")
    if ctx.is_main:
        ctx.info(f"[pipeline] report: {write_run_report(ctx.out, cfg)}")
    return summary


def write_run_report(out: Path, cfg: PipelineConfig) -> Path:
    """OUT/report.md from everything the folder holds (every run's stages, merged)."""
    from rib_ext.report import preset_of_run, write_report

    return write_report(out, preset=preset_of_run(out), used=plain_dict(cfg))


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def setup_logging(debug: bool = False) -> None:
    """Messages to stdout (rank 0 only; other ranks print warnings), one handler per call."""
    from rib_ext import distributed

    logger = logging.getLogger("rib_ext")
    for h in list(logger.handlers):
        if getattr(h, "_rib_ext", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout)
    handler._rib_ext = True
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG if debug else logging.INFO if distributed.rank() == 0 else logging.WARNING)


def user_error_types() -> tuple:
    from rib_ext.config import ConfigError
    from rib_ext.data import DatasetError
    from rib_ext.stages.context import PipelineError

    from rib_ext.checkpoints import CheckpointError
    from rib_ext.io import UnreadableFileError
    from rib_ext.training import NonFiniteLossError

    return (ConfigError, DatasetError, PipelineError, CheckpointError, UnreadableFileError,
            NonFiniteLossError, FileNotFoundError, NotADirectoryError, FileExistsError)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.debug)
    try:
        try:
            cfg = options.build_config(args)
            stages = parse_stages(args.stages)
        except (ValueError, TypeError) as err:  # a bad setting, stage name or config file
            raise options.ConfigError(str(err)) from err
        if args.print_config:
            print(json.dumps({"stages": stages, **plain_dict(cfg)}, indent=2))
            return 0
        run(cfg, stages, overwrite=args.overwrite)
    except user_error_types() as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
