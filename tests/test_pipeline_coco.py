"""The pipeline on a tiny COCO folder (tests/test_data_coco.py's fixture: three 20x30 images, one
with no class): an edited annotation stops the reuse of the stages made from it,
and the images with no class get keys-only maps and count in the evaluation, as in the authors'
code."""
import json
import warnings

import numpy as np

from rib_ext import pipeline
from rib_ext.io import load_npy_dict
from coco_files import PERSON, STEMS
from pipeline_runs import main

COCO_TINY = ["--dataset", "coco", "--preset", "demo", "--demo-size", "32", "--epochs", "1",
        "--rib-steps", "2", "--num-others", "1", "--thresholds", "0.2", "0.4", "0.1",
        "--scales", "1.0", "--rib.other_crop", "32"]


def test_edited_coco_category_stops_the_reuse_of_train_cam_and_make_cam(coco_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--out", str(out), "--root", str(coco_root), "--stages", "train_cam,make_cam"] + COCO_TINY
    assert main(args) == 0
    ann = coco_root / "annotations" / "instances_train2014.json"
    data = json.loads(ann.read_text())
    data["annotations"][3]["category_id"] = PERSON  # image 25: a crowd of dogs becomes people
    ann.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "inputs.data:train.labels_sha256: the dataset's image-level labels have changed" \
        in err and "--overwrite" in err
    assert main(args + ["--overwrite"]) == 0
    maps = load_npy_dict(out / "make_cam" / "maps" / f"{STEMS[25]}.npy")
    assert maps["keys"].tolist() == [0]  # the new class: person


def test_images_of_no_class_get_keys_only_maps_and_count_in_the_evaluation(coco_root, tmp_path):
    out = tmp_path / "run"
    assert main(["--out", str(out), "--root", str(coco_root),
                 "--stages", "train_cam,make_cam,rib,eval_seed"] + COCO_TINY) == 0
    empty = STEMS[30]  # the fixture's image with no annotation
    for stage in ("make_cam", "rib"):
        maps = load_npy_dict(out / stage / "maps" / f"{empty}.npy")
        assert maps["keys"].shape == (0,) and maps["high_res"].shape == (0, 20, 30)
        assert tuple(maps["cam"].shape) == (0, 5, 8)
    record = json.loads((out / "rib" / "records" / f"{empty}.json").read_text())
    assert record["stop"] == "no_class" and record["steps"] == 0
    for name in ("cam", "rib"):
        result = json.loads((out / "eval_seed" / name / "result.json").read_text())
        assert result["num_images"] == 3  # the authors' COCO evaluation counts it
    # Every pixel of the three images that is not ignored (255) is counted.
    conf = np.load(out / "eval_seed" / "cam" / "confusion.npy")
    assert conf.sum() == 3 * 20 * 30 - _ignored(coco_root)


def _ignored(coco_root) -> int:
    from rib_ext.data import build_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = build_dataset("coco", coco_root, "train", keep_unlabelled=True)
    return sum(int((ds.mask(i) == 255).sum()) for i in range(len(ds)))


def test_paper_preset_drops_the_images_of_no_class(coco_root, tmp_path):
    from rib_ext.stages.context import RunContext

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        authors = RunContext(pipeline.config_from_argv(
            ["--out", str(tmp_path / "a"), "--root", str(coco_root)] + COCO_TINY))
        paper = RunContext(pipeline.config_from_argv(
            ["--out", str(tmp_path / "p"), "--root", str(coco_root), "--rib-behaviour", "paper"] + COCO_TINY))
        assert STEMS[30] in authors.eval_set.ids and STEMS[30] in authors.pool_set.ids
        assert STEMS[30] not in paper.eval_set.ids and STEMS[30] not in authors.train_set.ids
