"""Every setting's range and type, stated once on its dataclass field and checked everywhere a
config is made: flags, config files, Python, in-place edits."""
import dataclasses
import json
import math
import re
import typing

import pytest

from rib_ext import pipeline
from rib_ext.config import (ConfigError, IRNConfig, PipelineConfig, RIBConfig, SegmentConfig,
                             from_plain, plain_dict)
from rib_ext.config_fields import Range, choices_of, field_range, is_numeric
from rib_ext.stages import options
from pipeline_runs import main


def no_run(*args, **kwargs):
    raise AssertionError("the pipeline ran: the setting was accepted")


def leaves(cls=PipelineConfig, prefix=""):
    """(dotted path, field, type) of every non-dataclass field of the config tree but the
    sections' copies of settings given elsewhere in it (PipelineConfig.MIRRORED: see
    test_a_copys_value_in_an_old_config_file_is_checked_as_the_sections)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaves(hints[f.name], f"{prefix}{f.name}.")
        elif f"{prefix}{f.name}" not in PipelineConfig.MIRRORED:
            yield f"{prefix}{f.name}", f, hints[f.name]


def nested(path, value):
    """{"a": {"b": value}} for "a.b"."""
    *sections, name = path.split(".")
    out = {name: value}
    for s in reversed(sections):
        out = {s: out}
    return out


def element_type(hint):
    """The number type a numeric field holds (inside Optional / Tuple)."""
    for a in typing.get_args(hint) or (hint,):
        if a in (int, float):
            return a
        if typing.get_args(a):
            return element_type(a)
    return hint


def bad_numbers(rng: Range, kind) -> list:
    """Values just outside ``rng`` (and, for floats, the non-finite ones)."""
    out = []
    if math.isfinite(rng.lo):
        out.append(kind(rng.lo) if rng.lo_open else kind(rng.lo) - 1)
    if math.isfinite(rng.hi):
        out.append(kind(rng.hi) if rng.hi_open else kind(rng.hi) + 1)
    if kind is float:
        out += [math.inf, -math.inf, math.nan]
    return out


def as_field(hint, number, default):
    """``number`` in the shape of the field: every element of a tuple field."""
    inner = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is typing.Union else [hint]
    if typing.get_origin(inner[0]) is tuple:
        return tuple(number for _ in (default or (0, 0)))
    return number


NUMERIC = [(p, f, h) for p, f, h in leaves() if is_numeric(h)]


def test_every_numeric_setting_states_its_range():
    assert len(NUMERIC) > 80  # the walk reaches every section (irn.crf and segment.crf too)
    missing = [p for p, f, _ in NUMERIC if field_range(f) is None]
    assert not missing, f"numeric settings without a range: {missing}"
    # Each default lies in its own range.
    cfg = plain_dict(PipelineConfig())
    for path, f, _ in NUMERIC:
        value = cfg
        for part in path.split("."):
            value = value[part]
        values = value if isinstance(value, list) else [value]
        assert all(v is None or v in field_range(f) for v in values), path


@pytest.mark.parametrize("path, f, hint", NUMERIC, ids=[p for p, _, _ in NUMERIC])
def test_every_out_of_range_or_non_finite_value_is_refused(path, f, hint):
    default = PipelineConfig()
    for part in path.split("."):
        default = getattr(default, part)
    for number in bad_numbers(field_range(f), element_type(hint)):
        value = as_field(hint, number, default)
        # Through the flags' path (apply), the config file's (from_plain), and an in-place edit.
        with pytest.raises(ConfigError, match=rf"^{re.escape(path)} must be (finite|{re.escape(field_range(f).describe())})"):
            options.apply(PipelineConfig(), nested(path, value))
        with pytest.raises(ConfigError, match=rf"^{re.escape(path)} must be "):
            from_plain(PipelineConfig, nested(path, value))
        cfg = PipelineConfig()
        *sections, name = path.split(".")
        obj = cfg
        for s in sections:
            obj = getattr(obj, s)
        setattr(obj, name, value)
        with pytest.raises(ConfigError, match=rf"^{re.escape(path)} must be "):
            cfg.validate()


# Values out of range given as flags: each of these once ran to the end (or to a traceback).
@pytest.mark.parametrize("flags, message", [
    (["--irn.sem_seg_bg_thres", "3"], "irn.sem_seg_bg_thres must be in [0, 1], got 3.0"),
    (["--irn.conf_fg", "1.5"], "irn.conf_fg must be in [0, 1], got 1.5"),
    (["--irn.conf_fg", "nan"], "irn.conf_fg must be finite, got nan"),
    (["--irn.saliency_threshold", "256"], "irn.saliency_threshold must be in [0, 255], got 256"),
    (["--irn.beta", "-1"], "irn.beta must be > 0, got -1.0"),
    (["--segment.lr", "-1"], "segment.lr must be > 0, got -1.0"),
    (["--visualize.count", "-1"], "visualize.count must be >= 1, got -1"),
    (["--lr", "inf"], "train_cam.lr must be finite, got inf"),
    (["--irn.lr", "-1"], "irn.lr must be > 0, got -1.0"),
    (["--seed", "-1"], "seed must be in [0, 4294967295], got -1"),
    (["--rib.scales", "1.0", "-0.5"], "rib.scales must be > 0 (each value), got (1.0, -0.5)"),
])
def test_listed_out_of_range_flags_stop_before_any_stage(tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.setattr(pipeline, "run", no_run)
    out = tmp_path / "run"
    assert main(["--out", str(out)] + flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_saliency_threshold_is_on_the_png_scale():
    """saliency_threshold counts in the saliency PNGs' 0..255, so 2 (nearly everything salient) is
    a setting, not a mistake; the flag's help says the scale and the range."""
    assert options.apply(PipelineConfig(), {"irn": {"saliency_threshold": 2}}).irn.saliency_threshold == 2
    help_text = pipeline.build_parser().format_help()
    assert "[0, 255]" in help_text


