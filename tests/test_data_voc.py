"""VOC layout: loaders, labels from every source, and a DatasetError naming the file for each bad input."""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from rib_ext.data import (
    VOC_CLASSES,
    DatasetError,
    VOCDataset,
    build_dataset,
    labels_from_mask,
    labels_from_xml,
    load_cls_labels,
    load_label_png,
    load_rgb,
    read_id_list,
    save_label_png,
    voc_palette,
    write_cls_labels,
)

H, W = 40, 52
K = len(VOC_CLASSES)
CLS = {n: i for i, n in enumerate(VOC_CLASSES)}

XML = """<annotation>
  <folder>VOC2012</folder>
  <filename>{id}.jpg</filename>
  <size><width>52</width><height>40</height><depth>3</depth></size>
  <segmented>1</segmented>
{objects}</annotation>
"""
OBJ = """  <object>
    <name>{name}</name><pose>Left</pose><truncated>0</truncated><difficult>{difficult}</difficult>
    <bndbox><xmin>3</xmin><ymin>4</ymin><xmax>20</xmax><ymax>30</ymax></bndbox>
  </object>
"""

# id -> (split, [(class, difficult)])
SCENES = {
    "2007_000001": ("train", [("dog", 0), ("person", 1)]),
    "2007_000002": ("train", [("cat", 0)]),
    "2008_000003": ("train", [("aeroplane", 0), ("aeroplane", 0)]),
    "2009_000004": ("val", [("car", 0)]),
}


def _onehot(*names):
    v = np.zeros(K, np.float32)
    for n in names:
        v[CLS[n]] = 1
    return v


EXPECTED = {i: _onehot(*[n for n, _ in objs]) for i, (_, objs) in SCENES.items()}


def _mask_for(names, seed):
    """Each class a horizontal band, with a 255 border around it like VOC's outlines."""
    mask = np.zeros((H, W), np.uint8)
    for k, name in enumerate(dict.fromkeys(names)):
        top = 4 + 12 * k
        mask[top - 1:top + 9, 4 + seed:30 + seed] = 255
        mask[top:top + 8, 5 + seed:29 + seed] = CLS[name] + 1
    return mask


def write_jpeg(path, arr, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG", quality=95, **kw)


def write_xml(root, image_id, objs):
    body = "".join(OBJ.format(name=n, difficult=d) for n, d in objs)
    path = root / "Annotations" / f"{image_id}.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(XML.format(id=image_id, objects=body))


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "VOC2012"
    rng = np.random.default_rng(0)
    for n, (image_id, (split, objs)) in enumerate(SCENES.items()):
        write_jpeg(root / "JPEGImages" / f"{image_id}.jpg", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        write_xml(root, image_id, objs)
        save_label_png(root / "SegmentationClass" / f"{image_id}.png", _mask_for([name for name, _ in objs], n))
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for split in ("train", "val"):
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i, (s, _) in SCENES.items() if s == split))
    return root


def train_ids():
    return [i for i, (s, _) in SCENES.items() if s == "train"]


# ---------------------------------------------------------------------------------------------
# Labels


def test_labels_from_xml_include_difficult_and_follow_list_order(voc_root):
    ds = VOCDataset(voc_root, "train")
    assert ds.ids == train_ids()
    assert ds.num_classes == 20 and ds.class_names == VOC_CLASSES
    for i, image_id in enumerate(ds.ids):
        np.testing.assert_array_equal(ds.labels(i), EXPECTED[image_id])
        assert ds.labels(i).dtype == np.float32


def test_labels_fall_back_to_masks_without_annotations(voc_root):
    shutil.rmtree(voc_root / "Annotations")
    ds = VOCDataset(voc_root, "train")
    for i, image_id in enumerate(ds.ids):
        np.testing.assert_array_equal(ds.labels(i), EXPECTED[image_id])


def test_labels_file_takes_precedence(voc_root, tmp_path):
    table = {int(i.replace("_", "")): _onehot("boat") for i in SCENES}
    np.save(tmp_path / "mine.npy", table, allow_pickle=True)
    ds = VOCDataset(voc_root, "train", labels_path=tmp_path / "mine.npy")
    np.testing.assert_array_equal(ds.label_matrix(), np.tile(_onehot("boat"), (3, 1)))
    # and root/cls_labels.npy is picked up on its own
    shutil.copy(tmp_path / "mine.npy", voc_root / "cls_labels.npy")
    np.testing.assert_array_equal(VOCDataset(voc_root, "train").labels(0), _onehot("boat"))


