"""The command lines' promises: a saved config resumes its run from any folder, errors instead of
tracebacks, locks, warnings and --help."""
from __future__ import annotations

import json
import os

import pytest

from rib_ext.stages.options import config_from_argv
from tests.pipeline_runs import main

SMALL_DEMO = ["--demo-images", "8", "--demo-val-images", "3", "--demo-size", "64"]


@pytest.fixture
def cwd(tmp_path):
    old = os.getcwd()
    yield tmp_path
    os.chdir(old)


def test_relative_out_is_recorded_absolute_and_resumed_from_another_folder(cwd, capsys):
    first = cwd / "first"
    first.mkdir()
    os.chdir(first)
    # eval_seed with no maps stops after config.json is written: enough to read the record.
    assert main(["--out", "OUT", "--stages", "eval_seed"] + SMALL_DEMO) == 2
    saved = json.loads((first / "OUT" / "config.json").read_text())
    assert saved["out_dir"] == str((first / "OUT").resolve())
    other = cwd / "other"
    other.mkdir()
    os.chdir(other)
    cfg = config_from_argv(["--config", "../first/OUT/config.json"])
    assert os.path.realpath(cfg.out_dir) == os.path.realpath(first / "OUT")


def test_relative_out_of_an_older_config_is_its_own_folder(cwd):
    run = cwd / "first" / "OUT"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"stages": ["eval_seed"], "environment": {},
                                                  "out_dir": "OUT"}))
    other = cwd / "other"
    other.mkdir()
    os.chdir(other)
    cfg = config_from_argv(["--config", "../first/OUT/config.json"])
    assert os.path.realpath(cfg.out_dir) == os.path.realpath(run)
    # --out on top still wins.
    assert config_from_argv(["--config", "../first/OUT/config.json", "--out", "X"]).out_dir == "X"


# --- a lock left on another host ----------------------------------------------------------------

def _foreign_lock(out):
    out.mkdir(parents=True, exist_ok=True)
    (out / ".lock").write_text("pid=4242\nhost=other-node-17\nstarted=2026-01-01 00:00:00\n")


def test_lock_of_another_host_is_refused_naming_host_and_pid(tmp_path):
    from rib_ext.runlock import RunLock, RunLockedError

    _foreign_lock(tmp_path)
    with pytest.raises(RunLockedError, match=r"process 4242 on other-node-17.*--take-over-lock"):
        RunLock(tmp_path).acquire()
    assert "other-node-17" in (tmp_path / ".lock").read_text()  # left as it was
    lock = RunLock(tmp_path, take_over_foreign=True).acquire()
    try:
        assert "process 4242 on other-node-17" in lock.previous
    finally:
        lock.release()


def test_pipeline_refuses_a_foreign_lock_unless_told(tmp_path, capsys):
    out = tmp_path / "run"
    _foreign_lock(out)
    assert main(["--out", str(out), "--stages", "eval_seed"] + SMALL_DEMO) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "other-node-17" in err and "4242" in err
    assert not (out / "data").exists()  # stopped before the data generation
    assert main(["--out", str(out), "--stages", "eval_seed", "--take-over-lock"] + SMALL_DEMO) == 2
    captured = capsys.readouterr()
    assert "taking over from process 4242 on other-node-17" in captured.out
    assert "no maps" in captured.err  # it ran (and stopped where a run with no maps stops)


# --- warnings: one line each, none where the demo's choice is by design --------------------------

def test_package_warnings_print_one_line_without_source():
    import warnings

    import rib_ext.models.checkpoint as checkpoint
    from rib_ext.runtime import install_warning_format

    saved = warnings.formatwarning
    try:
        install_warning_format()
        # What Python prints for a warning (warnings.showwarning writes formatwarning's text).
        ours = warnings.formatwarning("resnet50 backbone randomly initialised", UserWarning,
                                      checkpoint.__file__, 67)
        other = warnings.formatwarning("from elsewhere", UserWarning, "/x/site-packages/y.py", 3)
        # A caller recording warnings still receives them.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.warn_explicit("recorded", UserWarning, checkpoint.__file__, 1)
    finally:
        warnings.formatwarning = saved
    assert ours == "warning: resnet50 backbone randomly initialised\n"
    assert "y.py:3: UserWarning: from elsewhere" in other
    assert [str(w.message) for w in caught] == ["recorded"]


