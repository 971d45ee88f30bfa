"""COCO 2014 layout: a real instances json (polygons, a crowd RLE, overlaps) and hand-made expectations."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from rib_ext.data import COCO_CLASSES, COCODataset, DatasetError, build_dataset, load_label_png, save_label_png
from rib_ext.data import coco as coco_mod
from rib_ext.data.coco import CATEGORY_TO_INDEX, decode_segmentation

from coco_files import (ANNOTATIONS, CAR, CROWD, DOG, PERSON, H, STEMS, V_CAR, V_DOG, V_PERSON, W,
                        expected_mask_9, expected_mask_25, rect, uncompressed_rle, write_instances)


def onehot(*values):
    v = np.zeros(80, np.float32)
    v[[x - 1 for x in values]] = 1
    return v


def test_class_table():
    assert len(COCO_CLASSES) == 80 and COCO_CLASSES[0] == "person" and COCO_CLASSES[-1] == "toothbrush"
    assert CATEGORY_TO_INDEX[PERSON] == 1 and CATEGORY_TO_INDEX[DOG] == 17 and CATEGORY_TO_INDEX[90] == 80
    assert COCO_CLASSES[CATEGORY_TO_INDEX[DOG] - 1] == "dog"
    assert sorted(CATEGORY_TO_INDEX.values()) == list(range(1, 81))


def test_polygon_convention():
    np.testing.assert_array_equal(np.nonzero(decode_segmentation(rect(10, 5, 16, 11), H, W).any(0))[0], np.arange(10, 16))
    np.testing.assert_array_equal(decode_segmentation(uncompressed_rle(CROWD), H, W), CROWD)


def test_ids_labels_and_unannotated_image_skipped(coco_root):
    with pytest.warns(UserWarning, match=STEMS[30]):
        ds = COCODataset(coco_root, "train")
    assert ds.ids == [STEMS[9], STEMS[25]]
    assert ds.num_classes == 80 and ds.class_names == COCO_CLASSES
    np.testing.assert_array_equal(ds.labels(0), onehot(V_PERSON, V_CAR, V_DOG))  # crowd class counts
    np.testing.assert_array_equal(ds.labels(1), onehot(V_DOG))
    assert ds.label_matrix().shape == (2, 80)
    assert ds.image(0).shape == (H, W, 3)
    assert ds.image_path(1).name == f"{STEMS[25]}.jpg"


@pytest.mark.filterwarnings("ignore:.*no class")
def test_semantic_masks_and_cache(coco_root, monkeypatch):
    ds = COCODataset(coco_root, "train")
    np.testing.assert_array_equal(ds.mask(0), expected_mask_9())
    np.testing.assert_array_equal(ds.mask(1), expected_mask_25())
    cached = coco_root / "SegmentationClassCOCO" / "train" / f"{STEMS[9]}.png"
    np.testing.assert_array_equal(load_label_png(cached), expected_mask_9())

    def no_decoding(*a, **k):
        raise AssertionError("polygons decoded again despite the cache")

    monkeypatch.setattr(coco_mod, "semantic_mask", no_decoding)
    np.testing.assert_array_equal(COCODataset(coco_root, "train").mask(0), expected_mask_9())


@pytest.mark.filterwarnings("ignore:.*no class")
def test_cache_can_be_disabled_or_moved(coco_root, tmp_path):
    COCODataset(coco_root, "train", cache_dir=False).mask(0)
    assert not (coco_root / "SegmentationClassCOCO").exists()
    COCODataset(coco_root, "train", cache_dir=tmp_path / "c").mask(0)
    assert (tmp_path / "c" / f"{STEMS[9]}.png").is_file()


@pytest.mark.filterwarnings("ignore:.*no class")
def test_ready_mask_folder(coco_root, tmp_path):
    ready = np.full((H, W), V_DOG, np.uint8)
    save_label_png(tmp_path / "masks" / f"{STEMS[9]}.png", ready)
    ds = COCODataset(coco_root, "train", mask_dir=tmp_path / "masks")
    np.testing.assert_array_equal(ds.mask(0), ready)
    assert ds.mask(1) is None
    save_label_png(tmp_path / "masks" / f"{STEMS[25]}.png", np.zeros((H, W + 2), np.uint8))
    with pytest.raises(DatasetError, match=rf"{STEMS[25]}.png.*20x32.*{STEMS[25]}.jpg.*20x30"):
        ds.mask(1)


def test_id_list_infers_split(coco_root, tmp_path):
    lst = tmp_path / "ids.txt"
    lst.write_text(f"{STEMS[25]}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = build_dataset("coco", coco_root, lst)
    assert ds.split == "train" and ds.ids == [STEMS[25]]
    with pytest.raises(DatasetError, match="COCO_train2014_000000000077"):
        COCODataset(coco_root, ["COCO_train2014_000000000077"])
    with pytest.raises(DatasetError, match="split"):
        COCODataset(coco_root, ["picture_1"])


def test_missing_pieces(coco_root, tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        COCODataset(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match="val2014"):
        COCODataset(coco_root, "val")
    with pytest.raises(DatasetError, match="unknown COCO split 'test'"):
        COCODataset(coco_root, "train", split="test")
    (coco_root / "train2014" / f"{STEMS[25]}.jpg").unlink()
    with pytest.raises(DatasetError, match=STEMS[25]):
        COCODataset(coco_root, "train")
    (coco_root / "annotations" / "instances_train2014.json").unlink()
    with pytest.raises(DatasetError, match="instances_train2014.json.*not found"):
        COCODataset(coco_root, "train")


def test_bad_annotation_files(coco_root):
    ann = coco_root / "annotations" / "instances_train2014.json"
    ann.write_text('{"images": [')
    with pytest.raises(DatasetError, match="instances_train2014.json"):
        COCODataset(coco_root, "train")
    write_instances(ann, categories=[{"id": CAR, "name": "truck"}])
    with pytest.raises(DatasetError, match=r"instances_train2014.json.*category id 3 named 'truck'"):
        COCODataset(coco_root, "train")


# ---------------------------------------------------------------------------------------------
# Annotation errors are found at open, naming the file, the image and the annotation


def _with(ann_id, **changes):
    return [dict(a, **changes) if a["id"] == ann_id else a for a in ANNOTATIONS]


def test_undeclared_category_is_named_at_open(coco_root):
    write_instances(coco_root / "annotations" / "instances_train2014.json", _with(1, category_id=91))
    with pytest.raises(DatasetError, match=rf"instances_train2014.json: annotation 1 of image {STEMS[9]}.jpg uses "
                                           r"category id 91, which 'categories' does not declare"):
        COCODataset(coco_root, "train")


def test_dangling_image_id_is_an_error(coco_root):
    write_instances(coco_root / "annotations" / "instances_train2014.json", _with(4, image_id=777))
    with pytest.raises(DatasetError, match=r"instances_train2014.json: annotation 4 refers to image_id 777"):
        COCODataset(coco_root, "train")


def test_segmentation_size_differing_from_the_image_is_named(coco_root):
    bad = dict(uncompressed_rle(CROWD), size=[H + 1, W])
    write_instances(coco_root / "annotations" / "instances_train2014.json", _with(3, segmentation=bad))
    with pytest.raises(DatasetError, match=rf"annotation 3 of image {STEMS[9]}.jpg: segmentation size 21x30 .*20x30"):
        COCODataset(coco_root, "train")


def test_json_size_differing_from_the_jpeg_is_named(coco_root):
    Image.new("RGB", (W, H + 4)).save(coco_root / "train2014" / f"{STEMS[25]}.jpg")
    with pytest.raises(DatasetError, match=rf"instances_train2014.json: image {STEMS[25]}.jpg \(id 25\) is 20x30 "
                                           r"\(HxW\) in 'images' but its JPEG is 24x30"):
        COCODataset(coco_root, "train")


def test_id_given_twice_is_an_error(coco_root, tmp_path):
    lst = tmp_path / "ids.txt"
    lst.write_text(f"{STEMS[25]}\n{STEMS[9]}\n{STEMS[25]}\n")
    with pytest.raises(DatasetError, match=rf"ids.txt, line 3: id '{STEMS[25]}' is listed again"):
        COCODataset(coco_root, lst)


@pytest.mark.filterwarnings("ignore:.*no class")
def test_cached_masks_follow_the_annotation_file(coco_root):
    ann = coco_root / "annotations" / "instances_train2014.json"
    np.testing.assert_array_equal(COCODataset(coco_root, "train").mask(0), expected_mask_9())
    cache = coco_root / "SegmentationClassCOCO" / "train"
    assert (cache / f"{STEMS[9]}.png").is_file() and (cache / coco_mod.CACHE_RECORD).is_file()
    # the dog becomes a car: labels and masks must both follow the new json
    write_instances(ann, _with(1, category_id=CAR))
    with pytest.warns(UserWarning, match=r"1 cached mask\(s\) were not made from .*instances_train2014.json"):
        ds = COCODataset(coco_root, "train")
    np.testing.assert_array_equal(ds.labels(0), onehot(V_PERSON, V_CAR))
    expected = expected_mask_9()
    expected[expected == V_DOG] = V_CAR
    np.testing.assert_array_equal(ds.mask(0), expected)
    np.testing.assert_array_equal(load_label_png(cache / f"{STEMS[9]}.png"), expected)
    # a cache made before fingerprints existed (no record) is not trusted either
    (cache / coco_mod.CACHE_RECORD).unlink()
    save_label_png(cache / f"{STEMS[9]}.png", np.zeros((H, W), np.uint8))
    with pytest.warns(UserWarning, match="were not made from"):
        np.testing.assert_array_equal(COCODataset(coco_root, "train").mask(0), expected)
