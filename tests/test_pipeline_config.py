"""The pipeline's config tree and command line: validation before any stage runs, generated flags
and their aliases, presets, flags reaching every stage, user errors as `error:` + status 2."""
import dataclasses
import json
import logging
import re
import typing

import pytest

from rib_ext import pipeline
from rib_ext.config import (ConfigError, PipelineConfig, RIBConfig, RIBSpeedConfig, TrainCamConfig,
                             from_plain, plain_dict)
from rib_ext.presets import demo as demo_preset
from pipeline_runs import main


def config(argv):
    return pipeline.config_from_argv(argv)


# Each of these ran (exit 0) or failed late, after training, before the config was validated.
@pytest.mark.parametrize("flags, message", [
    (["--tau", "1.5"], "rib.tau must be in (0, 1], got 1.5"),
    (["--tau", "-0.5"], "rib.tau must be in (0, 1]"),
    (["--rib-lr", "-1"], "lr must be > 0"),
    (["--margin", "-1"], "margin must be > 0"),
    (["--crf-threshold", "2"], "crf.threshold must be in [0, 1], got 2.0"),
    (["--rib-steps", "0"], "steps must be >= 1"),
    (["--num-others", "0"], "num_others must be >= 1"),
    (["--scales", "0.5", "1.0"], "must start with 1.0"),
    (["--epochs", "0"], "train_cam.epochs must be >= 1, got 0"),
    (["--thresholds", "0.5", "0.2", "0.1"], "above threshold_stop"),
    (["--irn.conf_fg", "0.01"], "conf_bg <= conf_fg"),
])
def test_out_of_range_settings_stop_before_any_stage(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["--out", str(out)] + flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not out.exists()


def test_dataclasses_validate_on_construction_and_in_the_tree():
    with pytest.raises(ConfigError, match="tau"):
        RIBConfig(tau=0.0)
    cfg = PipelineConfig()
    cfg.train_cam.epochs = 0  # an in-place edit skips __post_init__; the tree check finds it
    with pytest.raises(ConfigError, match="epochs"):
        cfg.validate()
    with pytest.raises(ConfigError, match="resize_long"):
        TrainCamConfig(resize_long=(640, 320))


def test_generated_flags_and_aliases_set_the_same_fields():
    a = config(["--rib.lr", "0.001", "--train_cam.epochs", "3", "--irn.crf.gt_prob", "0.6",
                "--rib.stop_on_margin", "false", "--make_cam.scales", "1.0", "0.5"])
    b = config(["--rib-lr", "0.001", "--epochs", "3", "--irn.crf.gt_prob", "0.6",
                "--rib.stop_on_margin", "no", "--make_cam.scales", "1.0", "0.5"])
    assert a == b
    assert a.rib.lr == 0.001 and a.train_cam.epochs == 3 and a.irn.crf.gt_prob == 0.6
    assert a.rib.stop_on_margin is False and a.make_cam.scales == (1.0, 0.5)
    # A dotted flag wins over a multi-stage alias.
    c = config(["--scales", "1.0", "0.5", "--rib.scales", "1.0", "2.0"])
    assert c.make_cam.scales == (1.0, 0.5) and c.rib.scales == (1.0, 2.0)


RUN_VALUES = {"device": "cpu", "seed": 7, "num_workers": 2, "allow_missing": True}


@pytest.mark.parametrize("flags", [
    ["--allow-missing", "--num-workers", "2", "--seed", "7", "--device", "cpu"],
    ["--allow_missing", "true", "--num_workers", "2", "--seed", "7", "--device", "cpu"],
])
def test_run_wide_flags_set_one_field_that_every_section_copies(flags):
    from rib_ext.config import RUN_WIDE

    cfg = config(flags)
    assert set(RUN_WIDE) == set(RUN_VALUES)
    for name, sections in RUN_WIDE.items():
        assert getattr(cfg, name) == RUN_VALUES[name], name
        for section in sections:
            assert getattr(getattr(cfg, section), name) == RUN_VALUES[name], (section, name)
    assert (cfg.train_cam.seed, cfg.rib.seed, cfg.irn.seed, cfg.segment.seed) == (7, 7, 7, 7)
    assert cfg.make_cam.num_workers == 2 and cfg.rib.device == "cpu" and cfg.segment.allow_missing
    # --num-workers also sizes the CRF pool, as it always did, unless that is given on its own.
    assert cfg.cpu_workers == 2
    assert config(["--num-workers", "2", "--cpu_workers", "3"]).cpu_workers == 3
    assert config([]).cpu_workers is None


def test_every_section_field_of_a_run_wide_setting_is_a_copy():
    """A section that gains a field of a run-wide setting (its own device, say) is declared a copy
    in RUN_WIDE, or it would be a second flag setting it for that stage alone."""
    from rib_ext.config import RUN_WIDE
    from rib_ext.stages.options import sections

    for section, cls in sections():
        for f in dataclasses.fields(cls):
            if f.name in RUN_WIDE and (section, f.name) != ("demo", "seed"):  # the generator's own
                assert f"{section}.{f.name}" in PipelineConfig.MIRRORED, (section, f.name)


def test_the_copies_follow_the_run_value_when_it_changes():
    cfg = config([])
    other = dataclasses.replace(cfg, device="cpu", seed=4)
    assert other.rib.device == "cpu" and other.irn.seed == 4 and other.segment.device == "cpu"
    assert cfg.rib.device == "auto" and cfg.irn.seed == 0  # the first tree keeps its sections
    cfg.num_workers = 3  # an in-place edit: copied when the tree is validated
    cfg.validate()
    assert cfg.train_cam.num_workers == 3 and cfg.irn.num_workers == 3
    with pytest.raises(ConfigError, match=r"^seed must be in \[0, 4294967295\], got -1"):
        dataclasses.replace(cfg, seed=-1)  # named where it is set, not in a section


RUN_WIDE_COPIES = sorted(p for p, source in PipelineConfig.MIRRORED.items() if "." not in source)


@pytest.mark.parametrize("path", RUN_WIDE_COPIES)
def test_a_sections_own_flag_for_a_run_wide_setting_says_which_to_use(path, capsys, tmp_path):
    name = path.split(".")[1]
    use = {"device": "--device", "seed": "--seed", "num_workers": "--num-workers",
           "allow_missing": "--allow-missing"}[name]
    value = {"device": ["cpu"], "seed": ["5"], "num_workers": ["2"], "allow_missing": []}[name]
    out = tmp_path / "run"
    assert main(["--out", str(out), f"--{path}", *value, "--tau", "0.3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --{path}: the {name} is one run-wide setting now") and \
        err.rstrip().endswith(f"use {use}"), err
    assert "unrecognized" not in err and not out.exists()
    with pytest.raises(ConfigError, match="one run-wide setting now"):
        config([f"--{path}", *value])


def test_help_lists_the_run_wide_settings_in_the_run_group_once():
    parser = pipeline.build_parser()
    groups = {g.title: [o for a in g._group_actions for o in a.option_strings] for g in parser._action_groups}
    for flag in ("--device", "--seed", "--num_workers", "--num-workers", "--allow_missing", "--allow-missing"):
        assert flag in groups["data and run"], flag
        assert sum(flag in flags for flags in groups.values()) == 1, flag
    text = parser.format_help()
    assert "--rib.seed" not in text and "--train_cam.device" not in text and "--irn.num_workers" not in text


def test_config_json_holds_the_run_wide_settings_once_at_the_top(tmp_path, capsys):
    assert main(["--seed", "7", "--device", "cpu", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["seed"], printed["device"], printed["num_workers"], printed["allow_missing"]) == \
        (7, "cpu", 0, False)
    for path in PipelineConfig.MIRRORED:
        section, name = path.split(".")
        assert name not in printed[section], path
    assert printed["demo"]["seed"] == 0  # the demo generator's seed is a setting of its own
    # A run's config.json (here of no stage) has the same layout.
    out = tmp_path / "run"
    cfg = config(["--out", str(out), "--seed", "7", "--device", "cpu", "--demo-images", "4",
                  "--demo-val-images", "2", "--demo-size", "48"])
    pipeline.run(cfg, [])
    saved = json.loads((out / "config.json").read_text())
    assert {k: saved[k] for k in RUN_VALUES} == {**RUN_VALUES, "num_workers": 0, "allow_missing": False}
    assert not [p for p in PipelineConfig.MIRRORED if p.split(".")[1] in saved[p.split(".")[0]]]


def _old_layout(cfg):
    """``cfg``'s config.json as versions before the run section wrote it: every section with its
    copy of the run-wide settings, no seed or num_workers at the top."""
    saved = plain_dict(cfg)
    for path in RUN_WIDE_COPIES:
        section, name = path.split(".")
        saved[section][name] = saved[name]
    del saved["seed"], saved["num_workers"]
    return saved


def test_an_old_config_file_with_the_copies_in_the_sections_still_loads(tmp_path):
    cfg = config(["--seed", "7", "--device", "cpu", "--num-workers", "2", "--allow-missing"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"stages": ["rib"], "environment": {}, **_old_layout(cfg)}))
    assert config(["--config", str(path)]) == cfg
    assert config(["--config", str(path), "--seed", "3"]).rib.seed == 3


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["rib"].update(seed=5),
     "rib.seed 5 differs from train_cam.seed 7: the seed is one run-wide setting now"),
    (lambda s: s["segment"].update(num_workers=1),
     "segment.num_workers 1 differs from train_cam.num_workers 2: the num_workers is one run-wide"),
    (lambda s: s["irn"].update(device="cuda"),
     'irn.device "cuda" differs from device "cpu": the device is one run-wide setting now'),
    (lambda s: s.update(seed=8),
     "train_cam.seed 7 differs from seed 8: the seed is one run-wide setting now"),
])
def test_an_old_config_file_whose_copies_differ_is_refused_naming_them(tmp_path, capsys, edit, message):
    saved = _old_layout(config(["--seed", "7", "--device", "cpu", "--num-workers", "2"]))
    edit(saved)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=re.escape(message)):
        config(["--config", str(path)])
    assert main(["--config", str(path)]) == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------- RIB's speed settings, a section

