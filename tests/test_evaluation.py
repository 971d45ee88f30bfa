import json
import math

import numpy as np
import pytest

from rib_ext.config import EvalSeedConfig
from rib_ext.evaluation import (
    ThresholdSweep,
    confusion_matrix,
    evaluate_label_maps,
    foreground_precision_recall,
    iou_from_confusion,
    miou,
    plot_sweep,
    seed_prediction,
    sweep_thresholds,
    write_report,
)

# Hand-worked example: 4 classes, class 3 absent from the ground truth and (after the ignore) from
# the prediction; the pixel at (1, 3) is ignored even though it predicts 3.
GT = np.array([[0, 0, 1, 1],
               [2, 2, 1, 255]])
PRED = np.array([[0, 1, 1, 1],
                 [2, 1, 2, 3]])
# Valid (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,1) (1,2)
CONF = np.array([[1, 1, 0, 0],
                 [0, 2, 1, 0],
                 [0, 1, 1, 0],
                 [0, 0, 0, 0]])


def test_confusion_matrix_hand_example():
    conf = confusion_matrix(PRED, GT, num_classes=4)
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, CONF)


def test_iou_hand_example():
    # row sums (gt) 2, 3, 2, 0; column sums (pred) 1, 4, 2, 0
    # IoU0 = 1 / (2 + 1 - 1) = 1/2; IoU1 = 2 / (3 + 4 - 2) = 2/5; IoU2 = 1 / (2 + 2 - 1) = 1/3
    iou = iou_from_confusion(CONF)
    np.testing.assert_allclose(iou[:3], [1 / 2, 2 / 5, 1 / 3])
    assert math.isnan(iou[3])
    assert miou(CONF) == pytest.approx((1 / 2 + 2 / 5 + 1 / 3) / 3)  # 37/90


def test_precision_recall_hand_example():
    # class 1: P = 2/4, R = 2/3; class 2: P = 1/2, R = 1/2; class 3 undefined; background excluded
    # mean P = 1/2, mean R = 7/12, F1 = 2 * (1/2) * (7/12) / (1/2 + 7/12) = 7/13
    pr = foreground_precision_recall(CONF)
    assert pr["precision"] == pytest.approx(1 / 2)
    assert pr["recall"] == pytest.approx(7 / 12)
    assert pr["f1"] == pytest.approx(7 / 13)


def test_confusion_matrix_errors():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(PRED[:, :3], GT, 4)
    with pytest.raises(ValueError, match=r"prediction holds labels \[7\]"):
        confusion_matrix(np.where(GT == 0, 7, 0), GT, 4)
    with pytest.raises(ValueError, match=r"ground truth holds labels \[9\]"):
        confusion_matrix(PRED, np.where(GT == 2, 9, GT), 4)


def test_seed_prediction_class_ids_and_ties():
    maps = np.array([[[0.9, 0.2, 0.30, 0.5]],
                     [[0.1, 0.6, 0.25, 0.5]]], dtype=np.float32)
    keys = np.array([4, 11])
    # pixel 2: best 0.30 == threshold -> background (IRN's padded argmax puts the plane first);
    # pixel 3: tie between the maps -> the first key.
    np.testing.assert_array_equal(seed_prediction(maps, keys, 0.30), [[5, 12, 0, 5]])
    np.testing.assert_array_equal(seed_prediction(maps[:0], keys[:0], 0.3), [[0, 0, 0, 0]])
    with pytest.raises(ValueError, match="keys"):
        seed_prediction(maps, keys[:1], 0.3)


def test_sweep_thresholds_are_exact():
    t = sweep_thresholds(EvalSeedConfig())
    assert len(t) == 30 and t[0] == 0.20 and t[-1] == 0.49
    assert 0.3 in t.tolist() and 0.35 in t.tolist()
    assert len(sweep_thresholds(EvalSeedConfig(0.1, 0.3, 0.05))) == 5


