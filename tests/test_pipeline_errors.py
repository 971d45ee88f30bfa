"""Errors a user meets at run time: each one was a traceback (or a silent wrong result)
and is now ``error: <message naming the value or file>`` with exit status 2 (130 for Ctrl-C, the
shell's convention for SIGINT), with nothing half-written. Each test reproduces the case first."""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rib_ext.runlock import RunLock
from pipeline_runs import TINY, copy_run, finish_run, main

# IRN at 64 px needs a path radius that fits its 16x16 training grid.
IRN_FITS = ["--irn.path_radius", "4"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_classifier_run):
    return finish_run(tmp_path_factory, "errors", "train_cam,make_cam", start=tiny_classifier_run)


def test_out_under_a_regular_file_is_an_error_naming_it(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["--out", str(blocker / "run"), "--stages", "train_cam"] + TINY) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and str(blocker / "run") in err
    assert "Traceback" not in err


def test_out_folder_without_write_permission_is_named_before_any_work(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == out else real(p, mode, **kw))
    assert main(["--out", str(out), "--stages", "train_cam"] + TINY) == 2
    assert capsys.readouterr().err == f"error: --out {out}: the output folder is not writable\n"
    assert not list(out.iterdir())


def test_unwritable_out_is_an_error_naming_the_file(finished, tmp_path, monkeypatch, capsys):
    # Tests run as root, which no mode bits stop: the refusal the OS would give is simulated.
    out = copy_run(finished, tmp_path)
    real = os.replace

    def denied(src, dst, *a, **kw):
        if str(dst).endswith(".npy"):
            raise PermissionError(errno.EACCES, "Permission denied", str(src))
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", denied)
    shutil.rmtree(out / "make_cam" / "maps")
    assert main(["--out", str(out), "--stages", "make_cam"] + TINY) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: permission denied: ") and str(out / "make_cam" / "maps") in err
    assert ".tmp" not in err  # the output meant, not the temporary name
    assert not list((out / "make_cam" / "maps").glob("*"))  # nothing half-written


def test_disk_full_names_the_file_and_says_a_rerun_resumes(finished, tmp_path, monkeypatch, capsys):
    out = copy_run(finished, tmp_path)
    maps = sorted((out / "make_cam" / "maps").glob("*.npy"))
    maps[-1].unlink()
    import rib_ext.io

    def full(f, obj, **kw):
        f.write(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rib_ext.io.np, "save", full)
    assert main(["--out", str(out), "--stages", "make_cam"] + TINY) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on the device writing ") and str(maps[-1]) in err
    assert "rerun the same command to resume" in err
    assert not maps[-1].exists() and not list(maps[-1].parent.glob(".*.tmp"))
    monkeypatch.undo()
    assert main(["--out", str(out), "--stages", "make_cam"] + TINY) == 0  # and it does resume
    assert maps[-1].exists()


def test_ctrl_c_is_one_line_and_exit_130(finished, tmp_path, monkeypatch, capsys):
    out = copy_run(finished, tmp_path)
    import rib_ext.stages.make_cam as make_cam

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(make_cam, "make_cam", interrupted)
    assert main(["--out", str(out), "--stages", "make_cam"] + TINY) == 130
    err = capsys.readouterr().err
    assert err == "interrupted; rerun the same command to resume\n"


