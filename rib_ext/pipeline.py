"""``python -m rib_ext.pipeline``: the WSSS pipeline, stage by stage, on VOC, COCO or the embedded demo.

With no arguments it generates the embedded demo dataset (VOC layout) and runs every stage on the
CPU in a few minutes. Outputs go to ``--out`` (default ``rib_ext_out/``), one folder per stage, each
with a provenance record (its settings and input fingerprints); the run's resolved settings are in
``config.json`` (rerun them with ``--config``), its figures in ``summary.json``. Stages skip work
already done, so a rerun resumes; a rerun with other settings stops unless ``--overwrite``.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

from rib_ext.config import PipelineConfig, plain_dict
from rib_ext.stages import options
from rib_ext.stages.registry import STAGES, parse_stages, stage_module
from rib_ext.workers import Terminated, stop_on_sigterm

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


def run(cfg: PipelineConfig, stages: List[str], overwrite: bool = False,
        take_over_lock: bool = False) -> dict:
    """Run ``stages`` with ``cfg``; returns this run's summary (merged into OUT/summary.json).
    ``take_over_lock``: take over OUT/.lock left by a process on another host."""
    from rib_ext import distributed

    cfg.validate()
    distributed.init_from_env(cfg.dist_timeout_s)
    if not logging.getLogger("rib_ext").handlers:  # called as a library (e.g. the ablation)
        setup_logging()
    try:
        return _run(cfg, stages, overwrite, take_over_lock)
    except BaseException as err:
        # Ranks waiting for this one (rib_ext.distributed.barrier) stop with its error at once.
        distributed.report_failure(f"{type(err).__name__}: {err}")
        raise


def _run(cfg: PipelineConfig, stages: List[str], overwrite: bool, take_over_lock: bool = False) -> dict:
    from rib_ext.runlock import RunLock
    from rib_ext.stages.context import RunContext

    ctx = RunContext(cfg, overwrite=overwrite)
    if cfg.cam_checkpoint and "train_cam" in stages:
        ctx.info(f"[pipeline] --cam-checkpoint {cfg.cam_checkpoint}: train_cam is skipped")
        stages = [s for s in stages if s != "train_cam"]
    # Settings that would fail a late stage stop the run before the first one spends its time.
    for stage in stages:
        check = getattr(stage_module(stage), "check", None)
        if check is not None:
            check(cfg)
    make_out_dir(ctx.out)
    lock = RunLock(ctx.out, take_over_foreign=take_over_lock).acquire() if ctx.is_main else None
    try:
        if lock is not None and lock.previous:
            ctx.info(f"[pipeline] {lock.path}: taking over from {lock.previous}, which ended "
                     f"without releasing it")
        return _run_locked(ctx, cfg, stages)
    finally:
        if lock is not None:
            lock.release()


def make_out_dir(out: Path) -> None:
    """Create --out (and its parents), or stop naming it and why it cannot be made."""
    from rib_ext.stages.context import PipelineError

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PipelineError(f"--out {out}: cannot create the output folder "
                            f"({err.strerror or err}{': ' + str(err.filename) if err.filename else ''})"
                            ) from err
    if not os.access(out, os.W_OK | os.X_OK):
        raise PipelineError(f"--out {out}: the output folder is not writable")


def _run_locked(ctx, cfg: PipelineConfig, stages: List[str]) -> dict:
    from rib_ext.io import save_json
    from rib_ext.stages.provenance import Provenance

    if cfg.dataset != "demo":  # the check below opens them (the demo: after it, as it generates)
        ctx.prepare_datasets(stages)
    # Before anything is written or generated: outputs made with other settings stop the run.
    prov = Provenance(ctx, list(STAGES))
    stages = prov.plan(stages)
    ctx.prepare_datasets(stages)
    note_other_version(ctx)
    # The output folder recorded absolute: --config OUT/config.json from any folder resumes this run.
    config = {"stages": stages, "environment": environment(ctx), **plain_dict(cfg),
              "out_dir": str(ctx.out.resolve())}
    ctx.write_json(ctx.layout.config, config)
    train_set, eval_set = ctx.train_set, ctx.eval_set
    ctx.info(f"[pipeline] dataset {cfg.dataset} ({options.describe(cfg)}): {len(train_set)} "
             f"training images, {len(eval_set)} images to map and evaluate, "
             f"{train_set.num_classes} classes; device {ctx.device}; output {ctx.out}")
    summary: dict = {}
    t_start = time.time()
    summary_path = ctx.layout.summary
    for stage in stages:
        t0 = time.time()
        prov.begin(stage)  # checks what it derives from the results made so far, then tags it
        summary[stage] = stage_module(stage).run(ctx, cfg)
        summary[stage]["stage_seconds"] = round(time.time() - t0, 1)
        if ctx.is_main:  # the one rank that writes config.json and the summary
            used = derived_settings(prov, stage)
            if used:  # config.json says what ran: the settings a stage took from another's result
                config["derived"] = {**config.get("derived", {}), stage: used}
                save_json(ctx.layout.config, config)
            # merged after every stage: earlier runs' and stages' figures stay
            save_json(summary_path, {**_read_json(summary_path), **summary,
                                     "seconds": round(time.time() - t_start, 1)})
    summary["seconds"] = round(time.time() - t_start, 1)
    if ctx.is_main:
        save_json(summary_path, {**_read_json(summary_path), **summary})
    ctx.info(f"[pipeline] done in {summary['seconds']} s; summary in {summary_path}")
    if ctx.is_main:
        ctx.info(f"[pipeline] report: {write_run_report(ctx.out, cfg)}")
    return summary


def derived_settings(prov, stage: str) -> dict:
    """Map set -> the settings ``stage`` took from another stage's result (crf's threshold,
    IRN's thresholds under --irn-auto-thresholds): what its provenance records, settings only."""
    from rib_ext.layout import MAP_SETS, PER_SET

    if stage not in PER_SET or not hasattr(stage_module(stage), "RESULTS_FROM"):
        return {}
    names = {f for _, section in options.sections() for f in section.__dataclass_fields__}
    used = {name: {k: v for k, v in prov.derived(stage, name).items() if k in names and v is not None}
            for name in MAP_SETS}
    return {name: values for name, values in used.items() if values}


