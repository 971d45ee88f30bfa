"""Provenance of the pipeline's stage folders: reruns with other settings or data stop (naming the
fields) unless --overwrite; summary.json is merged; config.json says what was used. Each silent
wrong result that a rerun with other settings or data once gave is reproduced first (it used to
exit 0)."""
import json
import shutil

import pytest

from rib_ext import pipeline
from rib_ext.presets import demo as demo_preset
from gloo_ranks import free_port, gloo_rank
from pipeline_runs import TINY, copy_run, finish_run, main

# Smaller than test_stages.TINY: one scale, 3 images to map; enough to make every file once.
FIRST = "train_cam,make_cam,rib,eval_seed"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_classifier_run):
    return finish_run(tmp_path_factory, "prov", FIRST, start=tiny_classifier_run)


def test_rerun_with_other_rib_settings_stops_and_names_the_fields(finished, capsys):
    before = (finished / "config.json").read_text()
    code = main(["--out", str(finished), "--stages", "rib,eval_seed"] + TINY
                + ["--rib-steps", "1", "--rib-lr", "0.5"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ")
    lr0 = demo_preset(128)["rib"]["lr"]
    assert "settings.steps 2 -> 1" in err and f"settings.lr {lr0} -> 0.5" in err
    assert "--overwrite" in err and "Traceback" not in err
    # Nothing was rewritten: config.json still says what the outputs were made with.
    assert (finished / "config.json").read_text() == before


def test_overwrite_recomputes_the_stage_and_what_follows(finished, tmp_path):
    out = copy_run(finished, tmp_path)
    old_cam = (out / "eval_seed" / "cam" / "result.json").stat().st_mtime_ns
    args = ["--out", str(out), "--stages", "rib", "--overwrite"] + TINY + ["--rib-steps", "1"]
    assert main(args) == 0
    records = [json.loads(x) for x in (out / "rib" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["steps"] == 1 for r in records)
    # eval_seed read the old maps: its rib part was removed (--stages is what runs: not made
    # again); its cam part, made from other maps, stays.
    assert not (out / "eval_seed" / "rib").exists()
    assert (out / "eval_seed" / "cam" / "result.json").stat().st_mtime_ns == old_cam
    assert json.loads((out / "rib" / "provenance.json").read_text())["settings"]["steps"] == 1
    # Now the folder matches: the same command resumes without --overwrite.
    assert main(args[:4] + TINY + ["--rib-steps", "1"]) == 0


def test_new_demo_seed_is_caught_before_the_images_are_regenerated(finished, capsys):
    image = next((finished / "data" / "JPEGImages").glob("*.jpg"))
    stamp = image.stat().st_mtime_ns
    code = main(["--out", str(finished), "--stages", "eval_seed", "--demo-seed", "1"] + TINY)
    err = capsys.readouterr().err
    assert code == 2 and "demo.seed 0 -> 1" in err
    assert image.stat().st_mtime_ns == stamp


def test_classifier_trained_with_other_epochs_is_not_reused(finished, capsys):
    assert main(["--out", str(finished), "--stages", "make_cam"] + TINY + ["--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "train_cam" in err and "settings.epochs 1 -> 3" in err


def test_summary_is_merged_not_replaced(finished, tmp_path):
    out = copy_run(finished, tmp_path)
    assert main(["--out", str(out), "--stages", "eval_seed"] + TINY) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {"train_cam", "make_cam", "rib", "eval_seed"} <= set(summary)
    assert summary["rib"]["written"] == 3


def test_config_json_records_what_was_used(finished):
    config = json.loads((finished / "config.json").read_text())
    env = config["environment"]
    assert env["device"] == "cpu" and env["torch"] and "git_commit" in env
    assert isinstance(env["operator_backends"], dict) and env["operator_backends"]
    assert config["train_list"] == "train" and config["eval_list"] == "val"
    assert config["preset"] == "demo"
    for stage in FIRST.split(","):
        assert (finished / stage / "provenance.json").is_file()


def test_config_file_reruns_the_same_settings(finished, tmp_path):
    cfg = pipeline.config_from_argv(["--config", str(finished / "config.json")])
    fresh = pipeline.config_from_argv(["--out", str(finished)] + TINY)
    assert cfg == fresh
    # A field given with --config overrides the file's.
    assert pipeline.config_from_argv(["--config", str(finished / "config.json"), "--rib.tau", "0.3"]).rib.tau == 0.3
    out = copy_run(finished, tmp_path)
    shutil.copy(finished / "config.json", tmp_path / "saved.json")
    assert main(["--config", str(tmp_path / "saved.json"), "--out", str(out),
                 "--stages", "eval_seed"]) == 0


def test_cam_checkpoint_skips_train_cam_and_enters_provenance(finished, tmp_path, capsys):
    from factories import tiny_cam_net
    from rib_ext.models import save_cam_net

    ckpt = tmp_path / "mine.pth"
    shutil.copy(finished / "train_cam" / "cam_net.pth", ckpt)
    out = tmp_path / "run"
    args = ["--out", str(out), "--stages", "train_cam,make_cam", "--cam-checkpoint", str(ckpt)] + TINY
    assert main(args) == 0
    assert not (out / "train_cam").exists() and len(list((out / "make_cam" / "maps").glob("*.npy"))) == 3
    inputs = json.loads((out / "make_cam" / "provenance.json").read_text())["inputs"]
    assert len(inputs["train_cam"]["sha256"]) == 64
    save_cam_net(ckpt, tiny_cam_net(5))  # another classifier under the same name
    capsys.readouterr()
    assert main(args) == 2
    assert "inputs.train_cam.sha256" in capsys.readouterr().err


def _plan_on_rank(rank, world, port, out, argv, plans):
    """One torchrun rank's --overwrite plan; rank 1 reads the records late (a slow file system)."""
    import time

    from rib_ext.stages.options import config_from_argv
    from rib_ext.stages.context import RunContext
    from rib_ext.stages.provenance import Provenance
    from rib_ext.stages.registry import STAGES

    with gloo_rank(rank, world, port):
        prov = Provenance(RunContext(config_from_argv(argv), overwrite=True), list(STAGES))
        if rank == 1:
            read = prov.saved
            prov.saved = lambda stage: (time.sleep(0.5), read(stage))[1]
        plans[rank] = prov.plan(["rib"])


@pytest.mark.slow  # several ranks
def test_overwrite_under_torchrun_gives_every_rank_the_same_plan(finished, tmp_path):
    """Rank 0 removed the differing folders while rank 1 was still reading their records: rank 1
    then saw no record and planned only the asked stage, while rank 0 planned its downstream too
    (the ranks then disagreed on the stages to run, and rank 0 waited for rank 1 forever)."""
    import time

    import torch.multiprocessing as mp

    out = copy_run(finished, tmp_path)
    argv = ["--out", str(out), "--stages", "rib"] + TINY + ["--rib-steps", "1"]
    plans = mp.Manager().dict()
    ranks = mp.spawn(_plan_on_rank, args=(2, free_port(), out, argv, plans), nprocs=2, join=False)
    deadline = time.monotonic() + 60
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:  # rank 1 planned nothing to remove and never came
            for p in ranks.processes:
                p.kill()
            pytest.fail("the ranks' plans differed: rank 0 waits for rank 1 in a barrier forever")
    assert plans[0] == plans[1] == ["rib"]
    assert not (out / "rib").exists() and not (out / "eval_seed" / "rib").exists()
