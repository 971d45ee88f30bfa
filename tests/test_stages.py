"""Pipeline stages end to end on a tiny generated dataset: outputs, resume, interruption, ranks."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from factories import tiny_cam_net
from rib_ext import pipeline
from rib_ext.config import DemoDataConfig, MakeCamConfig
from rib_ext.data import build_dataset
from rib_ext.io import load_npy_dict
from gloo_ranks import free_port, gloo_rank
from pipeline_runs import TINY

# More and larger images than TINY, and the four map scales: the shards, the resume and the
# interruption see every code path.
TINY = TINY + ["--demo-images", "12", "--demo-val-images", "6", "--demo-size", "80",
               "--scales", "1.0", "0.5", "1.5", "2.0"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cfg = DemoDataConfig(num_train=12, num_val=6, image_size=64)
    return build_dataset("demo", root, "train", demo=cfg), build_dataset("demo", root, "val", demo=cfg)


@pytest.mark.slow  # every stage, end to end
def test_pipeline_runs_every_stage_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert pipeline.main(["--out", str(out)] + TINY) == 0
    printed = capsys.readouterr().out
    assert "CAM seed mIoU" in printed and "RIB seed mIoU" in printed and "CRF mIoU" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= {"train_cam", "make_cam", "rib", "eval_seed", "crf", "ir_label",
                            "train_irn", "make_sem_seg", "eval_mask"}
    assert "pseudo-mask mIoU" in printed
    for name in ("cam", "rib"):
        result = json.loads((out / "eval_seed" / name / "result.json").read_text())
        assert 0.0 <= result["miou"] <= 1.0 and result["best_threshold"] in (0.2, 0.3, 0.4)
        assert (out / "eval_seed" / name / "sweep.png").stat().st_size > 0
        assert len(list((out / "crf" / name / "masks").glob("*.png"))) == 6
        assert len(list((out / "ir_label" / name).glob("*.png"))) == 6
        assert len(list((out / "make_sem_seg" / name).glob("*.png"))) == 6
        assert len(list((out / "make_sem_seg" / f"{name}_scores").glob("*.npy"))) == 6
        mask = json.loads((out / "eval_mask" / name / "result.json").read_text())
        assert 0.0 <= mask["miou"] <= 1.0
    maps = load_npy_dict(next((out / "rib" / "maps").glob("*.npy")))
    assert set(maps) == {"keys", "cam", "high_res"}
    assert len((out / "rib" / "records.jsonl").read_text().splitlines()) == 6
    config = json.loads((out / "config.json").read_text())
    assert config["rib"]["steps"] == 2 and config["train_cam"]["backbone"] == "resnet_tiny"
    # A rerun finds everything done.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = pipeline.run(pipeline.config_from_argv(
            ["--out", str(out)] + TINY), ["make_cam", "rib"])
    assert again["make_cam"]["written"] == 0 and again["make_cam"]["skipped"] == 6
    assert again["rib"]["written"] == 0


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="unknown stage"):
        pipeline.parse_stages("train_cam,segmentt")
    assert pipeline.main(["--stages", "train_cam,segmentt"]) == 2


def test_interrupted_make_cam_leaves_no_partial_file_and_resumes(tiny_data, tmp_path):
    from rib_ext.cam.maps import make_cam

    _, val = tiny_data
    model = tiny_cam_net(val.num_classes)
    real_image = val.image

    def failing(i):
        if i == 3:
            raise RuntimeError("simulated crash")
        return real_image(i)

    val.image = failing
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            make_cam(model, val, MakeCamConfig(scales=(1.0, 0.5)), tmp_path)
    finally:
        del val.image
    done = sorted(p.name for p in tmp_path.iterdir())
    assert done == [f"{val.name(i)}.npy" for i in range(3)]  # complete files only, no temp files
    first = (tmp_path / done[0]).stat().st_mtime_ns
    result = make_cam(model, val, MakeCamConfig(scales=(1.0, 0.5)), tmp_path)
    assert result["written"] == 3 and result["skipped"] == 3
    assert (tmp_path / done[0]).stat().st_mtime_ns == first
    for i in range(len(val)):
        assert set(load_npy_dict(tmp_path / f"{val.name(i)}.npy")) == {"keys", "cam", "high_res"}


def _rank_main(rank, world, port, root, out, model_path):
    with gloo_rank(rank, world, port):
        _rib_and_eval(root, out, model_path)


def _rib_and_eval(root, out, model_path):
    from rib_ext.config import EvalSeedConfig, RIBConfig
    from rib_ext.models import load_cam_net
    from rib_ext.evaluation import eval_seed
    from rib_ext.rib.run import adapt_dataset

    cfg = DemoDataConfig(num_train=12, num_val=6, image_size=64)
    train = build_dataset("demo", root, "train", demo=cfg)
    val = build_dataset("demo", root, "val", demo=cfg)
    rib_cfg = RIBConfig(steps=2, num_others=2, other_resize_long=(48, 80), other_crop=64,
                        device="cpu")
    adapt_dataset(load_cam_net(model_path), val, train, rib_cfg, Path(out) / "rib")
    eval_seed(val, Path(out) / "rib" / "maps", EvalSeedConfig(0.2, 0.4, 0.1), Path(out) / "eval")


@pytest.mark.slow  # several ranks
def test_distributed_shards_match_single_process(tiny_data, tmp_path):
    """Two gloo ranks on loopback: each adapts its shard; maps and the reduced evaluation equal a
    single-process run's."""
    from rib_ext.models import save_cam_net

    train, _ = tiny_data
    root = str(Path(train.image_path(0)).parents[1])
    model_path = tmp_path / "cam_net.pth"
    save_cam_net(model_path, tiny_cam_net(train.num_classes))
    _rib_and_eval(root, tmp_path / "single", model_path)
    torch.multiprocessing.spawn(_rank_main, args=(2, free_port(), root, str(tmp_path / "multi"),
                                                  model_path), nprocs=2, join=True)
    single = sorted((tmp_path / "single" / "rib" / "maps").glob("*.npy"))
    multi = sorted((tmp_path / "multi" / "rib" / "maps").glob("*.npy"))
    assert [p.name for p in single] == [p.name for p in multi] and len(single) == 6
    for a, b in zip(single, multi):
        np.testing.assert_allclose(load_npy_dict(a)["high_res"], load_npy_dict(b)["high_res"],
                                   rtol=1e-4, atol=1e-5)
    r1 = json.loads((tmp_path / "single" / "eval" / "result.json").read_text())
    r2 = json.loads((tmp_path / "multi" / "eval" / "result.json").read_text())
    assert r1["num_images"] == r2["num_images"] == 6
    assert r1["miou"] == pytest.approx(r2["miou"], abs=1e-4)
    assert len((tmp_path / "multi" / "rib" / "records.jsonl").read_text().splitlines()) == 6


