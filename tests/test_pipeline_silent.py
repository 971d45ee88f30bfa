"""Silent wrong results at the pipeline's level, each reproduced first as a user would
meet it (they used to end with exit 0 and wrong figures): a classifier of other classes, missing
ground-truth masks, a diverged classifier, an edited annotation, COCO images of no class."""
import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from factories import tiny_cam_net
from rib_ext import pipeline
from rib_ext.models import save_cam_net
from pipeline_runs import TINY, copy_run, finish_run, main



@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_classifier_run):
    return finish_run(tmp_path_factory, "silent", "train_cam,make_cam,eval_seed", start=tiny_classifier_run)


# ------------------------------------------------------------------ checkpoint classes

def test_cam_checkpoint_of_other_classes_is_refused_naming_both(tmp_path, capsys):
    ckpt = tmp_path / "voc_classifier.pth"
    save_cam_net(ckpt, tiny_cam_net(k=20), meta={"class_names": [f"c{i}" for i in range(20)]})
    code = main(["--out", str(tmp_path / "run"), "--stages", "make_cam", "--cam-checkpoint",
                 str(ckpt)] + TINY)
    err = capsys.readouterr().err
    assert code == 2 and str(ckpt) in err and "20 classes" in err and "has 5" in err
    assert not list((tmp_path / "run" / "make_cam").glob("maps/*.npy"))


def test_segment_model_of_other_classes_is_refused(tmp_path):
    from rib_ext.checkpoints import CheckpointError
    from rib_ext.segment.model import build_deeplab, load_deeplab, save_deeplab

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_deeplab("resnet18", 21, random_init=True)
    save_deeplab(tmp_path / "m.pth", model)
    assert load_deeplab(tmp_path / "m.pth", num_classes=21).num_classes == 21
    with pytest.raises(CheckpointError, match=r"m.pth: a network of 21 classes.* has 6"):
        load_deeplab(tmp_path / "m.pth", num_classes=6)


# ------------------------------------------------------------- a missing ground-truth mask

def test_missing_ground_truth_mask_is_an_error_or_counted_with_allow_missing(finished, tmp_path, capsys):
    # A VOC-layout copy of the demo's data (the demo itself would regenerate a deleted mask).
    root = tmp_path / "voc"
    shutil.copytree(finished / "data", root)
    first = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    mask = root / "SegmentationClass" / f"{first}.png"
    mask.unlink()
    out = tmp_path / "run"
    args = ["--out", str(out), "--dataset", "voc", "--root", str(root), "--preset", "demo",
            "--eval-list", "val", "--stages", "train_cam,make_cam,eval_seed"] + TINY
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"1 of 3 images have no ground-truth mask: {first} ({mask})" in err and "--allow-missing" in err
    assert not (out / "eval_seed" / "cam" / "result.json").exists()

    with pytest.warns(UserWarning, match=f"no ground-truth mask: {first}"):
        assert pipeline.main(args + ["--allow-missing"]) == 0
    result = json.loads((out / "eval_seed" / "cam" / "result.json").read_text())
    assert result["num_images"] == 2 and result["missing_masks"] == {"count": 1, "ids": [first]}
    assert f"Not counted: 1 listed image(s) without a ground-truth mask (--allow-missing): {first}" \
        in (out / "eval_seed" / "cam" / "result.md").read_text()


# -------------------------------------------------- a diverged classifier, empty maps, nan

def test_diverged_classifier_stops_train_cam_with_the_learning_rate(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--out", str(out), "--stages", "train_cam,make_cam,eval_seed"] + TINY + ["--lr", "1e6"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train_cam: after 1 steps the classifier has weights up to ")
    assert "learning rate 1e+06; lower --lr" in err
    assert not (out / "train_cam" / "cam_net.pth").exists()
    assert not (out / "train_cam" / "train_state.pth").exists()  # a rerun starts afresh
    assert not (out / "make_cam").exists()


def test_classifier_with_runaway_weights_is_refused_on_load(tmp_path, capsys):
    model = tiny_cam_net(k=5)
    with torch.no_grad():
        model.classifier.weight.mul_(1e6)
    ckpt = tmp_path / "diverged.pth"
    save_cam_net(ckpt, model, meta={"config": {"lr": 1e6}})
    code = main(["--out", str(tmp_path / "run"), "--stages", "make_cam", "--cam-checkpoint", str(ckpt)] + TINY)
    err = capsys.readouterr().err
    assert code == 2 and str(ckpt) in err and "classifier.weight" in err and "learning rate 1e+06" in err