def note_other_version(ctx) -> None:
    """One line when OUT's finished outputs were made by another rib_ext version: they are reused
    (their settings and inputs are what provenance checks), but the user should know."""
    import rib_ext

    made_by = (_read_json(ctx.layout.config).get("environment") or {}).get("rib_ext_version")
    ours = getattr(rib_ext, "__version__", None)
    if made_by and ours and made_by != ours:
        ctx.info(f"[pipeline] note: {ctx.out} was made by rib_ext {made_by} (this is {ours}); its "
                 f"finished outputs are reused (another --out makes them afresh)")


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
    from rib_ext.stages.options import user_error_types as types

    return types()


# What the system says when it cannot write an output: the user's to fix (space, permissions), not
# a bug, so a message naming the file rather than a traceback. Outputs are written under temporary
# names and renamed (rib_ext.io), so a rerun finds only whole files and resumes.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def os_error_message(err: OSError) -> Optional[str]:
    """The user's message for a system error writing or reading a file, or None for other errors."""
    where = err.filename if err.filename is not None else "a file"
    if err.errno in DISK_FULL:
        return (f"no space left on the device writing {where} ({err.strerror or err}); free some "
                f"space and rerun the same command to resume (finished outputs are kept)")
    if err.errno == errno.ENAMETOOLONG:
        return (f"file name too long for the file system: {where}; shorten the image ids (or the "
                f"--out path) that it is made from")
    if err.errno in NOT_WRITABLE:
        return (f"permission denied: {where} ({err.strerror or err}); choose a writable --out or "
                f"fix the permissions, then rerun the same command to resume")
    return None


INTERRUPTED = "interrupted; rerun the same command to resume"
# The shell's convention for a process ended by SIGINT (128 + 2) or SIGTERM (128 + 15); user
# errors exit with 2.
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.debug)
    from rib_ext.runtime import install_warning_format

    install_warning_format()
    try:
        try:
            cfg = options.build_config(args)
            stages = parse_stages(args.stages)
        except (ValueError, TypeError) as err:  # a bad setting, stage name or config file
            raise options.ConfigError(str(err)) from err
        if args.print_config:
            print(json.dumps({"stages": stages, **plain_dict(cfg)}, indent=2))
            return 0
        warn_overridden(args, cfg)
        with stop_on_sigterm():
            run(cfg, stages, overwrite=args.overwrite, take_over_lock=args.take_over_lock)
    except KeyboardInterrupt as err:
        if args.debug:
            raise
        print(INTERRUPTED, file=sys.stderr)
        return EXIT_TERMINATED if isinstance(err, Terminated) else EXIT_INTERRUPTED
    except user_error_types() as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        message = os_error_message(err)
        if message is None or args.debug:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


def warn_overridden(args, cfg: PipelineConfig) -> None:
    """Flags the run will not use as given, said before it starts."""
    given = options.given_fields(args)
    if cfg.irn_auto_thresholds:
        rules = {"conf_fg": ("ir_label", "best + 0.1"), "conf_bg": ("ir_label", "best - 0.1"),
                 "sem_seg_bg_thres": ("make_sem_seg", "the best")}
        for field, (stage, rule) in rules.items():
            if f"irn.{field}" in given:
                log.warning(f"warning: --irn.{field} {given[f'irn.{field}']} is not used: "
                            f"--irn-auto-thresholds (on in the {cfg.preset} preset) sets {stage}'s "
                            f"threshold from each map set's best seed threshold ({rule}; {stage} "
                            f"prints the values used); pass --irn-auto-thresholds false to use yours")


if __name__ == "__main__":
    code = main()
    from rib_ext import distributed

    if distributed.is_distributed():  # a torchrun rank: everything is written, leave at once
        distributed.leave(code)
    sys.exit(code)