def test_from_scratch_classifier_does_not_warn_of_random_init():
    import warnings

    from rib_ext.models.checkpoint import build_cam_net

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_cam_net("resnet_tiny", 4, random_init=True, from_scratch=True)
    with pytest.warns(UserWarning, match="randomly initialised"):
        build_cam_net("resnet_tiny", 4, random_init=True)


def test_default_demo_run_prints_no_python_warning_format(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from tests.pipeline_runs import TINY

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "rib_ext.pipeline", "--out", str(tmp_path / "run"),
                           "--stages", "train_cam,make_cam"] + TINY, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)}, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "UserWarning" not in proc.stderr and ".py:" not in proc.stderr, proc.stderr
    assert "randomly initialised" not in proc.stderr + proc.stdout
    assert all(line.startswith(("warning: ", "[")) or not line.strip() or line.startswith(" ")
               for line in proc.stderr.splitlines()), proc.stderr


# --- --help --------------------------------------------------------------------------------------

def _help(module):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root), "COLUMNS": "200"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_pipeline_help_shows_every_default_and_the_choices():
    import re

    text = _help("rib_ext.pipeline")
    # Every generated flag's help line says its default.
    flags = re.findall(r"^  (--[a-z_]+\.?[a-z_.]*)\b.*?(?=^  --|\Z)", text, re.S | re.M)
    blocks = re.split(r"\n(?=  --)", text)
    settings = [b for b in blocks if b.lstrip().startswith("--") and not b.lstrip().startswith(
        ("--help", "--stages", "--overwrite", "--take-over-lock", "--print-config", "--debug",
         "--config", "--preset", "--rib-behaviour", "--irn-behaviour"))]
    assert flags and len(settings) > 100
    missing = [b.split()[0] for b in settings if "default" not in b]
    assert not missing, missing
    dataset = next(b for b in blocks if b.lstrip().startswith("--dataset"))
    assert "{demo,voc,coco}" in dataset and "the dataset" in dataset
    assert "--rib.pooling {gndrp,gap}" in text
    assert "--train_cam.backbone {resnet18,resnet34,resnet50,resnet101,resnet_tiny}" in text
    thresholds = next(b for b in blocks if b.lstrip().startswith("--thresholds"))
    from rib_ext.stages.options import build_config, build_parser
    demo = build_config(build_parser().parse_args([])).eval_seed
    assert f"default {demo.threshold_start} {demo.threshold_stop} {demo.threshold_step}" in \
        " ".join(thresholds.split())


