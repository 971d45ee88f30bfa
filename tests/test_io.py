"""rib_ext.io: atomic writes that respect the umask, named errors for broken files, file_is_complete."""
import os
import stat

import numpy as np
import pytest
import torch

from rib_ext.data import DatasetError, load_label_png, save_label_png
from rib_ext.io import (UnreadableFileError, atomic_path, file_is_complete, load_npy_dict, save_json,
                        save_npy)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_outputs_respect_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    save_npy(tmp_path / "a.npy", {"x": 1})
    save_json(tmp_path / "b.json", {"x": 1})
    save_label_png(tmp_path / "c.png", np.zeros((3, 4), np.uint8))
    with atomic_path(tmp_path / "d.pth") as tmp:
        torch.save({"x": 1}, tmp)
    for name in ("a.npy", "b.json", "c.png", "d.pth"):
        assert _mode(tmp_path / name) == expected, name


def test_cls_labels_in_a_dataset_root_are_readable_by_the_group(tmp_path, umask):
    from rib_ext.data import write_cls_labels
    from rib_ext.data.voc import write_annotation_xml

    umask(0o022)
    write_annotation_xml(tmp_path / "Annotations" / "a.xml", "a", (4, 4), [("cat", (1, 1, 2, 2))])
    write_cls_labels(tmp_path, ["a"], tmp_path / "cls_labels.npy", "xml")
    assert _mode(tmp_path / "cls_labels.npy") == 0o644


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_load_npy_dict_names_a_broken_file(tmp_path, damage):
    path = tmp_path / "2007_000032.npy"
    save_npy(path, {"cam": np.ones((3, 8, 8), np.float32), "keys": np.arange(3)})
    data = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    with pytest.raises(UnreadableFileError, match="2007_000032.npy"):
        load_npy_dict(path)
    assert not file_is_complete(path)


def test_load_npy_dict_refuses_a_plain_array(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(UnreadableFileError, match="a.npy: expected np.save of a dict"):
        load_npy_dict(tmp_path / "a.npy")


def test_empty_label_png_is_an_error_naming_it(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="x.png"):
        load_label_png(tmp_path / "x.png")


def test_file_is_complete_by_suffix(tmp_path):
    save_npy(tmp_path / "m.npy", {"cam": np.ones((2, 4, 4), np.float32)})
    save_label_png(tmp_path / "m.png", np.arange(64, dtype=np.uint8).reshape(8, 8))
    save_json(tmp_path / "m.json", {"a": [1, 2]})
    torch.save({"w": torch.randn(64, 64)}, tmp_path / "m.pth")
    for name in ("m.npy", "m.png", "m.json", "m.pth"):
        path = tmp_path / name
        assert file_is_complete(path), name
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        assert not file_is_complete(path), f"{name} truncated"
        path.write_bytes(b"")
        assert not file_is_complete(path), f"{name} empty"
    assert not file_is_complete(tmp_path / "absent.npy")
