"""The pipeline's command line, generated from the config dataclasses, and the presets.

Every field of :class:`PipelineConfig` is a flag: top-level ones by name (``--dataset``, and the
run-wide ``--device``, ``--seed``, ``--num_workers``, ``--allow_missing``), stage ones as
``--<section>.<field>`` (``--rib.lr``, ``--train_cam.epochs``, ``--irn.crf.gt_prob``,
``--rib_speed.group_size``). The sections' copies of settings given elsewhere in the tree
(``PipelineConfig.MIRRORED``) have none: the earlier flags of the run-wide ones (``--rib.seed``)
stop with the flag to use, those of RIB's speed settings (``--rib.group_size``) are aliases of
the rib_speed section's. The short flags of earlier versions stay as aliases (``--rib-lr``,
``--epochs``, ``--num-workers``, ``--group-size``...); two reach several sections (``--scales``,
``--thresholds``).

A config is built in this order: the preset (``--preset demo|voc|coco``, default: the dataset's
own) gives each section its starting values, a section may follow earlier ones (IRN starts from
the classifier's backbone), then the flags given override single fields. ``--config FILE`` starts
from a saved ``config.json`` instead, with the flags given on top.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any, Dict, Optional

from rib_ext import presets
from rib_ext.config import (PIPELINE_PRESETS, ConfigError,
                             PipelineConfig, RIBSpeedConfig, from_plain)
from rib_ext.config_fields import choices_of, field_docs, field_range
from rib_ext.stages.registry import DEFAULT_STAGES, REGISTRY

PREFIX = "cfg:"
# Keys of a config.json that record the run (rib_ext.pipeline.run writes them), not settings.
RUN_RECORD_KEYS = ("stages", "environment", "derived")
# Settings chosen by a preset selector, not flags of their own.
NOT_FLAGS = {"rib.behaviour", "preset"}

# flag -> the config fields it sets (single-field aliases become extra names of the generated flag).
ALIASES: Dict[str, tuple] = {
    "--out": ("out_dir",), "--train-list": ("train_list",), "--eval-list": ("eval_list",),
    "--val-list": ("val_list",), "--saliency-dir": ("saliency_dir",),
    "--cam-checkpoint": ("cam_checkpoint",), "--irn-auto-thresholds": ("irn_auto_thresholds",),
    "--demo-seed": ("demo.seed",), "--demo-images": ("demo.num_train",),
    "--demo-val-images": ("demo.num_val",), "--demo-size": ("demo.image_size",),
    "--backbone": ("train_cam.backbone",), "--weights": ("train_cam.weights",),
    "--model": ("train_cam.model",), "--split": ("train_cam.split",),
    "--random-init": ("train_cam.random_init",), "--epochs": ("train_cam.epochs",),
    "--batch-size": ("train_cam.batch_size",), "--crop-size": ("train_cam.crop_size",),
    "--lr": ("train_cam.lr",), "--rib-steps": ("rib.steps",), "--rib-lr": ("rib.lr",),
    "--num-others": ("rib.num_others",), "--margin": ("rib.margin",), "--tau": ("rib.tau",),
    "--pooling": ("rib.pooling",), "--rib-loss": ("rib.loss",), "--group-size": ("rib_speed.group_size",),
    "--irn-epochs": ("irn.epochs",), "--segment-backbone": ("segment.backbone",),
    "--segment-weights": ("segment.weights",), "--segment-iterations": ("segment.iterations",),
    "--crf-threshold": ("crf.threshold",), "--rib.gndrp_mode": ("rib.gndrp_behaviour",),
    "--dist-timeout": ("dist_timeout_s",), "--max-pixels": ("max_pixels",),
    "--num-workers": ("num_workers",), "--allow-missing": ("allow_missing",),
    # RIB's speed settings were rib's before they had their section: --rib.group_size...
    **{f"--rib.{f.name}": (f"rib_speed.{f.name}",) for f in dataclasses.fields(RIBSpeedConfig)},
    # Several sections:
    "--scales": ("make_cam.scales", "rib.scales"),
}
ALIAS_HELP = {
    "--scales": "inference scales of make_cam and rib, 1.0 first",
}
FIELD_HELP = {
    "dataset": "the dataset: demo (generated under OUT/data, or --root), voc or coco (--root the "
               "dataset folder)",
    "device": "auto (CUDA when present), cpu, cuda, cuda:1 ... (every stage)",
    "seed": "random seed of train_cam, rib, train_irn and segment",
    "num_workers": "worker processes per rank: data loading (train_cam, make_cam, train_irn, "
                   "segment), and the CRF pool of crf and ir_label unless --cpu_workers is given",
    "allow_missing": "skip images whose inputs (maps, labels, masks) are missing, with a warning, "
                     "instead of stopping (every stage)",
}


# ------------------------------------------------------------------------------ flag generation

def _leaves(cls, prefix: str = ""):
    """(dotted path, type) of every non-dataclass field under ``cls`` that is a flag (not a copy
    of a setting given elsewhere in the tree, PipelineConfig.MIRRORED)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _leaves(hint, path + ".")
        elif path not in NOT_FLAGS and path not in PipelineConfig.MIRRORED:
            yield path, hint


