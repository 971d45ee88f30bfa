"""Inputs read as written and checked when opened: id lists, IRN label keys, mask headers, image
sizes, the Python API's targets."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rib_ext.data import DatasetError, VOCDataset, save_label_png
from rib_ext.data import __main__ as data_cli
from rib_ext.data.voc import read_id_list


def _voc(root, ids, size=(20, 24), classes=((1,),)):
    """A VOC-layout folder whose images each hold class 1 (mask-derived labels)."""
    h, w = size
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        mask = np.zeros((h, w), np.uint8)
        mask[2:8, 2:8] = 1
        save_label_png(root / "SegmentationClass" / f"{image_id}.png", mask)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


# --- id lists: one reader, ids as written ------------------------------------------------------

def test_list_id_with_a_dot_is_kept_whole(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("img.v1\nimg.v2\n")
    # The old reader cut both to "img" (and then refused the second as listed twice).
    assert read_id_list(lst) == ["img.v1", "img.v2"]


def test_list_image_paths_reduce_to_the_id(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("/JPEGImages/2007_000002.jpg /SegmentationClassAug/2007_000002.png\n"
                   "2008_000003.jpg\n2008_000004\n")
    assert read_id_list(lst) == ["2007_000002", "2008_000003", "2008_000004"]


def test_list_dotted_id_never_reads_another_image(tmp_path):
    root = _voc(tmp_path / "voc", ["img"])
    lst = tmp_path / "l.txt"
    lst.write_text("img.v2\n")
    with pytest.raises(DatasetError, match=r"img\.v2"):
        VOCDataset(root, lst)  # the old reader read img.jpg in its place


def test_list_id_with_a_space_names_file_and_line(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("2007_000002\nmy image\n")
    with pytest.raises(DatasetError, match=r"l\.txt, line 2: .*'my image'"):
        read_id_list(lst)


def test_list_pair_of_paths_of_two_images_is_refused(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("JPEGImages/a.jpg SegmentationClassAug/b.png\n")
    with pytest.raises(DatasetError, match="line 1"):
        read_id_list(lst)


def test_list_comment_lines_are_skipped(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("# train split\n2007_000002\n  # indented note\n2008_000003\n")
    assert read_id_list(lst) == ["2007_000002", "2008_000003"]


def test_list_utf8_bom_is_stripped(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_bytes("\ufeff2008_000604\n2008_000605\n".encode("utf-8"))
    assert read_id_list(lst) == ["2008_000604", "2008_000605"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le"])
def test_list_utf16_names_the_file(tmp_path, encoding):
    lst = tmp_path / "l.txt"
    lst.write_bytes("2008_000604\n2008_000605\n".encode(encoding))
    with pytest.raises(DatasetError, match=r"l\.txt: .*UTF-16"):
        read_id_list(lst)


def test_list_undecodable_names_file_and_line(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_bytes(b"2008_000604\n2008_\xff\xfe0605\n")
    with pytest.raises(DatasetError, match=r"l\.txt, line 2: not UTF-8"):
        read_id_list(lst)


def test_ids_given_in_code_are_checked_alike(tmp_path):
    root = _voc(tmp_path / "voc", ["a"])
    with pytest.raises(DatasetError, match="'a b'"):
        VOCDataset(root, ["a b"])


def test_coco_reads_lists_with_the_same_reader():
    import inspect

    from rib_ext.data import coco, voc
    from rib_ext.data.idlists import read_id_list as the_reader

    assert coco.read_id_list is the_reader and voc.read_id_list is the_reader
    assert "read_id_list" in inspect.getsource(coco.COCODataset._wanted_ids)


# --- IRN label keys -----------------------------------------------------------------------------

def test_write_labels_refuses_colliding_keys(tmp_path, capsys):
    root = _voc(tmp_path / "voc", ["1_23", "12_3"])
    code = data_cli.main(["write-labels", "--root", str(root), "--list", "ImageSets/Segmentation/train.txt"])
    err = capsys.readouterr().err
    assert code == 2 and "1_23" in err and "12_3" in err
    assert not (root / "cls_labels.npy").exists()


def test_labels_file_with_colliding_keys_is_refused_when_read(tmp_path):
    root = _voc(tmp_path / "voc", ["1_23", "12_3"])
    np.save(root / "cls_labels.npy", {123: np.eye(20, dtype=np.float32)[0]})
    with pytest.raises(DatasetError, match="1_23.*12_3"):
        VOCDataset(root, "train")


# --- data problems found when the dataset is opened (headers only) -------------------------------

def test_sixteen_bit_mask_is_refused_when_opened(tmp_path):
    root = _voc(tmp_path / "voc", ["a", "b"])
    mask = root / "SegmentationClass" / "b.png"
    Image.fromarray(np.zeros((20, 24), np.uint16)).save(mask)  # mode I;16
    assert Image.open(mask).mode.startswith("I")
    with pytest.raises(DatasetError, match=r"b\.png: mask has mode 'I;16.*16-bit"):
        VOCDataset(root, "train", labels_path=_labels_file(root, ["a", "b"]))


def _labels_file(root, ids):
    path = root / "labels.npy"
    np.save(path, {i: np.eye(20, dtype=np.float32)[0] for i in ids})
    return path


def test_mask_of_another_size_is_refused_when_opened(tmp_path):
    root = _voc(tmp_path / "voc", ["a", "b"])
    save_label_png(root / "SegmentationClass" / "b.png", np.zeros((20, 23), np.uint8))
    with pytest.raises(DatasetError, match=r"b\.png: mask is 20x23 .*b\.jpg is 20x24"):
        VOCDataset(root, "train", labels_path=_labels_file(root, ["a", "b"]))


def _exif_rotated_jpeg(path, h, w):
    img = Image.fromarray(np.full((h, w, 3), 120, np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": viewers show it w x h
    img.save(path, exif=exif.tobytes())


def test_exif_rotation_is_ignored_and_said_when_a_mask_follows_it(tmp_path):
    root = _voc(tmp_path / "voc", ["a"])
    _exif_rotated_jpeg(root / "JPEGImages" / "a.jpg", 20, 24)
    ds = VOCDataset(root, "train")  # a mask of the stored pixels' size: fine
    assert ds.image(0).shape == (20, 24, 3) and ds.image_size(0) == (20, 24)
    assert ds.mask(0).shape == (20, 24)
    # A mask drawn on the rotated view (24x20) is refused, saying EXIF is ignored.
    mask = np.zeros((24, 20), np.uint8)
    mask[2:8, 2:8] = 1
    save_label_png(root / "SegmentationClass" / "a.png", mask)
    with pytest.raises(DatasetError, match=r"a\.png: mask is 24x20 .*EXIF rotation, which is ignored"):
        VOCDataset(root, "train")


def test_huge_image_is_refused_when_opened_naming_it_and_its_size(tmp_path):
    root = _voc(tmp_path / "voc", ["a", "big"])
    Image.fromarray(np.full((4000, 4000, 3), 7, np.uint8)).save(root / "JPEGImages" / "big.jpg")
    (root / "SegmentationClass" / "big.png").unlink()
    labels = _labels_file(root, ["a", "big"])
    with pytest.raises(DatasetError, match=r"big\.jpg: image big is 4000x4000 .*16000000 pixels.*--max-pixels"):
        VOCDataset(root, "train", labels_path=labels)
    assert len(VOCDataset(root, "train", labels_path=labels, max_pixels=None)) == 2
    assert len(VOCDataset(root, "train", labels_path=labels, max_pixels=16_000_000)) == 2


def test_pipeline_max_pixels_setting_reaches_the_datasets(tmp_path):
    from rib_ext.config import PipelineConfig
    from rib_ext.data.base import MAX_PIXELS
    from rib_ext.stages.options import config_from_argv

    assert PipelineConfig().max_pixels == MAX_PIXELS
    cfg = config_from_argv(["--dataset", "voc", "--root", str(tmp_path), "--max-pixels", "123"])
    assert cfg.max_pixels == 123
    from rib_ext.stages import context
    import inspect
    assert "max_pixels" in inspect.getsource(context.RunContext)


def test_pipeline_stops_on_a_huge_image_before_any_stage(tmp_path, capsys):
    from tests.pipeline_runs import main

    root = _voc(tmp_path / "voc", ["a", "big"])
    Image.fromarray(np.full((1500, 1500, 3), 7, np.uint8)).save(root / "JPEGImages" / "big.jpg")
    (root / "SegmentationClass" / "big.png").unlink()
    _labels_file(root, ["a", "big"])
    (root / "labels.npy").rename(root / "cls_labels.npy")
    out = tmp_path / "out"
    code = main(["--dataset", "voc", "--root", str(root), "--train-list", "train", "--eval-list",
                 "train", "--out", str(out), "--max-pixels", "1000000"])
    err = capsys.readouterr().err
    assert code == 2 and "big.jpg: image big is 1500x1500" in err
    assert not (out / "train_cam").exists()


# --- the Python API: targets and tau ------------------------------------------------------------

def _target(**kw):
    from rib_ext.rib import Target

    args = dict(index=0, name="img", image=np.zeros((8, 10, 3), np.uint8),
                label=np.array([0, 1, 0, 0], np.float32))
    args.update(kw)
    return Target(**args)


def test_target_float_image_is_refused():
    img = np.random.default_rng(0).random((8, 10, 3)).astype(np.float32)  # in [0, 1]
    with pytest.raises(ValueError, match=r"img: image is float32.*uint8.*\* 255"):
        _target(image=img)


def test_target_chw_image_is_refused():
    with pytest.raises(ValueError, match=r"img: image has shape \(3, 8, 10\).*\[H, W, 3\].*channels first"):
        _target(image=np.zeros((3, 8, 10), np.uint8))


@pytest.mark.parametrize("label, what", [(np.zeros(4, np.float32), "no class"),
                                         (np.array([[0, 1, 0, 0]], np.float32), r"\[K\]"),
                                         (np.array([0, 2, 0, 0], np.float32), "0 or 1"),
                                         (np.array([0, np.nan, 1, 0], np.float32), "0 or 1")])
def test_target_bad_label_is_refused(label, what):
    with pytest.raises(ValueError, match=rf"img: label .*{what}"):
        _target(label=label)


def test_target_label_of_another_length_is_named_by_the_engine():
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from factories import TinyDataset, tiny_cam_net

    from rib_ext.config import RIBConfig
    from rib_ext.rib import OtherImages, RIBEngine

    data = TinyDataset(n=4, k=4)
    pool = OtherImages(data, "cpu", resize_long=(40, 72), crop=48)
    cfg = RIBConfig.preset(behaviour="authors", steps=1, num_others=1, other_resize_long=(40, 72),
                           other_crop=48, scales=(1.0,), loss_scales=(1.0,), group_size=1)
    engine = RIBEngine(tiny_cam_net(k=4), pool, cfg, "cpu")
    bad = _target(image=data.image(0), label=np.array([0, 1, 0, 0, 1], np.float32))
    with pytest.raises(ValueError, match=r"img: label has 5 classes but the classifier has 4"):
        engine.run([bad])


@pytest.mark.parametrize("tau", [float("nan"), -1.0, 0.0, 5.0, float("inf")])
@pytest.mark.parametrize("op", ["pool", "fused"])
def test_ops_refuse_a_tau_outside_0_1(tau, op):
    import torch

    from rib_ext import ops

    cam = torch.randn(2, 3, 5, 6)
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    with pytest.raises(ValueError, match=r"tau must be a number in \(0, 1\], got"):
        if op == "pool":
            ops.gndrp_pool(cam, labels > 0, tau)
        else:
            ops.gndrp_margin_loss(cam, labels, tau)
    # The edges of the range work.
    ops.gndrp_pool(cam, labels > 0, 1.0)
    ops.gndrp_margin_loss(cam, labels, 1e-3)


@pytest.mark.parametrize("tau", [float("nan"), -1.0, 5.0])
def test_compiled_ops_refuse_a_tau_outside_0_1(tau):
    import torch

    from rib_ext.ops._extension import HAS_C

    if not HAS_C:
        pytest.skip("the compiled extension is not loaded")
    cam = torch.randn(2, 3, 5, 6)
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    with pytest.raises(RuntimeError, match=r"gndrp_pool: tau must be a number in \(0, 1\]"):
        torch.ops.rib_ext.gndrp_pool.default(cam, labels > 0, tau, "authors")
    with pytest.raises(RuntimeError, match=r"gndrp_margin_loss: tau must be a number in \(0, 1\]"):
        torch.ops.rib_ext.gndrp_margin_loss.default(cam, labels, tau, 600.0, "authors")