@pytest.mark.parametrize("source", ["xml", "mask", "auto"])
def test_cls_labels_round_trip(voc_root, tmp_path, source):
    out = tmp_path / "cls_labels.npy"
    written = write_cls_labels(voc_root, list(SCENES), out, source=source)
    loaded = load_cls_labels(out)
    raw = np.load(out, allow_pickle=True).item()  # IRN reads it exactly like this
    assert set(raw) == {2007000001, 2007000002, 2008000003, 2009000004}
    for image_id in SCENES:
        key = int(image_id.replace("_", ""))
        np.testing.assert_array_equal(loaded[key], EXPECTED[image_id])
        np.testing.assert_array_equal(written[key], EXPECTED[image_id])
    ds = VOCDataset(voc_root, "val", labels_path=out)
    np.testing.assert_array_equal(ds.labels(0), EXPECTED["2009_000004"])


def test_label_matrix_is_built_once(voc_root):
    ds = VOCDataset(voc_root, "train")
    mat = ds.label_matrix()
    assert mat.shape == (3, K) and mat.dtype == np.float32
    assert ds.label_matrix() is mat
    np.testing.assert_array_equal(mat, np.stack([EXPECTED[i] for i in train_ids()]))


def test_labels_from_mask_ignores_background_and_border():
    mask = np.array([[0, 255, 3], [21 - 1, 3, 0]], np.uint8)
    np.testing.assert_array_equal(labels_from_mask(mask), _onehot("bird", "tvmonitor"))
    with pytest.raises(DatasetError, match="m.png.*21"):
        labels_from_mask(np.array([[21]], np.uint8), where="m.png")


# ---------------------------------------------------------------------------------------------
# Images and masks


def test_image_and_mask(voc_root):
    ds = VOCDataset(voc_root, ["2007_000002", "2007_000001"])
    img = ds.image(1)
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, np.asarray(Image.open(ds.image_path(1)).convert("RGB")))
    np.testing.assert_array_equal(ds.mask(1), _mask_for(["dog", "person"], 0))
    assert ds.image_size(1) == (H, W)


def test_mask_prefers_segmentation_class_then_aug(voc_root):
    aug = np.full((H, W), 7, np.uint8)
    save_label_png(voc_root / "SegmentationClassAug" / "2007_000002.png", aug)
    ds = VOCDataset(voc_root, "train")
    assert ds.mask(1)[8, 10] == CLS["cat"] + 1  # SegmentationClass wins
    (voc_root / "SegmentationClass" / "2007_000002.png").unlink()
    np.testing.assert_array_equal(ds.mask(1), aug)
    (voc_root / "SegmentationClassAug" / "2007_000002.png").unlink()
    assert ds.mask(1) is None


def test_label_png_round_trip_and_palette(tmp_path):
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[0].tolist() == [0, 0, 0] and pal[1].tolist() == [128, 0, 0]
    assert pal[15].tolist() == [192, 128, 128] and pal[20].tolist() == [0, 64, 128]
    assert pal[255].tolist() == [224, 224, 192]
    arr = np.random.default_rng(1).integers(0, 21, (9, 11)).astype(np.uint8)
    arr[0] = 255
    save_label_png(tmp_path / "m.png", arr)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P"
        assert np.array_equal(np.array(im.getpalette()[:768], np.uint8).reshape(256, 3), pal)
    np.testing.assert_array_equal(load_label_png(tmp_path / "m.png"), arr)
    # a colour-coded copy (what some tools save) maps back to the same indices
    Image.fromarray(pal[arr]).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_label_png(tmp_path / "rgb.png"), arr)


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P"])
def test_odd_image_modes_load_as_rgb(tmp_path, mode):
    rgb = np.random.default_rng(2).integers(0, 256, (12, 17, 3), dtype=np.uint8)
    img = Image.fromarray(rgb).convert(mode)
    path = tmp_path / ("x.jpg" if mode in ("L", "CMYK") else "x.png")
    img.save(path)
    out = load_rgb(path)
    assert out.shape == (12, 17, 3) and out.dtype == np.uint8
    if mode == "L":
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_split_name_list_file_and_path_tokens(voc_root, tmp_path):
    lst = tmp_path / "train_aug.txt"
    lst.write_text("/JPEGImages/2007_000002.jpg /SegmentationClassAug/2007_000002.png\n\n2008_000003\n")
    assert read_id_list(lst) == ["2007_000002", "2008_000003"]
    assert VOCDataset(voc_root, lst).ids == ["2007_000002", "2008_000003"]
    assert build_dataset("voc", voc_root, "val").ids == ["2009_000004"]


