"""Confident labels: the combination rule by hand, and the two CRF passes on a drawn fixture."""
import numpy as np
import pytest

from rib_ext.irn import IRNConfig, combine_confident, confident_labels

pytest.importorskip("pydensecrf.densecrf")


def test_combination_rule_by_hand():
    fg = np.array([[3, 3, 0, 0, 0]])  # high-threshold pass
    bg = np.array([[3, 5, 3, 0, 5]])  # low-threshold pass
    # fg's class where it has one (even if bg disagrees), 0 where both are background,
    # 255 where only the low-threshold pass saw an object.
    np.testing.assert_array_equal(combine_confident(fg, bg), [[3, 3, 255, 0, 255]])
    assert combine_confident(fg, bg).dtype == np.uint8
    with pytest.raises(ValueError, match="differ in shape"):
        combine_confident(fg, bg[:, :4])


@pytest.fixture
def drawn():
    """A 48x48 image: green background, a grey region holding a red object; one map (class key 2
    -> id 3): 0.9 on the object, 0.15 on the grey around it (between the two thresholds), 0 on
    the green. The colours follow the map so the CRF has no reason to move the regions."""
    img = np.full((48, 48, 3), (40, 140, 40), dtype=np.uint8)
    img[4:40, 2:40] = 128
    img[10:30, 6:24] = (220, 30, 30)
    maps = np.zeros((1, 48, 48), dtype=np.float32)
    maps[0, 4:40, 2:40] = 0.15
    maps[0, 10:30, 6:24] = 0.9
    return img, maps, np.array([2])


def test_confident_labels_on_drawn_fixture(drawn):
    img, maps, keys = drawn
    cfg = IRNConfig()  # 0.30 / 0.05
    out = confident_labels(img, maps, keys, cfg.conf_fg, cfg.conf_bg, cfg.crf)
    assert out.shape == (48, 48) and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 3, 255}
    assert (out[12:28, 8:22] == 3).all()  # the object's core is confident foreground
    assert (out[43:, :] == 0).all() and (out[:, 43:] == 0).all()  # far from any activation
    assert (out[33:37, 10:36] == 255).all()  # the grey band: only the low pass saw something
    assert (out[4:40, 30:38] == 255).all()


def test_thresholds_move_the_uncertain_band(drawn):
    img, maps, keys = drawn
    # conf_bg above the band's 0.15: the band becomes confident background.
    out = confident_labels(img, maps, keys, 0.30, 0.2)
    assert (out[33:37, 10:36] == 0).all() and (out[12:28, 8:22] == 3).all()
    # conf_fg below 0.15: the band is foreground in both passes.
    out = confident_labels(img, maps, keys, 0.1, 0.05)
    assert (out[33:37, 10:36] == 3).all()


def test_image_without_maps_is_all_background():
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    out = confident_labels(img, np.zeros((0, 8, 8), np.float32), np.array([], dtype=np.int64), .3, .05)
    assert (out == 0).all()
