"""The pipeline's config tree and command line: validation before any stage runs, generated flags
and their aliases, presets, flags reaching every stage, user errors as `error:` + status 2."""
import json
import logging

import pytest

from rib_ext import pipeline
from rib_ext.config import ConfigError, PipelineConfig, RIBConfig, TrainCamConfig, plain_dict
from rib_ext.data.demo import demo_preset
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
    c = config(["--seed", "3", "--rib.seed", "5"])
    assert c.train_cam.seed == 3 and c.rib.seed == 5


def test_flags_reach_every_stage_that_uses_them():
    cfg = config(["--allow-missing", "--num-workers", "2", "--seed", "7", "--device", "cpu"])
    for section in (cfg.train_cam, cfg.irn, cfg.segment):
        assert section.num_workers == 2 and section.seed == 7 and section.device == "cpu"
    assert cfg.make_cam.num_workers == 2 and cfg.rib.seed == 7 and cfg.rib.device == "cpu"
    assert cfg.allow_missing and cfg.irn.allow_missing and cfg.segment.allow_missing


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
NEEDS = {"rib.cuda_graph_targets": ["--rib.cuda_graphs", "true"],
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