SPEED_FIELDS = [f.name for f in dataclasses.fields(RIBSpeedConfig)]
# A value other than the default, as a flag spells it and as the field holds it.
SPEED_VALUES = {"group_size": ("3", 3), "head_batching": ("vmap", "vmap"), "precision": ("bf16", "bf16"),
                "channels_last": ("true", True), "cudnn_benchmark": ("true", True),
                "fold_stem": ("true", True), "foreach_update": ("false", False),
                "group_memory_gb": ("2.5", 2.5), "image_cache_mb": ("100", 100),
                "prefetch": ("off", "off"), "cuda_graphs": ("true", True), "cuda_graph_targets": ("true", True)}


def test_ribs_fields_of_the_speed_settings_are_the_sections():
    """RIBConfig keeps the speed settings for its Python API, with the section's types, defaults
    and ranges; the list of the speed settings is the section's."""
    assert set(SPEED_VALUES) == set(SPEED_FIELDS)
    rib = {f.name: f for f in dataclasses.fields(RIBConfig)}
    hints, rib_hints = typing.get_type_hints(RIBSpeedConfig), typing.get_type_hints(RIBConfig)
    for f in dataclasses.fields(RIBSpeedConfig):
        assert rib_hints[f.name] == hints[f.name], f.name
        assert (rib[f.name].default, rib[f.name].metadata) == (f.default, f.metadata), f.name
        assert PipelineConfig.MIRRORED[f"rib.{f.name}"] == f"rib_speed.{f.name}"
    assert RIBConfig(group_size=4, precision="bf16").group_size == 4  # the Python API, as before