def _range_help(cls, prefix: str = "") -> Dict[str, str]:
    """dotted path -> "in [0, 1]" / ">= 1": the range each numeric field states."""
    hints = typing.get_type_hints(cls)
    out: Dict[str, str] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_range_help(hints[f.name], f"{prefix}{f.name}."))
        elif field_range(f) is not None:
            out[prefix + f.name] = field_range(f).describe().replace("%", "%%")
    return out


def _doc_help(cls, prefix: str = "") -> Dict[str, str]:
    """dotted path -> the field's documentation (the comments beside it in rib_ext/config.py)."""
    hints = typing.get_type_hints(cls)
    out: Dict[str, str] = {}
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_doc_help(hints[f.name], f"{prefix}{f.name}."))
        elif f.name in docs:
            out[prefix + f.name] = docs[f.name].replace("%", "%%")
    return out


def _parse_bool(text: str) -> bool:
    low = str(text).lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _argspec(hint) -> dict:
    """argparse keywords for a field type: bools take an optional true/false, Optional[T] also
    'none', tuples several values."""
    optional = False
    if typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if typing.get_origin(hint) in (tuple, typing.Tuple):
        args = typing.get_args(hint)
        spec = {"type": _maybe_none(args[0], optional),
                "nargs": "+" if (len(args) == 2 and args[1] is Ellipsis) else len(args)}
        return spec
    if hint is bool:
        return {"type": _parse_bool, "nargs": "?", "const": True}
    if choices_of(hint) is not None:
        hint = str
    return {"type": _maybe_none(hint, optional)}


def _maybe_none(tp, optional: bool):
    if not optional:
        return tp

    def convert(text):
        return None if str(text).lower() == "none" else tp(text)
    convert.__name__ = tp.__name__
    return convert


