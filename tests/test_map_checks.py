"""Every reader of map files checks that a map is its image's (keys = the image's classes, size =
the image's size, keys within the dataset's classes), and otherwise stops naming the file."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rib_ext.config import CRFConfig, DemoDataConfig, EvalSeedConfig
from rib_ext.crf import refine_seeds
from rib_ext.data import build_dataset
from rib_ext.evaluation import eval_seed
from rib_ext.io import UnreadableFileError, load_npy_dict, save_npy
from rib_ext.outputs import MapFileError

DEMO = DemoDataConfig(seed=3, num_train=4, num_val=6, image_size=48)


def _maps(high: np.ndarray, keys) -> dict:
    keys = np.asarray(keys, dtype=np.int64)
    return {"keys": keys, "high_res": high.astype(np.float32),
            "cam": torch.from_numpy(high[:, ::4, ::4].astype(np.float32).copy())}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(dataset, folder of every image's maps from its ground truth)."""
    base = tmp_path_factory.mktemp("map_checks")
    ds = build_dataset("demo", base / "demo", "val", demo=DEMO)
    rng = np.random.default_rng(0)
    for i, name in enumerate(ds.ids):
        mask = ds.mask(i)
        keys = np.nonzero(ds.labels(i))[0]
        high = np.stack([(mask == k + 1) * 0.8 + rng.random(mask.shape) * 0.2 for k in keys])
        save_npy(base / "maps" / f"{name}.npy", _maps(high, keys))
    return ds, base / "maps"


def _other_classes(ds):
    """(i, j): two images whose classes differ."""
    labels = [tuple(np.nonzero(ds.labels(i))[0]) for i in range(len(ds))]
    for i in range(len(ds)):
        for j in range(len(ds)):
            if labels[i] != labels[j]:
                return i, j
    pytest.skip("every demo image has the same classes")


def _broken(made, tmp_path, how: str) -> tuple:
    """A copy of the maps folder with one image's file broken ``how``; (dataset, folder, path)."""
    ds, maps = made
    folder = tmp_path / "maps"
    shutil.copytree(maps, folder)
    i, j = _other_classes(ds)
    path = folder / f"{ds.ids[i]}.npy"
    if how == "other image":
        shutil.copyfile(maps / f"{ds.ids[j]}.npy", path)
    else:
        record = load_npy_dict(path)
        high, keys = record["high_res"], record["keys"]
        if how == "other size":
            high = np.pad(high, ((0, 0), (0, 8), (0, 8)))
        else:  # keys out of range
            keys = keys + ds.num_classes
        save_npy(path, _maps(high, keys))
    return ds, folder, path


CASES = {"other image": "classes", "other size": "shape", "keys out of range": "exceed"}


@pytest.mark.parametrize("how", list(CASES))
def test_eval_seed_stops_naming_a_map_file_that_is_not_its_images(made, tmp_path, how):
    ds, folder, path = _broken(made, tmp_path, how)
    with pytest.raises(MapFileError, match=CASES[how]) as err:
        eval_seed(ds, folder, EvalSeedConfig(), tmp_path / "eval")
    assert str(err.value).startswith(f"{path}: ")
    assert isinstance(err.value, UnreadableFileError)  # the pipeline prints it as error: ..., exit 2


@pytest.mark.parametrize("how", list(CASES))
def test_crf_stops_naming_a_map_file_that_is_not_its_images(made, tmp_path, how):
    pytest.importorskip("pydensecrf.densecrf")
    ds, folder, path = _broken(made, tmp_path, how)
    with pytest.raises(MapFileError, match=CASES[how]) as err:
        refine_seeds(ds, folder, 0.3, CRFConfig(iterations=1), tmp_path / "crf", workers=1)
    assert str(err.value).startswith(f"{path}: ")


def test_the_maps_of_their_images_pass(made, tmp_path):
    ds, folder = made
    assert eval_seed(ds, folder, EvalSeedConfig(), tmp_path / "eval")["num_images"] == len(ds)
