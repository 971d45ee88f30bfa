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
