"""Intermediate label PNGs read back as H x W class indices, as IRN-derived code reads them with
``imageio.imread`` (imageio is not installed here: Pillow's ``np.asarray(Image.open(...))`` returns
the same for an "L" PNG, while for a palette PNG imageio would expand the colours to H x W x 3)."""
import numpy as np
import torch
from PIL import Image

from rib_ext.config import IRNConfig
from rib_ext.data import load_label_png, save_index_png, save_label_png
from rib_ext.io import save_npy
from rib_ext.irn.ir_label import ir_label_stage


def _read_like_imageio(path):
    with Image.open(path) as im:
        return im.mode, np.asarray(im)


def test_index_png_reads_back_as_indices(tmp_path):
    arr = np.random.default_rng(0).integers(0, 21, (9, 13)).astype(np.uint8)
    arr[0, :3] = 255
    save_index_png(tmp_path / "a.png", arr)
    mode, back = _read_like_imageio(tmp_path / "a.png")
    assert mode == "L" and back.shape == (9, 13)
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_array_equal(load_label_png(tmp_path / "a.png"), arr)
    save_label_png(tmp_path / "p.png", arr)  # the test-server format stays a VOC palette PNG
    assert _read_like_imageio(tmp_path / "p.png")[0] == "P"


class _OneImage:
    ids, num_classes = ["x"], 20

    def image(self, i):
        return np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)

    def labels(self, i):  # class 4, the map's key
        return np.eye(20, dtype=np.float32)[4]


def test_ir_label_pngs_are_grayscale_indices(tmp_path):
    hr = np.zeros((1, 24, 32), np.float32)
    hr[0, 4:16, 6:20] = 1.0
    (tmp_path / "maps").mkdir()
    save_npy(tmp_path / "maps" / "x.npy", {"keys": np.array([4]), "cam": torch.zeros(1, 6, 8),
                                           "high_res": hr})
    ir_label_stage(_OneImage(), tmp_path / "maps", tmp_path / "ir", IRNConfig(device="cpu"))
    mode, labels = _read_like_imageio(tmp_path / "ir" / "x.png")
    assert mode == "L" and labels.shape == (24, 32)
    assert set(np.unique(labels)) <= {0, 5, 255} and (labels == 5).any()
