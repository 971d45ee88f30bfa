"""Stage outputs that exist but are broken are rebuilt (and named); a RIB map and its record are
one unit."""
import json

import numpy as np
import pytest

from factories import tiny_cam_net
from rib_ext.config import DemoDataConfig, MakeCamConfig, RIBConfig
from rib_ext.data import build_dataset, save_label_png
from rib_ext.io import load_npy_dict, save_npy
from rib_ext.io import file_is_complete


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cfg = DemoDataConfig(num_train=6, num_val=3, image_size=48)
    return build_dataset("demo", root, "train", demo=cfg), build_dataset("demo", root, "val", demo=cfg)


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_file_is_complete_finds_empty_and_truncated_files(tmp_path):
    import torch

    save_npy(tmp_path / "d.npy", {"keys": np.array([1]), "high_res": np.ones((1, 8, 8), np.float32)})
    np.save(tmp_path / "a.npy", np.ones((4, 4), np.float32))
    save_label_png(tmp_path / "m.png", np.ones((8, 8), np.uint8))
    torch.save({"w": torch.ones(100)}, tmp_path / "w.pth")
    for name in ("d.npy", "a.npy", "m.png", "w.pth"):
        path = tmp_path / name
        assert file_is_complete(path), name
        whole = path.read_bytes()
        truncate(path, 0.8)
        assert not file_is_complete(path), name
        path.write_bytes(b"")
        assert not file_is_complete(path), name
        path.write_bytes(whole)


def test_make_cam_rebuilds_a_truncated_map_and_names_it(tiny_data, tmp_path):
    from rib_ext.cam.maps import make_cam

    _, val = tiny_data
    model = tiny_cam_net(val.num_classes)
    cfg = MakeCamConfig(scales=(1.0,))
    make_cam(model, val, cfg, tmp_path)
    broken = tmp_path / f"{val.name(1)}.npy"
    truncate(broken)
    with pytest.warns(UserWarning, match=val.name(1)):
        result = make_cam(model, val, cfg, tmp_path)
    assert result["written"] == 1 and result["skipped"] == 2
    assert set(load_npy_dict(broken)) == {"keys", "cam", "high_res"}


def test_rib_redoes_a_map_without_its_record_and_a_broken_map(tiny_data, tmp_path):
    from rib_ext.rib.run import adapt_dataset

    train, val = tiny_data
    model = tiny_cam_net(val.num_classes)
    cfg = RIBConfig(steps=1, num_others=1, other_resize_long=(40, 56), other_crop=48, scales=(1.0,),
                    loss_scales=(1.0,), device="cpu")
    adapt_dataset(model, val, train, cfg, tmp_path)
    (tmp_path / "records" / f"{val.name(0)}.json").unlink()  # a kill between map and record
    truncate(tmp_path / "maps" / f"{val.name(2)}.npy")
    with pytest.warns(UserWarning, match=val.name(2)):
        summary = adapt_dataset(model, val, train, cfg, tmp_path)
    assert summary["written"] == 2 and summary["skipped"] == 1
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == 3
    assert json.loads((tmp_path / "records" / f"{val.name(0)}.json").read_text())["steps"] == 1


def test_rib_writes_the_record_before_the_map(tiny_data, tmp_path, monkeypatch):
    """A kill between the two writes leaves a record without map (redone), never the reverse."""
    from rib_ext.rib import run as rib_run

    train, val = tiny_data
    cfg = RIBConfig(steps=1, num_others=1, other_resize_long=(40, 56), other_crop=48, scales=(1.0,),
                    loss_scales=(1.0,), device="cpu")

    def killed(path, obj):
        raise KeyboardInterrupt("killed between the record and the map")

    monkeypatch.setattr(rib_run, "save_npy", killed)
    with pytest.raises(KeyboardInterrupt):
        rib_run.adapt_dataset(tiny_cam_net(val.num_classes), val, train, cfg, tmp_path)
    assert (tmp_path / "records" / f"{val.name(0)}.json").exists()
    assert not list((tmp_path / "maps").glob("*.npy"))


def test_irn_stages_remake_a_broken_png(tmp_path):
    from rib_ext.outputs import split_done

    for name in ("a", "b"):
        save_label_png(tmp_path / f"{name}.png", np.zeros((8, 8), np.uint8))
    truncate(tmp_path / "b.png")
    with pytest.warns(UserWarning, match="b.png"):
        todo, done = split_done(tmp_path, ["a", "b", "c"])
    assert todo == ["b", "c"] and done == ["a"]


def test_a_folder_of_other_settings_is_a_user_error(tmp_path):
    """A per-image folder made with other settings stops as `error: ...` (exit 2), not a traceback."""
    from rib_ext import pipeline
    from rib_ext.outputs import MixedOutputsError, check_settings

    check_settings(tmp_path, "ir_label", {"conf_fg": 0.3})
    check_settings(tmp_path, "ir_label", {"conf_fg": 0.3})  # the same settings: a resume
    with pytest.raises(MixedOutputsError, match="holds outputs made with other settings"):
        check_settings(tmp_path, "ir_label", {"conf_fg": 0.4})
    assert issubclass(MixedOutputsError, pipeline.user_error_types())