# ---------------------------------------------------------------------------------------------
# Bad inputs: each one a DatasetError naming the culprit


def test_missing_root_or_image_folder(tmp_path, voc_root):
    with pytest.raises(DatasetError, match="nowhere"):
        VOCDataset(tmp_path / "nowhere", "train")
    shutil.rmtree(voc_root / "JPEGImages")
    with pytest.raises(DatasetError, match="JPEGImages"):
        VOCDataset(voc_root, "train")


def test_id_without_jpeg_fails_at_construction(voc_root):
    with pytest.raises(DatasetError, match="2011_999999"):
        VOCDataset(voc_root, ["2007_000001", "2011_999999"])


def test_missing_or_empty_list(voc_root):
    with pytest.raises(DatasetError, match="trainval.txt.*not found"):
        VOCDataset(voc_root, "trainval")
    (voc_root / "ImageSets" / "Segmentation" / "empty.txt").write_text("\n  \n")
    with pytest.raises(DatasetError, match="empty.txt.*empty"):
        VOCDataset(voc_root, "empty")


def test_truncated_jpeg(voc_root):
    path = voc_root / "JPEGImages" / "2007_000001.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    ds = VOCDataset(voc_root, "train")  # construction only checks existence
    with pytest.raises(DatasetError, match="2007_000001.jpg"):
        ds.image(0)


def test_corrupt_jpeg(voc_root):
    path = voc_root / "JPEGImages" / "2007_000002.jpg"
    data = bytearray(path.read_bytes())
    data[2:40] = b"garbage!" * 4 + b"xyzabc"  # clobber the JFIF/quantisation headers
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="2007_000002.jpg"):
        VOCDataset(voc_root, "train").image(1)
    path.write_bytes(b"not a jpeg at all")
    with pytest.raises(DatasetError, match="2007_000002.jpg"):
        VOCDataset(voc_root, "train").image(1)


def test_mask_size_mismatch_names_both_files(voc_root):
    save_label_png(voc_root / "SegmentationClass" / "2007_000002.png", np.zeros((H + 1, W), np.uint8))
    with pytest.raises(DatasetError, match=r"SegmentationClass/2007_000002.png.*41x52.*JPEGImages/2007_000002.jpg.*40x52"):
        VOCDataset(voc_root, "train")  # found from the headers when the dataset is opened