@pytest.mark.parametrize("name", SPEED_FIELDS)
def test_a_speed_flag_its_earlier_spelling_and_alias_set_the_section_that_rib_copies(name):
    flag_value, value = SPEED_VALUES[name]
    needs = ["--rib_speed.cuda_graphs", "true"] if name == "cuda_graph_targets" else []
    spellings = [f"--rib_speed.{name}", f"--rib.{name}"] + (["--group-size"] if name == "group_size" else [])
    for flag in spellings:
        cfg = config([flag, flag_value] + needs)
        assert getattr(cfg.rib_speed, name) == value and getattr(cfg.rib, name) == value, flag
        assert cfg == config([f"--rib_speed.{name}", flag_value] + needs)
    parser = pipeline.build_parser()
    action = next(a for a in parser._actions if f"--rib_speed.{name}" in a.option_strings)
    assert set(spellings) <= set(action.option_strings)
    group = next(g for g in parser._action_groups if action in g._group_actions)
    assert group.title == "rib_speed settings"


def test_config_json_holds_the_speed_settings_in_their_section_only():
    cfg = config(["--group-size", "3", "--rib_speed.precision", "bf16"])
    saved = plain_dict(cfg)
    assert saved["rib_speed"]["group_size"] == 3 and saved["rib_speed"]["precision"] == "bf16"
    assert set(saved["rib_speed"]) == set(SPEED_FIELDS)
    assert not set(SPEED_FIELDS) & set(saved["rib"])
    assert from_plain(PipelineConfig, saved) == cfg