def _shown(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return " ".join(_shown(v) for v in value)
    return "none" if value is None else str(value)


def _value(cfg, path: str):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def preset_defaults() -> Dict[str, PipelineConfig]:
    """The config a run gets with no flags but --dataset NAME, per dataset: what --help shows."""
    configs = {}
    for name in PIPELINE_PRESETS:
        configs[name] = build_config(argparse.Namespace(**{PREFIX + "dataset": name}))
    return configs


def default_help(get, configs: Dict[str, PipelineConfig]) -> str:
    """'default X' of the plain run (the demo), and the voc/coco presets' values where they
    differ; ``get``: a field's dotted path, or a function of the config giving the value shown."""
    if isinstance(get, str):
        path = get
        get = lambda cfg: _value(cfg, path)  # noqa: E731
    values = {name: get(cfg) for name, cfg in configs.items()}
    text = f"default {_shown(values['demo'])}"
    others = [f"{name}: {_shown(v)}" for name, v in values.items() if name != "demo" and v != values["demo"]]
    if values["voc"] == "voc" and values["coco"] == "coco":
        others = []  # --dataset itself
    if others:
        text += f" (--dataset {', '.join(others)})"
    return text.replace("%", "%%")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    singles: Dict[str, list] = {}  # field -> its aliases
    for flag, targets in ALIASES.items():
        if len(targets) == 1:
            singles.setdefault(targets[0], []).append(flag)
    groups: Dict[str, Any] = {}
    ranges = _range_help(PipelineConfig)
    docs = _doc_help(PipelineConfig)
    configs = preset_defaults()
    for path, hint in _leaves(PipelineConfig):
        section = path.split(".")[0] if "." in path else "run"
        if section not in groups:
            groups[section] = parser.add_argument_group(
                f"{section} settings" if section != "run" else "data and run")
        names = [f"--{path}", *singles.get(path, [])]
        choices = choices_of(hint)  # a Literal type: its values are the flag's choices
        extra = {"choices": choices} if choices else {}
        helps = [FIELD_HELP.get(path) or docs.get(path), ranges.get(path), default_help(path, configs)]
        groups[section].add_argument(
            *names, dest=PREFIX + path, default=argparse.SUPPRESS,
            metavar="{" + ",".join(choices) + "}" if choices else path.split(".")[-1].upper(),
            help="; ".join(h for h in helps if h), **_argspec(hint), **extra)
    # The flags of the sections' copies of run-wide settings, taken away: each says which to use.
    for path, source in PipelineConfig.MIRRORED.items():
        if "." not in source:
            parser.add_argument(f"--{path}", dest=f"copy:{path}", nargs="*", default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)
    multi = parser.add_argument_group("flags that reach several stages")
    hints = dict(_leaves(PipelineConfig))
    for flag, targets in ALIASES.items():
        if len(targets) > 1:
            helps = [ALIAS_HELP.get(flag), default_help(targets[0], configs)]
            multi.add_argument(flag, dest="alias:" + flag, default=argparse.SUPPRESS,
                               help="; ".join(h for h in helps if h), **_argspec(hints[targets[1]]))
    # The threshold sweep in one flag, as before.
    multi.add_argument("--thresholds", type=float, nargs=3, metavar=("START", "STOP", "STEP"),
                       default=argparse.SUPPRESS, dest="alias:--thresholds",
                       help="eval_seed's background-threshold sweep, STOP inclusive; " +
                            default_help(lambda c: (c.eval_seed.threshold_start, c.eval_seed.threshold_stop,
                                                    c.eval_seed.threshold_step), configs))


def flag_of(path: str) -> str:
    """The flag a message names for a config field: its short alias where it has one (the
    spelling of earlier versions), else the generated one."""
    return next((flag for flag, targets in ALIASES.items() if targets == (path,)), f"--{path}")


def given_fields(args: argparse.Namespace) -> Dict[str, Any]:
    """The config fields the command line sets: aliases first, then the dotted flags on top."""
    values: Dict[str, Any] = {}
    ns = vars(args)
    for key in ns:
        if key.startswith("copy:"):
            path = key[len("copy:"):]
            source = PipelineConfig.MIRRORED[path]
            raise ConfigError(f"--{path}: the {source} is one run-wide setting now, given once for "
                              f"every stage: use {flag_of(source)}")
    for key, value in ns.items():
        if key == "alias:--thresholds":
            values.update({"eval_seed.threshold_start": value[0],
                           "eval_seed.threshold_stop": value[1], "eval_seed.threshold_step": value[2]})
        elif key.startswith("alias:"):
            for path in ALIASES[key[6:]]:
                values[path] = value
    for key, value in ns.items():
        if key.startswith(PREFIX):
            values[key[len(PREFIX):]] = value
    if "train_cam.weights" in values and "train_cam.random_init" not in values:
        values["train_cam.random_init"] = values["train_cam.weights"] is None
    if "num_workers" in values and "cpu_workers" not in values:
        values["cpu_workers"] = values["num_workers"]  # --num-workers sizes the CRF pool too
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


# ----------------------------------------------------------------------------------- presets

def _section(values: Dict[str, Any], name: str) -> Dict[str, Any]:
    """The given fields of one section, nested dicts for deeper dataclasses."""
    out: Dict[str, Any] = {}
    for path, value in values.items():
        parts = path.split(".")
        if parts[0] != name or len(parts) < 2:
            continue
        node = out
        for p in parts[1:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def apply(obj, changes: Dict[str, Any], where: str = ""):
    """``obj`` with ``changes`` (nested dicts for nested dataclasses), validated again; errors
    name the section (``where``)."""
    if not changes:
        return obj
    flat = {}
    for key, value in changes.items():
        if isinstance(value, dict) and dataclasses.is_dataclass(getattr(obj, key, None)):
            value = apply(getattr(obj, key), value, f"{where}.{key}" if where else key)
        flat[key] = value
    try:
        return dataclasses.replace(obj, **flat)
    except ConfigError as err:
        raise err.within(where) from err
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)).within(where) from err


def sections(cls=PipelineConfig):
    """(name, dataclass) of every section of the config tree, in declaration order: the one list
    the command line, the presets and the config files are built from."""
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])]