def test_demo_size_too_small_for_irn_stops_before_any_stage(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--out", str(out), "--stages", "train_cam,make_cam,ir_label,train_irn"] + TINY) == 2
    err = capsys.readouterr().err
    assert "--irn.crop_size 64" in err and "16x16 grid" in err and "--irn.path_radius 10" in err
    assert not (out / "train_cam").exists()  # no stage ran


def test_mask_value_above_the_class_count_names_the_file(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    first = (out / "data" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    mask = out / "data" / "SegmentationClass" / f"{first}.png"
    arr = np.array(Image.open(mask))
    arr[0, 0] = 42
    img = Image.fromarray(arr, mode="P")
    img.putpalette(Image.open(mask).getpalette())
    img.save(mask)
    code = main(["--out", str(out), "--stages", "eval_seed"] + TINY)
    err = capsys.readouterr().err
    assert code == 2 and str(mask) in err and "42" in err and "above the 5 classes" in err


def test_a_second_run_on_one_out_names_the_process_holding_it(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    with RunLock(out):  # another run, in the middle of its work
        assert main(["--out", str(out), "--stages", "make_cam"] + TINY) == 2
    err = capsys.readouterr().err
    assert f"process {os.getpid()} on " in err and "in use by another run" in err
    assert main(["--out", str(out), "--stages", "make_cam"] + TINY) == 0  # released: runs


def test_a_stale_lock_of_a_dead_process_is_taken_over(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    # A run killed with -9 leaves its file; the kernel has released its lock.
    code = ("import os, sys; from rib_ext.runlock import RunLock; RunLock(sys.argv[1]).acquire(); "
            "os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(out)], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "pid=" in (out / ".lock").read_text()
    assert main(["--out", str(out), "--stages", "make_cam"] + TINY) == 0
    assert "taking over from process" in capsys.readouterr().out


@pytest.mark.slow  # five stages, twice
def test_a_copied_run_folder_keeps_its_provenance(tmp_path):
    out = tmp_path / "run"
    stages = "train_cam,make_cam,eval_seed,ir_label,train_irn"
    # From scratch, IRN starts from the run's own classifier: a path inside the run folder.
    scratch = ["--train_cam.from_scratch", "true"]
    assert main(["--out", str(out), "--stages", stages] + TINY + IRN_FITS + scratch) == 0
    settings = json.loads((out / "train_irn" / "provenance.json").read_text())["settings"]
    assert settings["weights"] == "<out>/train_cam/cam_net.pth"
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    assert main(["--out", str(moved), "--stages", stages] + TINY + IRN_FITS + scratch) == 0


def test_resume_says_from_which_step(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    import rib_ext.cam.train as train_cam

    real = train_cam.save_cam_net

    def killed(*a, **kw):
        raise KeyboardInterrupt  # after the last training state was written

    monkeypatch.setattr(train_cam, "save_cam_net", killed)
    assert main(["--out", str(out), "--stages", "train_cam"] + TINY) == 130
    monkeypatch.setattr(train_cam, "save_cam_net", real)
    capsys.readouterr()
    assert main(["--out", str(out), "--stages", "train_cam"] + TINY) == 0
    assert "resuming train_cam from step 1 (" in capsys.readouterr().out


def test_conf_fg_overridden_by_the_demo_thresholds_says_so(tmp_path, capsys, monkeypatch):
    import rib_ext.pipeline as p

    monkeypatch.setattr(p, "run", lambda *a, **kw: {})
    assert main(["--out", str(tmp_path / "run"), "--irn.conf_fg", "0.6"] + TINY) == 0
    printed = capsys.readouterr().out
    assert "--irn.conf_fg 0.6 is not used" in printed and "--irn-auto-thresholds" in printed
    assert main(["--out", str(tmp_path / "run"), "--irn.sem_seg_bg_thres", "0.3"] + TINY) == 0
    printed = capsys.readouterr().out
    assert "--irn.sem_seg_bg_thres 0.3 is not used" in printed and "make_sem_seg" in printed
    assert main(["--out", str(tmp_path / "run"), "--irn.conf_fg", "0.6",
                 "--irn-auto-thresholds", "false"] + TINY) == 0
    assert "is not used" not in capsys.readouterr().out


def test_segment_prediction_settings_name_the_model_by_content_not_path(tmp_path):
    from rib_ext.config import SegmentConfig
    from rib_ext.segment.infer import inference_settings

    a, b = tmp_path / "a" / "model.pth", tmp_path / "copy" / "model.pth"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(b"same weights")
    cfg = SegmentConfig()
    assert inference_settings(cfg, a) == inference_settings(cfg, b)  # a copied run folder
    b.write_bytes(b"other weights")
    assert inference_settings(cfg, a) != inference_settings(cfg, b)