def test_sweep_best_threshold_on_constructed_example():
    # Background pixels score 0.39 and foreground ones 0.40: only t = 0.39 separates them
    # (t = 0.38 makes everything class 5, t = 0.40 makes everything background).
    gt = np.array([[0, 0, 5, 5, 255]])
    maps = np.array([[[0.39, 0.39, 0.40, 0.40, 0.9]]], dtype=np.float32)
    sweep = ThresholdSweep(num_classes=21)
    sweep.update(maps, np.array([4]), gt)
    res = sweep.result()
    assert res["best_threshold"] == 0.39
    assert res["miou"] == 1.0
    per_t = dict(zip(res["thresholds"], res["per_threshold_miou"]))
    # t = 0.38: IoU_bg = 0, IoU_5 = 2/4; t = 0.40: IoU_bg = 2/4, IoU_5 = 0
    assert per_t[0.38] == pytest.approx(0.25) and per_t[0.40] == pytest.approx(0.25)
    assert res["precision"] == res["recall"] == res["f1"] == 1.0
    assert res["confusion"][0, 0] == 2 and res["confusion"][5, 5] == 2


def _random_image(rng, num_classes):
    h, w = rng.integers(5, 30, size=2)
    k = int(rng.integers(0, 4))
    keys = np.sort(rng.choice(num_classes - 1, size=k, replace=False))
    # Values on the 0.01 grid, so that many pixels tie with a threshold exactly.
    maps = (rng.integers(0, 101, size=(k, h, w)) / 100).astype(np.float32)
    gt = rng.integers(0, num_classes, size=(h, w))
    gt[rng.random((h, w)) < 0.1] = 255
    return maps, keys, gt


def test_sweep_equals_naive_loop():
    rng = np.random.default_rng(0)
    num_classes = 21
    images = [_random_image(rng, num_classes) for _ in range(12)]
    sweep = ThresholdSweep(num_classes)
    for maps, keys, gt in images:
        sweep.update(maps, keys, gt)
    for i, t in enumerate(sweep.thresholds):
        naive = sum(confusion_matrix(seed_prediction(m, k, t), g, num_classes)
                    for m, k, g in images)
        np.testing.assert_array_equal(sweep.confusions[i], naive, err_msg=f"threshold {t}")
    # Partial sweeps merge by summation.
    a, b = ThresholdSweep(num_classes), ThresholdSweep(num_classes)
    for j, (maps, keys, gt) in enumerate(images):
        (a if j % 2 else b).update(maps, keys, gt)
    a.merge(b)
    np.testing.assert_array_equal(a.confusions, sweep.confusions)
    assert a.result()["best_threshold"] == sweep.result()["best_threshold"]


def test_sweep_errors():
    sweep = ThresholdSweep(21)
    with pytest.raises(ValueError, match="no images"):
        sweep.result()
    with pytest.raises(ValueError, match="ground truth"):
        sweep.update(np.zeros((1, 4, 4), np.float32), [0], np.zeros((4, 5), np.int64))
    with pytest.raises(ValueError, match="NaN"):
        sweep.update(np.full((1, 4, 4), np.nan, np.float32), [0], np.zeros((4, 4), np.int64))


def test_evaluate_label_maps_sums_images():
    res = evaluate_label_maps([(PRED, GT), (GT.clip(0, 3), GT)], num_classes=4)
    np.testing.assert_array_equal(res["confusion"], CONF + np.diag([2, 3, 2, 0]))
    assert res["num_images"] == 2 and "best_threshold" not in res


def test_report_files(tmp_path):
    sweep = ThresholdSweep(num_classes=4)
    sweep.update(np.array([[[0.1, 0.35, 0.8, 0.6]]], np.float32), [0], np.array([[0, 1, 1, 255]]))
    res = sweep.result()
    names = ["background", "cat", "dog", "cow"]
    paths = write_report(tmp_path / "eval", res, names, title="Seed")
    assert sorted(p.name for p in paths) == ["confusion.npy", "result.json", "result.md"]
    data = json.loads((tmp_path / "eval" / "result.json").read_text())
    assert data["best_threshold"] == res["best_threshold"] == 0.2
    assert data["per_class_iou"] == {"background": 1.0, "cat": 1.0, "dog": None, "cow": None}
    assert len(data["per_threshold_miou"]) == 30
    text = (tmp_path / "eval" / "result.md").read_text()
    assert "Best background threshold: 0.20" in text and "| cat | 100.00 |" in text
    assert "| dog | - |" in text
    np.testing.assert_array_equal(np.load(tmp_path / "eval" / "confusion.npy"), res["confusion"])
    png = plot_sweep(tmp_path / "eval" / "sweep.png", res)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="class names"):
        write_report(tmp_path / "x", res, names[:3])
    with pytest.raises(ValueError, match="sweep"):
        plot_sweep(tmp_path / "y.png", evaluate_label_maps([(PRED, GT)], 4))