def build_config(args: argparse.Namespace) -> PipelineConfig:
    """The validated config tree of a command line (see the module docstring for the order)."""
    given = given_fields(args)
    if getattr(args, "config", None):
        return _from_file(args, given)
    top = {k: v for k, v in given.items() if "." not in k}
    dataset = top.get("dataset", "demo")
    preset = top.get("preset") or ("demo" if dataset == "demo" else dataset)
    top["preset"] = preset
    numbers = "coco" if (preset == "coco" or (dataset == "coco" and preset != "voc")) else "voc"
    behaviour = {"rib": {"behaviour": getattr(args, "rib_behaviour", None) or "authors"},
                 "irn": {"behaviour": getattr(args, "irn_behaviour", None) or "rib"}}
    built: Dict[str, Any] = {}
    demo_settings: Dict[str, Dict[str, Any]] = {}
    for name, cls in sections():
        start = dict(demo_settings.get(name, {}))
        if name == "train_cam" and given.get("train_cam.model", "camnet") != "camnet":
            # The demo's classifier settings are those of its narrow CAMNet (its shipped backbone
            # above all); a torchvision / timm model keeps the epochs and rates only.
            for key in ("backbone", "weights", "random_init", "strides", "from_scratch"):
                start.pop(key, None)
        start.update(presets.follows(name, built, top, preset == "demo"))
        built[name] = apply(cls.preset(numbers, **behaviour.get(name, {}), **start),
                            _section(given, name), name)
        if name == "demo" and preset == "demo":
            # The demo's settings, with the reasons: rib_ext.presets.demo.
            demo_settings = presets.demo(built["demo"].image_size,
                                        from_scratch=bool(given.get("train_cam.from_scratch", False)))
    pipeline_defaults = dict(demo_settings.get("pipeline", {}))
    if dataset != "demo":  # the held-out split is the generated demo's; a user's folder keeps its lists
        pipeline_defaults.pop("eval_list", None)
    for key, value in pipeline_defaults.items():
        top.setdefault(key, value)
    return _resolve_lists(PipelineConfig(**top, **built))


def _from_file(args, given: Dict[str, Any]) -> PipelineConfig:
    chosen = [flag for flag, on in (("--preset", "preset" in given),
                                    ("--rib-behaviour", getattr(args, "rib_behaviour", None)),
                                    ("--irn-behaviour", getattr(args, "irn_behaviour", None))) if on]
    if chosen:
        raise ConfigError(f"{chosen[0]} starts a fresh config; with --config give single fields "
                          f"(e.g. --rib.lr) instead")
    path = Path(args.config)
    if not path.is_file():
        raise ConfigError(f"--config {path}: file not found")
    try:
        saved = json.loads(path.read_text())
    except ValueError as err:
        raise ConfigError(f"--config {path}: not JSON ({err})") from err
    if not isinstance(saved, dict):
        raise ConfigError(f"--config {path}: expected a JSON object")
    # What the pipeline writes beside the settings in its config.json (a record, not settings).
    settings = {k: v for k, v in saved.items() if k not in RUN_RECORD_KEYS}
    out = saved.get("out_dir")
    if any(k in saved for k in RUN_RECORD_KEYS) and isinstance(out, str) and \
            not Path(out).is_absolute() and Path(out).name == path.resolve().parent.name:
        # A run's config.json lives in its output folder; older ones recorded a relative --out,
        # which read from another working folder would silently start a new run elsewhere.
        settings["out_dir"] = str(path.resolve().parent)
    try:
        cfg = from_plain(PipelineConfig, settings)
    except ConfigError as err:
        raise ConfigError(f"--config {path}: {err}") from err
    changes: Dict[str, Any] = {k: v for k, v in given.items() if "." not in k}
    for section in {k.split(".")[0] for k in given if "." in k}:
        changes[section] = _section(given, section)
    return _resolve_lists(apply(cfg, changes))


def _resolve_lists(cfg: PipelineConfig) -> PipelineConfig:
    from rib_ext.stages.context import default_train_list

    if cfg.train_list is None:
        cfg = dataclasses.replace(cfg, train_list=default_train_list(cfg))
    cfg.validate()
    return cfg


def stage_flag_help(registry: Dict[str, str]) -> str:
    return "stages:\n" + "\n".join(f"  {s:12s} {h}" for s, h in registry.items())


def add_preset_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("presets and config files")
    g.add_argument("--config", metavar="FILE",
                   help="start from a saved config.json (the flags given override its fields)")
    g.add_argument("--preset", dest=PREFIX + "preset", default=argparse.SUPPRESS,
                   type=_preset_name, metavar="{demo,voc,coco}",
                   help="starting values of every stage: demo (small images, the classifier "
                        "fine-tuned from the shipped pretrained backbone, or from scratch with "
                        "--train_cam.from_scratch true; works on any small VOC-layout folder too), "
                        "voc or coco (the paper's numbers). Default: the dataset's own")
    g.add_argument("--rib-behaviour", "--rib-preset", dest="rib_behaviour", type=_rib_behaviour,
                   metavar="{authors,paper}",
                   help="RIB behaviour: authors = the authors' released code (default); paper = "
                        "the equations")
    g.add_argument("--irn-behaviour", "--irn-preset", dest="irn_behaviour", choices=("rib", "irn"),
                   help="IRN thresholds of the RIB authors (0.35/0.17, bg 0.27, map power 1.3; "
                        "default) or of IRN's own code (0.30/0.05, 0.25, 1.0)")


