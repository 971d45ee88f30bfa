import sys

import numpy as np
import pytest

from rib_ext.config import CRFConfig
from rib_ext.crf import crf_from_maps, crf_refine_labels

H, W = 40, 48


def _two_regions():
    img = np.zeros((H, W, 3), np.uint8)
    img[:, : W // 2] = (200, 40, 40)
    img[:, W // 2:] = (30, 60, 210)
    truth = np.zeros((H, W), np.int64)
    truth[:, W // 2:] = 1
    return img, truth


@pytest.fixture
def densecrf():
    return pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf not installed "
                               "(pip install pydensecrf2)")


def test_crf_cleans_label_noise(densecrf):
    img, truth = _two_regions()
    rng = np.random.default_rng(0)
    noisy = truth.copy()
    flip = rng.random((H, W)) < 0.2
    noisy[flip] = 1 - noisy[flip]
    out = crf_refine_labels(img, noisy, 2)
    assert out.shape == (H, W)
    assert (noisy == truth).mean() < 0.85
    assert (out == truth).mean() > 0.99


def test_crf_snaps_a_shifted_boundary_to_the_colour_edge(densecrf):
    # Only the bilateral (colour) term can move the boundary onto the colour edge.
    img, truth = _two_regions()
    shifted = np.zeros((H, W), np.int64)
    shifted[:, W // 2 + 4:] = 1
    assert (crf_refine_labels(img, shifted, 2) == truth).all()
    no_bilateral = crf_refine_labels(img, shifted, 2, CRFConfig(bilateral_compat=0.0))
    assert (no_bilateral == truth).mean() < 0.95


def test_crf_accepts_non_contiguous_image(densecrf):
    img, truth = _two_regions()
    flipped = img[:, ::-1]
    out = crf_refine_labels(flipped, truth[:, ::-1], 2)
    np.testing.assert_array_equal(out, truth[:, ::-1])


def test_crf_from_maps_returns_class_ids(densecrf):
    # Red left half (class 4), blue top right (class 11), green bottom right (background); the
    # maps cover each object region only partly and the CRF grows them to the colour edges.
    img = np.zeros((H, W, 3), np.uint8)
    img[:, : W // 2] = (200, 40, 40)
    img[: H // 2, W // 2:] = (30, 60, 210)
    img[H // 2:, W // 2:] = (40, 190, 60)
    truth = np.zeros((H, W), np.int64)
    truth[:, : W // 2] = 5
    truth[: H // 2, W // 2:] = 12
    maps = np.zeros((2, H, W), np.float32)
    maps[0, :, : W // 2 - 5] = 0.9
    maps[1, : H // 2 - 4, W // 2 + 4:] = 0.8
    keys = np.array([4, 11])
    out = crf_from_maps(img, maps, keys, threshold=0.3)
    assert set(np.unique(out).tolist()) == {0, 5, 12}
    seed_accuracy = (crf_from_maps(img, maps, keys, 0.3, CRFConfig(iterations=0)) == truth).mean()
    assert seed_accuracy < 0.9
    assert (out == truth).mean() > 0.99
    assert crf_from_maps(img, maps, [4, 11], cfg=CRFConfig(threshold=0.95)).max() == 0


def test_crf_input_errors():
    img, truth = _two_regions()
    with pytest.raises(ValueError, match="uint8"):
        crf_refine_labels(img.astype(np.float32), truth, 2)
    with pytest.raises(ValueError, match="outside 0..1"):
        crf_refine_labels(img, truth + 1, 2)
    with pytest.raises(ValueError, match="threshold"):
        crf_from_maps(img, np.zeros((1, H, W), np.float32), [3])
    with pytest.raises(ValueError, match="one key per map"):
        crf_from_maps(img, np.zeros((2, H, W), np.float32), [3], threshold=0.3)
    # A single label needs no CRF (and no pydensecrf).
    np.testing.assert_array_equal(crf_refine_labels(img, np.zeros((H, W), int), 1), 0)


def test_missing_pydensecrf_message(monkeypatch):
    img, truth = _two_regions()
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(ImportError, match="pip install pydensecrf2"):
        crf_refine_labels(img, truth, 2)


def test_read_only_image_is_accepted():
    """Images decoded by PIL arrive as read-only arrays; pydensecrf needs a writable buffer."""
    pytest.importorskip("pydensecrf.densecrf")
    img = np.zeros((6, 8, 3), np.uint8)
    img[:, 4:] = 200
    img.setflags(write=False)
    labels = np.zeros((6, 8), np.int64)
    labels[:, 4:] = 1
    out = crf_refine_labels(img, labels, 2)
    assert out.shape == (6, 8)