def test_unknown_backbone_stops_before_the_data_is_generated(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--out", str(tmp_path / "run"), "--backbone", "resnet51"] + SMALL_DEMO)
    assert stop.value.code == 2 and "resnet51" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    from rib_ext.config import TrainCamConfig
    with pytest.raises(ValueError, match="resnet51"):
        TrainCamConfig(backbone="resnet51")  # a config file too


def test_cam_backbone_choices_are_the_models():
    from rib_ext.config import CAM_BACKBONES
    from rib_ext.models import BACKBONES

    assert set(CAM_BACKBONES) == set(BACKBONES)


def test_toy_help_shows_a_single_percent_sign():
    text = _help("rib_ext.toy")
    assert "10% of" in " ".join(text.split()) and "%%" not in text


def test_ops_help_is_help():
    text = _help("rib_ext.ops")
    assert text.startswith("usage: python -m rib_ext.ops") and "extension_loaded" not in text


def test_device_mps_where_unavailable_is_an_error(tmp_path, capsys):
    import torch

    if torch.backends.mps.is_available():
        pytest.skip("an MPS device is present")
    assert main(["--out", str(tmp_path / "run"), "--device", "mps"] + SMALL_DEMO) == 2
    assert "error: device 'mps' asked for, but no Apple MPS device is available" in capsys.readouterr().err


def test_outputs_of_another_version_are_reused_with_a_note(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--out", str(out), "--stages", "eval_seed"] + SMALL_DEMO) == 2  # no maps yet
    record = json.loads((out / "config.json").read_text())
    record["environment"]["rib_ext_version"] = "0.0.1"
    (out / "config.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["--out", str(out), "--stages", "eval_seed"] + SMALL_DEMO) == 2
    assert "was made by rib_ext 0.0.1 (this is " in capsys.readouterr().out


# --- tracebacks where error: is promised ---------------------------------------------------------

def test_output_names_of_a_250_character_id_fit_their_temporary_names(tmp_path):
    import numpy as np

    from rib_ext.io import save_npy

    path = tmp_path / ("a" * 250 + ".npy")
    save_npy(path, {"keys": np.arange(2)})
    assert path.is_file() and not list(tmp_path.glob(".*.tmp"))


def test_full_disk_writing_a_checkpoint_is_the_system_error_naming_it(tmp_path, monkeypatch):
    import errno

    import torch

    import rib_ext.checkpoints as checkpoints
    from rib_ext.pipeline import os_error_message

    monkeypatch.setattr(checkpoints, "open", lambda *a, **k: open("/dev/full", "wb"), raising=False)
    path = tmp_path / "cam_net.pth"
    with pytest.raises(OSError) as caught:
        checkpoints.write_checkpoint(path, {"w": torch.zeros(100_000)})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert "no space left on the device writing" in os_error_message(caught.value)
    assert not path.exists() and not list(tmp_path.glob(".*.tmp"))


def test_too_long_file_name_is_a_message():
    import errno

    from rib_ext.pipeline import os_error_message

    err = OSError(errno.ENAMETOOLONG, "File name too long", "/o/" + "a" * 300 + ".npy")
    assert "file name too long" in os_error_message(err)


def test_report_and_visualize_on_an_empty_or_unfinished_folder_are_errors(tmp_path, capsys):
    from rib_ext import report
    from rib_ext.visualize import __main__ as visualize

    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main([str(empty)]) == 2
    assert "error: " in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    (unfinished / "data").mkdir(parents=True)
    (unfinished / "config.json").write_text(json.dumps({"stages": [], "environment": {}}))
    assert report.main([str(unfinished)]) == 2
    assert "no summary" in capsys.readouterr().err
    assert visualize.main(["--run", str(empty), "--root", str(tmp_path / "nowhere")]) == 2
    assert "error: " in capsys.readouterr().err


def test_data_demo_of_a_too_small_size_is_an_error(tmp_path, capsys):
    from rib_ext.data import __main__ as data_cli

    assert data_cli.main(["demo", "--root", str(tmp_path / "d"), "--size", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and ">= 32, got 8" in err


def _tiny_net():
    from rib_ext.models import CAMNet

    return CAMNet("resnet_tiny", 5, (2, 2, 2, 1))


def test_classifier_saved_from_data_parallel_is_accepted(tmp_path):
    import torch

    from rib_ext.models.checkpoint import load_cam_net, save_cam_net

    net = _tiny_net()
    bare = tmp_path / "bare.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, bare)
    ours = tmp_path / "ours.pth"
    save_cam_net(ours, net)
    record = torch.load(ours, weights_only=True)
    record["state_dict"] = {f"module.{k}": v for k, v in record["state_dict"].items()}
    torch.save(record, ours)
    for path in (bare, ours):
        loaded = load_cam_net(path)
        for k, v in net.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), (path, k)


def test_torchvision_weights_as_the_classifier_name_the_weights_flag(tmp_path):
    import torch

    from rib_ext.checkpoints import CheckpointError
    from rib_ext.models import CAMNet
    from rib_ext.models.checkpoint import load_cam_net

    path = tmp_path / "resnet18.pth"
    torch.save({**CAMNet("resnet18", 5).torchvision_view().state_dict(),
                "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, path)
    with pytest.raises(CheckpointError, match="resnet18 ImageNet weights.*--weights") as caught:
        load_cam_net(path)
    assert "load_backbone_weights" not in str(caught.value)


def test_weights_of_another_depth_are_a_checkpoint_error_naming_the_flags(tmp_path):
    import torch

    from rib_ext.checkpoints import CheckpointError
    from rib_ext.models import CAMNet
    from rib_ext.models.checkpoint import load_backbone_weights

    path = tmp_path / "resnet18.pth"
    torch.save(CAMNet("resnet18", 5).torchvision_view().state_dict(), path)
    with pytest.raises(CheckpointError, match="resnet18 weights, but the backbone is resnet34: "
                                              "pass --backbone resnet18"):
        load_backbone_weights(CAMNet("resnet34", 5), path)


def test_a_non_torch_file_does_not_show_torchs_advice(tmp_path):
    from rib_ext.checkpoints import CheckpointError, read_checkpoint

    path = tmp_path / "junk.pth"
    path.write_text("not a torch file\n")
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path, None)
    text = str(caught.value)
    assert str(path) in text and "file an issue" not in text and "weights_only" not in text