def _rib_behaviour(text: str) -> str:
    if text == "reference":
        raise argparse.ArgumentTypeError("the authors' behaviour is now called 'authors' "
                                         "(--rib-behaviour authors)")
    if text not in ("authors", "paper"):
        raise argparse.ArgumentTypeError(f"--rib-behaviour must be authors or paper, got {text!r}")
    return text


def _preset_name(text: str) -> str:
    if text in ("authors", "reference", "paper"):
        new = "authors" if text == "reference" else text
        raise argparse.ArgumentTypeError(f"--preset {text}: RIB's behaviour is chosen with "
                                         f"--rib-behaviour {new}")
    if text not in ("demo", "voc", "coco"):
        raise argparse.ArgumentTypeError(f"--preset must be demo, voc or coco, got {text!r}")
    return text


def describe(cfg: PipelineConfig) -> Optional[str]:
    return f"preset {cfg.preset}, train list {cfg.train_list}, eval list {cfg.eval_list or 'train'}"


# ------------------------------------------------------------------------------ the command line

DESCRIPTION = """The WSSS pipeline, stage by stage, on VOC, COCO or the embedded demo.

With no arguments it generates the embedded demo dataset (VOC layout) and runs every stage on the
CPU in a few minutes. Outputs go to --out (default rib_ext_out/), one folder per stage, each with a
provenance record (its settings and input fingerprints); the run's resolved settings are in
config.json (rerun them with --config), its figures in summary.json. Stages skip work already done,
so a rerun resumes; a rerun with other settings stops unless --overwrite.
"""


def build_parser() -> argparse.ArgumentParser:
    """``python -m rib_ext.pipeline``'s parser: the run flags, the presets, and one flag per field
    of the config tree."""
    p = argparse.ArgumentParser(
        prog="python -m rib_ext.pipeline", usage="%(prog)s [--stages S] [--preset P] [--FLAG VALUE ...]",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=stage_flag_help(REGISTRY))
    p.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                   help=f"comma-separated stages to run, in pipeline order (default: "
                        f"{','.join(DEFAULT_STAGES)}; add segment for the final network)")
    p.add_argument("--overwrite", action="store_true",
                   help="remove what the stages to run made with other settings or inputs, and "
                        "what the stages after them made of the same map set, and compute the "
                        "stages to run again (default: stop with the differences)")
    p.add_argument("--take-over-lock", action="store_true",
                   help="take over OUT/.lock left by a process on another host (default: stop, "
                        "naming it; a lock of this host's ended process is taken over anyway)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config tree (JSON, as config.json records it) and exit")
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    add_preset_flags(p)
    add_config_flags(p)
    return p


def config_from_argv(argv=None) -> PipelineConfig:
    """The validated config tree of a command line (``argv`` as ``python -m rib_ext.pipeline``
    takes it, without the program name; None: ``sys.argv[1:]``)."""
    return build_config(build_parser().parse_args(None if argv is None else list(argv)))


# ------------------------------------------------------------------ errors of every command line

def user_error_types() -> tuple:
    from rib_ext.checkpoints import CheckpointError
    from rib_ext.config import ConfigError
    from rib_ext.data import DatasetError
    from rib_ext.distributed import RankFailedError
    from rib_ext.io import UnreadableFileError
    from rib_ext.outputs import BadMapsError, MixedOutputsError
    from rib_ext.runlock import RunLockedError
    from rib_ext.stages.context import PipelineError
    from rib_ext.training import NonFiniteLossError

    return (ConfigError, DatasetError, PipelineError, CheckpointError, UnreadableFileError,
            NonFiniteLossError, RankFailedError, RunLockedError, BadMapsError, MixedOutputsError,
            FileNotFoundError, NotADirectoryError, FileExistsError)


def run_command(body: typing.Callable[[], int], debug: bool = False) -> int:
    """``body()``, its user errors printed as ``error: ...`` with exit status 2 (``debug``: raised)."""
    try:
        return body()
    except user_error_types() as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
