"""RIB-Sal: disagreements with the saliency map become 255; errors name the bad file."""
import numpy as np
import pytest
from PIL import Image

from rib_ext.data import load_label_png, save_label_png
from rib_ext.irn import IRNConfig, SaliencyError, apply_saliency, refine_with_saliency
from rib_ext.irn.saliency import load_saliency


class TinyDataset:
    """The part of the dataset interface apply_saliency uses."""

    def __init__(self, names, size=(4, 5)):
        self.ids = list(names)
        self.size = size

    def image_size(self, i):
        return self.size


def test_refine_by_hand():
    labels = np.array([[0, 0, 3, 3, 255],
                       [0, 7, 7, 0, 255]], dtype=np.uint8)
    sal = np.array([[0, 200, 200, 10, 200],
                    [127, 128, 255, 0, 0]], dtype=np.uint8)
    out = refine_with_saliency(labels, sal, threshold=127)
    # bg & not salient: kept; bg & salient (200): 255; fg & salient: kept; fg & 10: 255;
    # already 255: kept; 127 is not above the threshold (bg agrees), 128 is (fg agrees).
    np.testing.assert_array_equal(out, [[0, 255, 3, 255, 255],
                                        [0, 7, 7, 0, 255]])
    np.testing.assert_array_equal(labels[0], [0, 0, 3, 3, 255])  # input untouched
    # A higher threshold makes 128 and 200 background: the fg pixels there become 255.
    out = refine_with_saliency(labels, sal, threshold=220)
    np.testing.assert_array_equal(out, [[0, 0, 255, 255, 255],
                                        [0, 255, 7, 0, 255]])


def _write(folder, name, arr, mode="L"):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=None).convert(mode).save(folder / f"{name}.png")


def test_load_saliency_errors_name_the_file(tmp_path):
    with pytest.raises(SaliencyError, match=r"a\.png: saliency map not found"):
        load_saliency(tmp_path / "a.png", (4, 5))
    _write(tmp_path, "b", np.zeros((3, 5), np.uint8))
    with pytest.raises(SaliencyError, match=r"b\.png: saliency map is 3x5 .* image is 4x5"):
        load_saliency(tmp_path / "b.png", (4, 5))
    (tmp_path / "c.png").write_bytes(b"not a png")
    with pytest.raises(SaliencyError, match=r"c\.png: cannot read"):
        load_saliency(tmp_path / "c.png")
    # Colour saliency PNGs are read by grey level.
    _write(tmp_path, "d", np.full((4, 5, 3), 200, np.uint8), mode="RGB")
    assert (load_saliency(tmp_path / "d.png", (4, 5)) == 200).all()


@pytest.fixture
def folders(tmp_path):
    labels = np.array([[0, 0, 1, 1, 1]] * 4, dtype=np.uint8)
    sal = np.array([[0, 255, 255, 255, 0]] * 4, dtype=np.uint8)
    for name in ("x", "y"):
        save_label_png(tmp_path / "masks" / f"{name}.png", labels)
        _write(tmp_path / "sal", name, sal)
    return tmp_path


def test_apply_saliency_writes_and_resumes(folders):
    ds = TinyDataset(["x", "y"])
    out = folders / "out"
    summary = apply_saliency(ds, folders / "masks", folders / "sal", out, IRNConfig())
    assert summary["written"] == 2 and summary["skipped_existing"] == 0
    assert summary["newly_ignored_fraction"] == pytest.approx(2 / 5)
    np.testing.assert_array_equal(load_label_png(out / "x.png")[0], [0, 255, 1, 1, 255])
    again = apply_saliency(ds, folders / "masks", folders / "sal", out, IRNConfig())
    assert again["written"] == 0 and again["skipped_existing"] == 2
    with pytest.raises(ValueError, match="other settings"):
        apply_saliency(ds, folders / "masks", folders / "sal", out, IRNConfig(saliency_threshold=10))


def test_apply_saliency_missing_or_wrong_size(folders):
    (folders / "sal" / "y.png").unlink()
    with pytest.raises(SaliencyError, match=r"sal/y\.png: saliency map not found \(1 of 2"):
        apply_saliency(TinyDataset(["x", "y"]), folders / "masks", folders / "sal",
                       folders / "out1")
    _write(folders / "sal", "x", np.zeros((6, 5), np.uint8))
    with pytest.raises(SaliencyError, match=r"sal/x\.png: saliency map is 6x5 .* image is 4x5"):
        apply_saliency(TinyDataset(["x"]), folders / "masks", folders / "sal", folders / "out2")
    with pytest.raises(SaliencyError, match=r"masks/x\.png: mask is 4x5 but the image is 6x5"):
        apply_saliency(TinyDataset(["x"], size=(6, 5)), folders / "masks", folders / "sal",
                       folders / "out4")
    with pytest.raises(SaliencyError, match="saliency folder not found"):
        apply_saliency(TinyDataset(["x"]), folders / "masks", folders / "nope", folders / "out3")
