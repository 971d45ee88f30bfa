"""The segment stage end to end on a few generated images: re-training, inference, CRF, reports."""
import json

import numpy as np
import pytest
from PIL import Image

from rib_ext.config import DemoDataConfig
from rib_ext.data import VOCDataset, generate_demo, load_label_png, save_label_png
from rib_ext.io import save_npy
from rib_ext.segment import (VOC_SERVER_DIR, SegmentConfig, infer_stage, load_deeplab, score_labels,
                             read_log, segment_stage)

from factories import TINY_SEGMENT
from gloo_ranks import free_port, gloo_rank


pytest.importorskip("pydensecrf.densecrf")

# The tiny networks start from random weights on purpose.
pytestmark = [pytest.mark.filterwarnings("ignore:DeepLab-v2 resnet18 backbone randomly initialised"),
              pytest.mark.usefixtures("one_thread")]

TINY = dict(TINY_SEGMENT, iterations=2, use_crf=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = generate_demo(tmp_path_factory.mktemp("seg_stage") / "demo",
                         DemoDataConfig(seed=3, num_train=3, num_val=2, image_size=36))
    return VOCDataset(root, "train"), VOCDataset(root, "val")


def _inputs(train, folder):
    """Pseudo masks and random-walk scores made from the ground truth: 0.9 on each object, 0.25
    (unsure) on the void outline, 0 elsewhere."""
    labels, scores = folder / "labels", folder / "scores"
    for i, name in enumerate(train.ids):
        mask = train.mask(i)
        save_label_png(labels / f"{name}.png", mask)
        keys = np.nonzero(train.labels(i))[0]
        maps = np.stack([(mask == k + 1) * 0.9 + (mask == 255) * 0.25 for k in keys]).astype(np.float32)
        save_npy(scores / f"{name}.npy", {"keys": keys, "high_res": maps})
    return labels, scores


class WithoutMasks:
    """A dataset whose images have no ground truth, like the VOC test set."""

    def __init__(self, dataset):
        self._ds = dataset
        self.ids, self.class_names, self.num_classes = dataset.ids, dataset.class_names, dataset.num_classes

    def image(self, i):
        return self._ds.image(i)

    def mask(self, i):
        return None


def test_segment_stage_end_to_end(demo, tmp_path):
    train, val = demo
    labels, scores = _inputs(train, tmp_path)
    out = tmp_path / "segment"
    summary = segment_stage(train, labels, val, out, SegmentConfig(**TINY), score_dir=scores)

    assert summary["retrain"] and summary["train_images"] == 3
    assert 0.0 <= summary["miou"] <= 1.0 and summary["num_images"] == 2
    assert set(summary["per_class_iou"]) == {"background", *train.class_names}
    assert json.loads((out / "summary.json").read_text())["miou"] == summary["miou"]

    # Re-training: confident labels from the scores, then filled from the first network.
    name = train.ids[0]
    keys = np.nonzero(train.labels(0))[0]
    mask = train.mask(0)
    maps = np.stack([(mask == k + 1) * 0.9 + (mask == 255) * 0.25 for k in keys])
    confident = load_label_png(out / "retrain" / "confident_labels" / f"{name}.png")
    np.testing.assert_array_equal(confident, score_labels(maps, keys))
    assert (confident == 255).any()
    filled = load_label_png(out / "retrain" / "filled_labels" / f"{name}.png")
    first = load_label_png(out / "retrain" / "first_predictions" / f"{name}.png")
    assert not (filled == 255).any()
    np.testing.assert_array_equal(filled[confident != 255], confident[confident != 255])
    np.testing.assert_array_equal(filled[confident == 255], first[confident == 255])
    assert (out / "retrain" / "first" / "model.pth").is_file()
    assert [r["iteration"] for r in read_log(out / "train" / "log.csv")] == [1, 2]

    # Predictions: palette PNGs of class ids at the image size; the report.
    for i, vid in enumerate(val.ids):
        with Image.open(out / "val" / "predictions" / f"{vid}.png") as png:
            assert png.mode == "P" and png.size[::-1] == val.image(i).shape[:2]
            assert np.asarray(png).max() <= train.num_classes
    report = json.loads((out / "val" / "result.json").read_text())
    assert report["miou"] == pytest.approx(summary["miou"])
    assert (out / "val" / "result.md").is_file() and (out / "val" / "confusion.npy").is_file()

    # A rerun resumes: nothing is trained or predicted again.
    stamp = (out / "val" / "predictions" / f"{val.ids[0]}.png").stat().st_mtime_ns
    again = segment_stage(train, labels, val, out, SegmentConfig(**TINY), score_dir=scores)
    assert again["miou"] == summary["miou"] and again["train"]["skipped_existing"]
    assert (out / "val" / "predictions" / f"{val.ids[0]}.png").stat().st_mtime_ns == stamp

    # Images without ground truth go to the VOC evaluation server's layout, unscored.
    model = load_deeplab(out / "train" / "model.pth")
    test = infer_stage(model, WithoutMasks(val), tmp_path / "test_out", SegmentConfig(**{**TINY, "use_crf": False}),
                       split="test")
    assert test["miou"] is None
    server = tmp_path / "test_out" / "test" / VOC_SERVER_DIR
    assert sorted(p.name for p in server.iterdir()) == sorted(f"{v}.png" for v in val.ids)


def test_without_scores_trains_once_on_the_pseudo_masks(demo, tmp_path):
    train, _ = demo
    labels, _ = _inputs(train, tmp_path)
    with pytest.warns(UserWarning, match="re-training needs the random-walk scores"):
        summary = segment_stage(train, labels, None, tmp_path / "out",
                                SegmentConfig(**{**TINY, "iterations": 1}))
    assert not summary["retrain"] and summary["miou"] is None
    assert not (tmp_path / "out" / "retrain").exists()
    assert (tmp_path / "out" / "train" / "model.pth").is_file()


def _segment_on_rank(rank, world, port, root, labels, scores, out):
    import warnings

    with gloo_rank(rank, world, port), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segment_stage(VOCDataset(root, "train"), labels, VOCDataset(root, "val"), out,
                      SegmentConfig(**TINY), score_dir=scores)


@pytest.mark.slow  # several ranks
def test_retrain_labels_are_written_by_every_rank_in_shares(demo, tmp_path):
    """Under two gloo ranks each writes its share of the confident and filled labels (and of the
    first network's predictions): every image gets each file, made by the same rules as in one
    process, and the second network trains on them."""
    import torch.multiprocessing as mp

    train, _ = demo
    labels, scores = _inputs(train, tmp_path)
    out = tmp_path / "segment"
    mp.spawn(_segment_on_rank, args=(2, free_port(), str(train.root), labels, scores, out),
             nprocs=2, join=True)
    for i, name in enumerate(train.ids):
        keys = np.nonzero(train.labels(i))[0]
        mask = train.mask(i)
        maps = np.stack([(mask == k + 1) * 0.9 + (mask == 255) * 0.25 for k in keys])
        confident = load_label_png(out / "retrain" / "confident_labels" / f"{name}.png")
        np.testing.assert_array_equal(confident, score_labels(maps, keys))
        filled = load_label_png(out / "retrain" / "filled_labels" / f"{name}.png")
        first = load_label_png(out / "retrain" / "first_predictions" / f"{name}.png")
        np.testing.assert_array_equal(filled[confident != 255], confident[confident != 255])
        np.testing.assert_array_equal(filled[confident == 255], first[confident == 255])
    assert json.loads((out / "summary.json").read_text())["retrain"]