def _speed_in_rib(saved):
    """A config.json as versions before the rib_speed section wrote it."""
    saved["rib"].update(saved.pop("rib_speed"))
    return saved


def test_an_old_config_file_with_the_speed_settings_under_rib_still_loads(tmp_path):
    cfg = config(["--group-size", "3", "--rib_speed.precision", "bf16", "--rib_speed.prefetch", "off"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"stages": ["rib"], **_speed_in_rib(_old_layout(cfg))}))
    assert config(["--config", str(path)]) == cfg
    assert config(["--config", str(path), "--group-size", "2"]).rib.group_size == 2


def test_an_old_speed_setting_that_differs_from_the_sections_is_refused_naming_both(tmp_path):
    saved = _speed_in_rib(plain_dict(config(["--group-size", "3"])))
    saved["rib_speed"] = {"group_size": 2}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    message = "rib.group_size 3 differs from rib_speed.group_size 2: group_size is a setting of the rib_speed section now"
    with pytest.raises(ConfigError, match=re.escape(message)):
        config(["--config", str(path)])
    saved["rib_speed"] = {"group_size": 3}  # given in both places, the same: taken
    path.write_text(json.dumps(saved))
    assert config(["--config", str(path)]).rib.group_size == 3


def test_the_speed_settings_are_checked_and_named_in_their_section():
    with pytest.raises(ConfigError, match=r"^rib_speed\.group_size must be >= 0, got -1"):
        config(["--group-size", "-1"])
    with pytest.raises(ConfigError, match=r"^rib_speed: cuda_graph_targets .* needs cuda_graphs on"):
        config(["--rib.cuda_graph_targets", "true"])
    with pytest.raises(ConfigError, match=r"^rib_speed\.image_cache_mb: expected an integer"):
        from_plain(PipelineConfig, {"rib_speed": {"image_cache_mb": 1.5}})


def test_what_the_rib_stage_records_leaves_the_speed_settings_out_but_precision():
    """rib's provenance record is its section without the speed settings (SPEED_ONLY, the
    rib_speed section's fields but precision), as it was when they were RIBConfig's alone: a
    speed setting changed never makes the maps stale, a precision does."""
    from rib_ext.stages import rib
    from rib_ext.stages.common import result_settings

    assert set(rib.SPEED_ONLY) == set(SPEED_FIELDS) - {"precision"}
    base = config([])
    recorded = rib.settings(base)
    assert recorded == result_settings(base.rib, drop=rib.SPEED_ONLY) and recorded["precision"] == "float32"
    assert not set(rib.SPEED_ONLY) & set(recorded)
    for name in rib.SPEED_ONLY:
        needs = ["--rib_speed.cuda_graphs", "true"] if name == "cuda_graph_targets" else []
        assert rib.settings(config([f"--rib_speed.{name}", SPEED_VALUES[name][0]] + needs)) == recorded, name
    assert rib.settings(config(["--rib_speed.precision", "bf16"]))["precision"] == "bf16"


