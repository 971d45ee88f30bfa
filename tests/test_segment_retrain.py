"""The re-training technique's pure functions and score files, on hand-made arrays."""
import numpy as np
import pytest

from rib_ext.io import save_npy
from rib_ext.segment import fill_ignored, load_scores, score_labels


def test_score_labels_by_hand():
    # Two maps for classes 3 and 7 (label values 4 and 8) over a 2x4 image.
    scores = np.array([[[0.9, 0.31, 0.25, 0.1],
                        [0.0, 0.5, 0.3, 0.19]],
                       [[0.2, 0.35, 0.1, 0.1],
                        [0.2, 0.6, 0.05, 0.2]]], dtype=np.float32)
    expected = np.array([[4, 8, 255, 0],
                         [255, 8, 255, 255]], dtype=np.uint8)
    # (0,0) 0.9 > 0.3 -> class 3; (0,1) best 0.35 -> class 7; (0,2) 0.25 unsure; (0,3) all < 0.2;
    # (1,0) best 0.2 is not < 0.2 -> unsure; (1,2) 0.3 is not > 0.3 -> unsure; (1,3) 0.2 -> unsure.
    out = score_labels(scores, [3, 7])
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_score_labels_thresholds_and_no_maps():
    scores = np.array([[[0.5, 0.15, 0.05]]], dtype=np.float32)
    np.testing.assert_array_equal(score_labels(scores, [0], fg=0.6, bg=0.1), [[255, 255, 0]])
    np.testing.assert_array_equal(score_labels(scores, [0], fg=0.4, bg=0.2), [[1, 0, 0]])
    np.testing.assert_array_equal(score_labels(np.zeros((0, 2, 3)), []), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="one key per map"):
        score_labels(scores, [0, 1])
    with pytest.raises(ValueError, match="bg <= fg"):
        score_labels(scores, [0], fg=0.1, bg=0.2)


def test_fill_ignored_by_hand():
    labels = np.array([[0, 255, 3], [255, 255, 1]], dtype=np.uint8)
    prediction = np.array([[5, 2, 2], [0, 4, 4]], dtype=np.uint8)
    np.testing.assert_array_equal(fill_ignored(labels, prediction), [[0, 2, 3], [0, 4, 1]])
    with pytest.raises(ValueError, match="differ in size"):
        fill_ignored(labels, prediction[:, :2])


def test_load_scores_reads_score_or_irn_high_res_and_names_bad_files(tmp_path):
    scores = np.random.default_rng(0).random((2, 3, 4)).astype(np.float32)
    save_npy(tmp_path / "a.npy", {"keys": np.array([1, 4]), "score": scores})
    save_npy(tmp_path / "b.npy", {"keys": np.array([1, 4]), "cam": scores[:, :1, :1], "high_res": scores})
    for name in ("a", "b"):
        keys, got = load_scores(tmp_path / f"{name}.npy", 5, (3, 4))
        np.testing.assert_array_equal(keys, [1, 4])
        np.testing.assert_array_equal(got, scores)
    with pytest.raises(ValueError, match=r"a\.npy.*shape"):
        load_scores(tmp_path / "a.npy", 5, (4, 4))
    with pytest.raises(ValueError, match=r"a\.npy.*another dataset"):
        load_scores(tmp_path / "a.npy", 3, (3, 4))
    save_npy(tmp_path / "c.npy", {"keys": np.array([0]), "score": scores[:1] * 7})
    with pytest.raises(ValueError, match=r"c\.npy.*\[0, 1\]"):
        load_scores(tmp_path / "c.npy", 5, (3, 4))
    save_npy(tmp_path / "d.npy", {"keys": np.array([0])})
    with pytest.raises(ValueError, match=r"d\.npy.*'score'"):
        load_scores(tmp_path / "d.npy", 5, (3, 4))