def test_interrupted_rib_stage_resumes(tiny_data, tmp_path, monkeypatch):
    """A crash after two images leaves two complete maps and records; a rerun adapts the rest and
    gives the same maps as an uninterrupted run."""
    from rib_ext.config import RIBConfig
    from rib_ext.rib import run as rib_run

    train, val = tiny_data
    model = tiny_cam_net(val.num_classes)
    cfg = RIBConfig(steps=2, num_others=2, other_resize_long=(48, 80), other_crop=64, device="cpu")
    real_save = rib_run.save_npy
    calls = {"n": 0}

    def crashing_save(path, obj):
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        calls["n"] += 1
        real_save(path, obj)

    monkeypatch.setattr(rib_run, "save_npy", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        rib_run.adapt_dataset(model, val, train, cfg, tmp_path / "resumed")
    assert len(list((tmp_path / "resumed" / "maps").glob("*.npy"))) == 2
    monkeypatch.setattr(rib_run, "save_npy", real_save)
    summary = rib_run.adapt_dataset(model, val, train, cfg, tmp_path / "resumed")
    assert summary["written"] == len(val) - 2 and summary["skipped"] == 2
    rib_run.adapt_dataset(model, val, train, cfg, tmp_path / "straight")
    for name in val.ids:
        a = load_npy_dict(tmp_path / "resumed" / "maps" / f"{name}.npy")
        b = load_npy_dict(tmp_path / "straight" / "maps" / f"{name}.npy")
        np.testing.assert_allclose(a["high_res"], b["high_res"], rtol=1e-5, atol=1e-6)
    assert len((tmp_path / "resumed" / "records.jsonl").read_text().splitlines()) == len(val)


def test_every_registered_stage_module_keeps_the_stage_contract():
    from rib_ext.stages.registry import STAGES, stage_module
    for name in STAGES:
        module = stage_module(name)
        assert isinstance(module.UPSTREAM, tuple | list), name
        known = set(STAGES) | {f"{kind}:{which}" for kind in ("data", "truth")
                               for which in ("train", "eval", "val")}
        assert set(module.UPSTREAM) <= known, name
        assert callable(module.settings) and callable(module.run), name