# ---------------------------------------------------------------- typed loading of config files

@pytest.mark.parametrize("saved, message", [
    ({"rib": None}, "rib: expected a mapping of RIBConfig settings, got null"),
    ({"train_cam": {"epochs": 2.5}}, "train_cam.epochs: expected an integer, got 2.5"),
    ({"rib": {"steps": "3"}}, 'rib.steps: expected an integer, got "3"'),
    ({"train_cam": {"authors_momentum": "false"}},
     'train_cam.authors_momentum: expected true or false, got "false"'),
    ({"rib": {"steps": True}}, "rib.steps: expected an integer, got true"),
    ({"rib": {"scales": [1.0, "a"]}}, 'rib.scales: expected a number, got "a"'),
    ({"train_cam": {"resize_long": [320]}}, "train_cam.resize_long: expected a list of 2 values"),
    ({"eval_lst": "val.txt"}, "eval_lst: unknown setting; did you mean eval_list?"),
    ({"rib": {"margn": 5.0}}, "rib.margn: unknown setting; did you mean margin?"),
    ({"irn": {"crf": {"iteratons": 3}}}, "irn.crf.iteratons: unknown setting; did you mean iterations?"),
    ({"zzz": 1}, "zzz: unknown setting"),
    ({"irn": {"sem_seg_bg_thres": 3}}, "irn.sem_seg_bg_thres must be in [0, 1], got 3"),
    ({"dataset": 5}, "dataset: expected one of demo, voc, coco, got 5"),
    ({"make_cam": {"precision": "fp16"}}, 'make_cam.precision must be one of float32, tf32, bf16, got "fp16"'),
])
def test_config_file_values_are_typed_and_names_known(tmp_path, capsys, monkeypatch, saved, message):
    monkeypatch.setattr(pipeline, "run", no_run)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    out = tmp_path / "run"
    assert main(["--out", str(out), "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --config {path}: ") and message in err and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("path", sorted(PipelineConfig.MIRRORED))
def test_a_copys_value_in_an_old_config_file_is_checked_as_the_sections(path):
    """A copy of a run-wide setting inside a section, as earlier versions wrote config.json, is
    read with its section field's type and range, and an error names the key the file holds."""
    section, name = path.split(".")
    hint = typing.get_type_hints(type(getattr(PipelineConfig(), section)))[name]
    with pytest.raises(ConfigError, match=rf"^{re.escape(path)}: expected "):
        from_plain(PipelineConfig, nested(path, _wrong_type(hint)))
    f = next(f for f in dataclasses.fields(getattr(PipelineConfig(), section)) if f.name == name)
    if field_range(f) is not None:
        with pytest.raises(ConfigError, match=rf"^{re.escape(path)} must be "):
            from_plain(PipelineConfig, nested(path, -1))


def _wrong_type(hint):
    optional = typing.get_origin(hint) is typing.Union
    inner = [a for a in typing.get_args(hint) if a is not type(None)][0] if optional else hint
    if typing.get_origin(inner) is tuple:
        return "x"
    if choices_of(inner):
        return 5
    return {bool: "false", int: 2.5, float: "1", str: 5}[inner]


@pytest.mark.parametrize("path, hint", [(p, h) for p, _, h in leaves()], ids=[p for p, _, _ in leaves()])
def test_every_setting_refuses_a_value_of_another_type_in_a_file(path, hint):
    with pytest.raises(ConfigError, match=rf"^{re.escape(path)}: expected "):
        from_plain(PipelineConfig, nested(path, _wrong_type(hint)))


def test_config_file_numbers_take_their_fields_type_and_run_records_are_accepted(tmp_path):
    cfg = from_plain(PipelineConfig, {"rib": {"margin": 600, "scales": [1, 0.5]}})
    assert cfg.rib.margin == 600.0 and isinstance(cfg.rib.margin, float)
    assert cfg.rib.scales == (1.0, 0.5) and all(isinstance(s, float) for s in cfg.rib.scales)
    # The pipeline's own config.json holds a record of the run beside the settings.
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"stages": ["rib"], "environment": {"torch": "x"},
                                **plain_dict(PipelineConfig())}))
    args = pipeline.build_parser().parse_args(["--config", str(path)])
    assert options.build_config(args).rib == RIBConfig()