def test_stage_records_keep_the_run_wide_settings_where_they_were():
    """Provenance fingerprints each stage's section as a dict; the sections keep their copies, so
    a stage records what it did before the run section (the seed where its outputs depend on it;
    never the device, the workers or the missing-file policy) and a folder made then is not taken
    for one of other settings."""
    from rib_ext.stages.common import result_settings
    from rib_ext.stages.registry import STAGES, stage_module

    cfg = config(["--seed", "7", "--device", "cpu", "--num-workers", "2", "--allow-missing"])
    recorded = {stage: stage_module(stage).settings(cfg) for stage in STAGES}
    assert {s for s, r in recorded.items() if "seed" in r} == {"train_cam", "rib", "train_irn", "segment"}
    assert all(r["seed"] == 7 for r in recorded.values() if "seed" in r)
    assert not [s for s, r in recorded.items() if {"device", "num_workers", "allow_missing"} & set(r)]
    for stage, section in (("train_cam", cfg.train_cam), ("segment", cfg.segment)):
        assert recorded[stage] == result_settings(section) and len(recorded[stage]) == \
            len(plain_dict(section)) - len({"device", "num_workers", "allow_missing", "checkpoint_every",
                                            "tensorboard"} & set(plain_dict(section)))


def test_stage_runners_pass_the_flags_on(tmp_path, monkeypatch):
    """ir_label, train_irn, make_sem_seg, eval_mask and segment get the run's policy, workers,
    seed and device (they used to get IRN's and segment's defaults)."""
    import rib_ext.irn as irn
    import rib_ext.segment as segment

    seen = {}

    def fake(name, result):
        def stage(*args, **kw):
            cfg = [a for a in list(args) + list(kw.values()) if hasattr(a, "allow_missing")][0]
            seen[name] = cfg
            return result
        return stage

    monkeypatch.setattr(irn, "ir_label_stage", fake("ir_label", {}))
    monkeypatch.setattr(irn, "train_irn_stage", fake("train_irn", {}))
    monkeypatch.setattr(irn, "make_sem_seg_stage", fake("make_sem_seg", {}))
    monkeypatch.setattr(irn, "eval_mask_stage", fake("eval_mask", {"miou": 0.5}))
    monkeypatch.setattr(segment, "segment_stage", fake("segment", {"miou": None}))
    cfg = config(["--out", str(tmp_path), "--demo-images", "4", "--demo-val-images", "2",
                  "--demo-size", "48", "--allow-missing", "--num-workers", "2", "--seed", "7",
                  "--device", "cpu", "--irn-auto-thresholds", "false", "--irn.path_radius", "3"])
    maps = tmp_path / "make_cam" / "maps"
    maps.mkdir(parents=True)
    (maps / "x.npy").write_bytes(b"")  # a map set exists; the fakes never read it
    summary = pipeline.run(cfg, ["ir_label", "train_irn", "make_sem_seg", "eval_mask", "segment"])
    assert set(seen) == {"ir_label", "train_irn", "make_sem_seg", "eval_mask", "segment"}
    for name, c in seen.items():
        assert c.allow_missing and c.num_workers == 2 and c.seed == 7 and c.device == "cpu", name
    assert summary["eval_mask"]["cam"]["miou"] == 0.5


