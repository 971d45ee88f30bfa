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