def test_unknown_class_names_are_skipped_with_one_counting_warning(voc_root):
    """Objects named outside the class list are skipped (as IRN does): one warning for the list."""
    write_xml(voc_root, "2007_000002", [("unicorn", 0), ("cat", 0), ("unicorn", 0)])
    write_xml(voc_root, "2008_000003", [("aeroplane", 0), ("griffin", 0)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = VOCDataset(voc_root, "train")
    assert len(caught) == 1, [str(w.message) for w in caught]
    msg = str(caught[0].message)
    assert "skipped 3 object(s) in 2 annotation file(s)" in msg and "'unicorn' x2" in msg and "'griffin' x1" in msg
    np.testing.assert_array_equal(ds.labels(1), _onehot("cat"))
    np.testing.assert_array_equal(ds.labels(2), _onehot("aeroplane"))
    with pytest.warns(UserWarning, match=r"2007_000002.xml: skipped 2 object"):
        np.testing.assert_array_equal(labels_from_xml(voc_root / "Annotations" / "2007_000002.xml"), _onehot("cat"))
    with pytest.warns(UserWarning) as rec:
        write_cls_labels(voc_root, list(SCENES), voc_root / "out.npy", "xml")
    assert len(rec) == 1 and "skipped 3 object(s)" in str(rec[0].message)


def test_id_listed_twice_is_an_error_naming_list_line_and_id(voc_root):
    lst = voc_root / "ImageSets" / "Segmentation" / "dup.txt"
    lst.write_text("2007_000001\n2007_000002\n\nJPEGImages/2007_000001.jpg SegmentationClassAug/2007_000001.png\n")
    with pytest.raises(DatasetError, match=r"dup.txt, line 4: id '2007_000001' is listed again \(first on line 1\)"):
        VOCDataset(voc_root, "dup")
    with pytest.raises(DatasetError, match=r"id '2007_000002' is given twice \(positions 0 and 2\)"):
        VOCDataset(voc_root, ["2007_000002", "2007_000001", "2007_000002"])


def test_cls_labels_written_into_the_root_are_rebuilt_when_annotations_change(voc_root):
    from rib_ext.data.voc import labels_source_path

    write_cls_labels(voc_root, list(SCENES), voc_root / "cls_labels.npy", "xml")
    assert labels_source_path(voc_root / "cls_labels.npy").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # up to date: read as it is, no warning
        np.testing.assert_array_equal(VOCDataset(voc_root, "train").labels(1), _onehot("cat"))
    write_xml(voc_root, "2007_000002", [("horse", 0)])  # an edited annotation (new size and mtime)
    with pytest.warns(UserWarning, match=r"cls_labels.npy: annotations changed.*rebuilt"):
        ds = VOCDataset(voc_root, "train")
    np.testing.assert_array_equal(ds.labels(1), _onehot("horse"))
    assert load_cls_labels(voc_root / "cls_labels.npy")[2007000002][CLS["horse"]] == 1
    # classes.txt is part of the source too
    (voc_root / "classes.txt").write_text("\n".join(VOC_CLASSES) + "\n")
    with pytest.warns(UserWarning, match="rebuilt"):
        VOCDataset(voc_root, "train")
    # a labels file a user supplied (no fingerprint) is trusted as it is
    labels_source_path(voc_root / "cls_labels.npy").unlink()
    write_xml(voc_root, "2007_000002", [("cow", 0)])
    np.testing.assert_array_equal(VOCDataset(voc_root, "train").labels(1), _onehot("horse"))


def test_malformed_or_missing_xml_and_no_mask(voc_root):
    (voc_root / "Annotations" / "2007_000002.xml").write_text("<annotation><object>")
    with pytest.raises(DatasetError, match="2007_000002.xml.*malformed"):
        VOCDataset(voc_root, "train")
    (voc_root / "Annotations" / "2007_000002.xml").unlink()
    (voc_root / "SegmentationClass" / "2007_000002.png").unlink()
    with pytest.raises(DatasetError, match="2007_000002"):
        VOCDataset(voc_root, "train")


def test_labels_file_missing_ids(voc_root, tmp_path):
    np.save(tmp_path / "partial.npy", {2007000001: _onehot("dog")}, allow_pickle=True)
    with pytest.raises(DatasetError, match=r"partial.npy.*2 listed id.*2007_000002, 2008_000003"):
        VOCDataset(voc_root, "train", labels_path=tmp_path / "partial.npy")
    with pytest.raises(DatasetError, match="absent.npy"):
        VOCDataset(voc_root, "train", labels_path=tmp_path / "absent.npy")
    np.save(tmp_path / "short.npy", {int(i.replace("_", "")): np.ones(3) for i in SCENES}, allow_pickle=True)
    with pytest.raises(DatasetError, match=r"short.npy.*shape"):
        VOCDataset(voc_root, "train", labels_path=tmp_path / "short.npy")


def test_image_without_class_is_skipped_with_warning(voc_root):
    write_xml(voc_root, "2007_000002", [])
    with pytest.warns(UserWarning, match="2007_000002"):
        ds = VOCDataset(voc_root, "train")
    assert ds.ids == ["2007_000001", "2008_000003"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VOCDataset(voc_root, "val")  # nothing to skip: no warning


def test_write_labels_command(tiny_demo):
    """``python -m rib_ext.data write-labels`` writes IRN's labels file from the XML annotations."""
    from rib_ext.data.__main__ import main as data_main
    from rib_ext.data.voc import id_key

    root = tiny_demo
    (root / "cls_labels.npy").unlink()
    assert data_main(["write-labels", "--root", str(root), "--list",
                      "ImageSets/Segmentation/train.txt", "--source", "xml"]) == 0
    table = load_cls_labels(root / "cls_labels.npy")
    ds = VOCDataset(root, "train")
    assert len(table) == 4
    for i in range(len(ds)):
        np.testing.assert_array_equal(table[id_key(ds.name(i))], labels_from_xml(
            root / "Annotations" / f"{ds.name(i)}.xml", ds.class_names))
    assert data_main(["write-labels", "--root", str(root), "--list", "missing.txt"]) == 2