def test_demo_preset_on_a_voc_layout_folder(tmp_path):
    root = tmp_path / "VOC"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    cfg = config(["--dataset", "voc", "--root", str(root), "--preset", "demo"])
    assert cfg.preset == "demo" and cfg.train_cam.backbone == "resnet_tiny"
    # The demo's recipe: fine-tuned from the shipped pretrained backbone, IRN starting from it too.
    assert cfg.train_cam.weights == "rib_ext:demo_world" and not cfg.train_cam.random_init
    assert not cfg.train_cam.from_scratch and cfg.train_cam.classifier_lr_mult == 10 and cfg.irn_auto_thresholds
    assert cfg.rib.lr == demo_preset(128)["rib"]["lr"] and cfg.irn.backbone == "resnet_tiny"
    assert cfg.irn.weights == "rib_ext:demo_world" and not cfg.irn.random_init
    assert cfg.train_list == "train" and cfg.eval_list is None  # the folder's own lists
    # VOC: train_aug is the default training list where it exists.
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("a\n")
    assert config(["--dataset", "voc", "--root", str(root)]).train_list == "train_aug"
    assert config(["--dataset", "voc", "--root", str(root), "--train-list", "train"]).train_list == "train"
    voc = config(["--dataset", "voc", "--root", str(root)])
    assert voc.preset == "voc" and voc.train_cam.backbone == "resnet50" and voc.rib.lr == 8e-6


def test_demo_from_scratch_stays_a_setting(tmp_path):
    """--train_cam.from_scratch true: the earlier recipe whole (random weights, every stage trained,
    its own RIB settings), and IRN then starts from the trained classifier, there being no other
    weights."""
    out = tmp_path / "run"
    cfg = config(["--train_cam.from_scratch", "true", "--out", str(out)])
    assert cfg.train_cam.from_scratch and cfg.train_cam.random_init and cfg.train_cam.weights is None
    assert cfg.train_cam.classifier_lr_mult == 1.0 and cfg.train_cam.epochs == 12
    assert cfg.rib.lr == demo_preset(128, from_scratch=True)["rib"]["lr"]
    assert cfg.irn.weights == str(out / "train_cam" / "cam_net.pth")
    default = config(["--out", str(out)])
    assert default.train_cam.weights == "rib_ext:demo_world" and default.irn.weights == "rib_ext:demo_world"


def test_demo_preset_trains_on_a_users_voc_folder(tmp_path, tiny_demo, capsys):
    """--preset demo is the demo's recipe (fine-tuning the shipped backbone) for any small
    VOC-layout folder (here the demo's files, read as a plain VOC dataset)."""
    root = tiny_demo
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text(
        (root / "ImageSets" / "Segmentation" / "train.txt").read_text())
    out = tmp_path / "run"
    assert main(["--dataset", "voc", "--root", str(root), "--preset", "demo", "--epochs", "1",
                 "--out", str(out), "--stages", "train_cam"]) == 0
    assert "train list train_aug" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["train_list"] == "train_aug"
    assert (out / "train_cam" / "cam_net.pth").is_file()


def test_rib_behaviour_flag_and_the_old_spelling(capsys):
    assert config(["--rib-preset", "paper"]).rib.gndrp_behaviour == "paper"
    assert config([]).rib.behaviour == "authors"
    with pytest.raises(SystemExit) as exit_info:
        pipeline.build_parser().parse_args(["--preset", "paper"])
    assert exit_info.value.code == 2 and "--rib-behaviour paper" in capsys.readouterr().err
    assert config(["--rib-behaviour", "paper"]).rib.behaviour == "paper"
    with pytest.raises(SystemExit):
        pipeline.build_parser().parse_args(["--rib-behaviour", "reference"])
    assert "now called 'authors'" in capsys.readouterr().err


def test_gndrp_behaviour_under_its_old_name_in_flags_and_config_files(tmp_path):
    """The GNDRP switch was called gndrp_mode: old config.json files and the old flag still work."""
    assert config(["--rib.gndrp_mode", "paper"]).rib.gndrp_behaviour == "paper"
    assert config(["--rib.gndrp_behaviour", "paper"]).rib.gndrp_behaviour == "paper"
    saved = plain_dict(config([]))
    saved["rib"]["gndrp_mode"] = saved["rib"].pop("gndrp_behaviour")
    saved["rib"]["gndrp_mode"] = "paper"
    path = tmp_path / "old_config.json"
    path.write_text(json.dumps(saved))
    assert config(["--config", str(path)]).rib.gndrp_behaviour == "paper"
    saved["rib"]["gndrp_behaviour"] = "authors"
    path.write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="gndrp_mode"):
        config(["--config", str(path)])