def test_all_zero_maps_of_an_image_with_classes_stop_make_cam_naming_it(tmp_path, capsys):
    model = tiny_cam_net(k=5)
    with torch.no_grad():  # features are ReLU'd: negative weights give CAM <= 0 everywhere
        model.classifier.weight.copy_(-model.classifier.weight.abs())
    ckpt = tmp_path / "dead.pth"
    save_cam_net(ckpt, model)
    out = tmp_path / "run"
    code = main(["--out", str(out), "--stages", "make_cam", "--cam-checkpoint", str(ckpt)] + TINY)
    err = capsys.readouterr().err
    assert code == 2 and "make_cam: the maps of all 3 images are zero everywhere" in err
    assert "lower --lr" in err and "they were not kept" in err
    assert not list((out / "make_cam" / "maps").glob("*.npy"))


def test_undefined_precision_is_never_printed_as_a_number(finished, tmp_path, capsys):
    from rib_ext.io import load_npy_dict, save_npy

    out = copy_run(finished, tmp_path)
    for path in (out / "make_cam" / "maps").glob("*.npy"):  # maps that mark nothing
        maps = load_npy_dict(path)
        save_npy(path, {**maps, "high_res": np.zeros_like(maps["high_res"])})
    assert main(["--out", str(out), "--stages", "eval_seed", "--overwrite"] + TINY) == 0
    printed = capsys.readouterr().out
    assert "precision n/a" in printed and "precision is undefined" in printed
    assert "nan" not in printed.lower()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_seed"]["cam"]["precision"] is None


def test_map_checker_names_non_finite_and_some_empty_maps(tmp_path):
    from rib_ext.outputs import BadMapsError, MapChecker

    good = {"keys": np.array([1]), "high_res": np.ones((1, 4, 4), np.float32)}
    empty = {"keys": np.array([0, 2]), "high_res": np.zeros((2, 4, 4), np.float32)}
    no_class = {"keys": np.zeros(0, np.int64), "high_res": np.zeros((0, 4, 4), np.float32)}
    checker = MapChecker("rib", "the adaptation diverged")
    with pytest.raises(BadMapsError, match=r"rib: image a \(classes \[1\]\) got maps with non-finite"):
        checker.check({**good, "high_res": np.full((1, 4, 4), np.nan, np.float32)}, "a")
    for name, maps in (("b", good), ("c", empty), ("d", no_class)):
        checker.check(maps, name)
        checker.written(maps, name)
    with pytest.warns(UserWarning, match=r"rib: 1 of 2 images got maps that are zero .*: c"):
        checker.finish()
    # Resumed with only empty images left to make: the others were made before, it is not the set.
    resumed = MapChecker("rib", "the adaptation diverged", already_done=5)
    resumed.written(empty, "c", tmp_path / "c.npy")
    with pytest.warns(UserWarning, match=r"1 of 1 images"):
        resumed.finish()


# ------------------------------------------------- VOC annotation contents in provenance

def test_voc_description_follows_the_annotation_contents_not_their_dates(finished, tmp_path):
    import os

    from rib_ext.data import build_dataset, load_label_png, save_label_png

    root = tmp_path / "voc"
    shutil.copytree(finished / "data", root)

    def fingerprint():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build_dataset("voc", root, "val").annotation_fingerprint()

    first = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    before = fingerprint()
    xml = root / "Annotations" / f"{first}.xml"
    os.utime(xml, ns=(1, 1))  # a copy without -p: dates change, contents do not
    assert fingerprint() == before
    # A class renamed in the XML: cls_labels.npy is rebuilt from it, and the fingerprint follows.
    text = xml.read_text()
    names = (root / "classes.txt").read_text().split()
    old = next(n for n in names if f"<name>{n}</name>" in text)
    new = next(n for n in names if n != old)
    xml.write_text(text.replace(f"<name>{old}</name>", f"<name>{new}</name>"))
    after_xml = fingerprint()
    assert after_xml != before
    mask_path = root / "SegmentationClass" / f"{first}.png"
    mask = load_label_png(mask_path)
    mask[0, 0] = 0 if mask[0, 0] else 1
    save_label_png(mask_path, mask)
    assert fingerprint() != after_xml