def test_python_construction_is_checked_too():
    with pytest.raises(ConfigError, match="^steps: expected an integer, got 2.5"):
        RIBConfig(steps=2.5)
    with pytest.raises(ConfigError, match='^authors_momentum: expected true or false, got "false"'):
        RIBConfig(authors_momentum="false")
    assert RIBConfig(scales=[1.0, 0.5]).scales == (1.0, 0.5)


def test_toy_settings_state_their_ranges_too(capsys):
    from rib_ext.toy.__main__ import config_from_args, parse_args
    from rib_ext.toy.config import ToyConfig

    for f in dataclasses.fields(ToyConfig):
        if is_numeric(typing.get_type_hints(ToyConfig)[f.name]):
            assert field_range(f) is not None, f.name
    with pytest.raises(ConfigError, match=r"^rib_lr must be finite, got inf"):
        ToyConfig(rib_lr=math.inf)
    with pytest.raises(ConfigError, match=r"^rib_grid must be > 0 \(each value\)"):
        ToyConfig(rib_grid=((1e-3, -5.0),))
    with pytest.raises(SystemExit) as info:
        config_from_args(parse_args(["--rib-batch", "0"]))
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("error: rib_batch must be >= 1, got 0")


@pytest.mark.parametrize("make", [
    lambda: RIBConfig.preset(behaviour="other"),
    lambda: IRNConfig.preset(behaviour="other"),
    lambda: IRNConfig(conf_bg=0.5, conf_fg=0.3),
    lambda: IRNConfig(crop_size=510),
    lambda: SegmentConfig.preset("cityscapes"),
    lambda: SegmentConfig(retrain_bg=0.9, retrain_fg=0.1),
    lambda: SegmentConfig(scales=()),
], ids=["rib_preset", "irn_preset", "irn_thresholds", "irn_crop", "segment_preset",
        "segment_retrain", "segment_scales"])
def test_every_section_breaks_its_rules_with_the_one_error_type(make):
    # One type for every rule of every section, so that a caller (the CLI, a config file loader)
    # catches one thing; it is a ValueError, as it always was.
    with pytest.raises(ConfigError) as info:
        make()
    assert isinstance(info.value, ValueError)


def _text_choices():
    """(dotted path, values) of every text setting whose type is a Literal."""
    return [(path, choices_of(hint)) for path, _, hint in leaves() if choices_of(hint)]


def test_text_settings_with_fixed_values_state_them_in_their_type():
    found = dict(_text_choices())
    # The settings a researcher picks among (the authors'/paper's behaviour, the ablation's
    # losses, the numerics) are all typed, so that neither the flags nor a file can miss one.
    for path in ["dataset", "train_cam.backbone", "rib.behaviour", "rib.gndrp_behaviour",
                 "rib.pooling", "rib.loss", "rib_speed.precision", "rib_speed.prefetch", "rib_speed.head_batching",
                 "make_cam.precision", "irn.backbone", "segment.backbone"]:
        assert path in found, path


@pytest.mark.parametrize("path,values", _text_choices())
def test_a_text_setting_accepts_its_values_and_refuses_others_everywhere(path, values, tmp_path,
                                                                          capsys, monkeypatch):
    parser = pipeline.build_parser()
    flags = [a for a in parser._actions if f"--{path}" in a.option_strings]
    for flag in flags:  # none for a setting a preset flag sets (rib.behaviour: --rib-behaviour)
        # The flag offers the type's values (--preset checks its own, and says them in its metavar).
        offered = flag.choices or flag.metavar.strip("{}").split(",")
        assert tuple(v for v in offered if v is not None) == values
    section, _, name = path.rpartition(".")
    plain = plain_dict(PipelineConfig())
    node = plain[section] if section else plain
    node[name] = values[-1]
    assert from_plain(PipelineConfig, plain) is not None  # each value is accepted...
    node[name] = "not_" + values[0]
    with pytest.raises(ConfigError, match=rf"{re.escape(path)} must be one of "):
        from_plain(PipelineConfig, plain)  # ...and a file's other value refused, naming the field