def test_user_errors_print_one_line_and_exit_2(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    bad_config = tmp_path / "bad.json"
    bad_config.write_text(json.dumps({"rib": {"no_such_field": 1}}))
    empty_root = tmp_path / "empty"
    (empty_root / "JPEGImages").mkdir(parents=True)  # images, but no list
    cases = [
        (["--dataset", "voc", "--root", str(tmp_path / "nowhere")], "dataset root not found"),
        (["--out", str(a_file)], "names a file"),
        (["--config", str(bad_config)], "no_such_field"),
        (["--dataset", "voc", "--root", str(empty_root), "--stages", "train_cam"], "image list not found"),
        (["--dataset", "voc"], "--root is required"),
    ]
    for argv, message in cases:
        out = [] if "--out" in argv else ["--out", str(tmp_path / "o")]
        assert main(out + argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, (argv, err)
    with pytest.raises(Exception, match="names a file"):
        main(["--out", str(a_file), "--debug"])


def test_a_list_naming_an_id_twice_is_a_user_error(tmp_path, monkeypatch, capsys):
    """The data layer raises DatasetError for a duplicated id; the pipeline reports it, exit 2."""
    import rib_ext.data as data
    from rib_ext.data import DatasetError

    def duplicated(*args, **kw):
        raise DatasetError("train.txt line 4: id 2007_000032 is listed twice (first on line 1)")

    monkeypatch.setattr(data, "build_dataset", duplicated)
    assert main(["--out", str(tmp_path / "o"), "--stages", "train_cam"]) == 2
    assert "listed twice" in capsys.readouterr().err


def test_progress_prints_few_lines_off_a_terminal(caplog):
    from rib_ext.runtime import LineProgress

    LineProgress.min_seconds = 0.0
    try:
        with caplog.at_level(logging.INFO, logger="rib_ext.progress"):
            for _ in LineProgress(range(1000), "work"):
                pass
    finally:
        LineProgress.min_seconds = 5.0
    lines = [r.getMessage() for r in caplog.records]
    assert 2 <= len(lines) <= 11 and lines[-1].startswith("work: 1000/1000")


def test_config_file_round_trip_and_presets_refused_on_top(tmp_path):
    from rib_ext.config import plain_dict

    cfg = config(["--rib-preset", "paper", "--tau", "0.3", "--demo-size", "96"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"stages": ["rib"], "environment": {}, **plain_dict(cfg)}))
    assert config(["--config", str(path)]) == cfg
    for flags in (["--rib-preset", "authors"], ["--preset", "voc"]):
        with pytest.raises(ConfigError, match="starts a fresh config"):
            config(["--config", str(path)] + flags)


def test_visualize_flags_reach_their_fields():
    """The visualize section was once parsed and then dropped (12 panels drawn for --visualize.count 3)."""
    cfg = config(["--visualize.count", "3", "--visualize.montage_count", "2"])
    assert (cfg.visualize.count, cfg.visualize.montage_count) == (3, 2)


# Values to try for string fields whose valid values are a closed set (the first valid one is used).
STRING_CHOICES = ["cpu", "paper", "gap", "bce_sigmoid", "bf16", "resnet18", "resnet34", "demo", "voc", "vmap", "off",
                  "sgd", "timm:resnet18", "x"]


def _candidates(current, hint):
    import typing
    if typing.get_origin(hint) is typing.Union:
        hint = [a for a in typing.get_args(hint) if a is not type(None)][0]
    if isinstance(current, bool) or hint is bool:
        return [not current]
    if hint is int and (current is None or isinstance(current, int)):  # None: Optional[int] unset
        c = current or 0
        return [c + 1, c * 2, 1, max(c - 1, 0)]
    if isinstance(current, float) or hint is float:
        c = float(current or 0.0)
        return [c * 0.5 if c else 0.5, c * 2 if c else 0.25, c + 0.01, 0.3]
    if isinstance(current, (list, tuple)) and current:
        item = current[-1]
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            return [list(current[:-1]) + [type(item)(item * 2)], list(current[:-1]) + [type(item)(item + 1)],
                    list(current[:-1]) + [item * 0.5]]
        return []
    return [v for v in STRING_CHOICES if v != current]


def _get(tree, path):
    for part in path.split("."):
        tree = tree[part]
    return tree


# Flags valid only beside another (a config rule says so).
NEEDS = {"rib_speed.cuda_graph_targets": ["--rib_speed.cuda_graphs", "true"],
         "train_cam.split": ["--train_cam.model", "timm:resnet18"]}


def test_every_generated_flag_changes_its_field():
    """Each field's flag, given a valid value other than the default, sets exactly that value in
    the resolved config (a section the builder forgets fails here)."""
    from rib_ext.config import plain_dict
    from rib_ext.stages.options import _leaves

    base = plain_dict(config([]))
    untested = []
    for path, hint in _leaves(PipelineConfig):
        if path in ("dataset", "root", "out_dir"):  # need a dataset on disk; covered elsewhere
            continue
        for value in _candidates(_get(base, path), hint):
            argv = [f"--{path}"] + ([str(v) for v in value] if isinstance(value, list) else [str(value)])
            argv += NEEDS.get(path, [])
            try:
                cfg = config(argv)
            except (ConfigError, ValueError, SystemExit):
                continue
            got = _get(plain_dict(cfg), path)
            assert got == value or (isinstance(value, float) and got == pytest.approx(value)), (path, value, got)
            break
        else:
            untested.append(path)
    assert untested == [], f"no valid non-default value found for {untested}"


def test_print_config_shows_the_resolved_tree_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["--out", str(out), "--visualize.count", "3", "--rib-behaviour", "paper",
                 "--stages", "train_cam,rib", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["stages"] == ["train_cam", "rib"]
    assert printed["visualize"]["count"] == 3 and printed["rib"]["behaviour"] == "paper"
    assert printed == {"stages": ["train_cam", "rib"], **plain_dict(config(
        ["--out", str(out), "--visualize.count", "3", "--rib-behaviour", "paper"]))}
    assert not out.exists()


def test_a_bad_stage_name_is_a_user_error(capsys):
    assert main(["--stages", "train_cam,ribb"]) == 2
    assert "unknown stage(s) ribb" in capsys.readouterr().err


def test_a_copy_set_by_hand_is_refused_not_silently_overwritten():
    """The sections' copies of run-wide and speed settings follow the tree; a value put into a
    copy by hand (in place, or in a section handed to the tree) would be lost: it stops instead,
    naming the setting to use. Copies the tree made itself follow a changed run value."""
    import dataclasses

    cfg = PipelineConfig()
    moved = dataclasses.replace(dataclasses.replace(cfg, device="cpu"), seed=3)
    assert moved.rib.device == "cpu" and moved.irn.seed == 3 and cfg.rib.device == "auto"
    moved.rib.device = "cuda"
    with pytest.raises(ConfigError, match=r'rib.device "cuda" is a copy of device "cpu".*set device'):
        moved.validate()
    with pytest.raises(ConfigError, match=r"set rib_speed.group_size instead"):
        PipelineConfig(rib=RIBConfig(group_size=4))
    with pytest.raises(ConfigError, match=r"set seed instead"):
        PipelineConfig(seed=1, irn=dataclasses.replace(PipelineConfig().irn, seed=2))
    # A section handed in with the copy at its default, or equal to the run value, is taken.
    assert PipelineConfig(seed=5, rib=RIBConfig(lr=1e-3)).rib.seed == 5
    assert PipelineConfig(device="cpu", rib=RIBConfig(device="cpu")).rib.device == "cpu"
