"""RIB's other images drawn and resized as the authors' loader does."""
import numpy as np
import pytest
import torch
from PIL import Image

from factories import TinyDataset
from rib_ext.data.transforms import normalize
from rib_ext.rib import OtherImages
from rib_ext.rib.sampling import OtherDraws
from coco_files import STEMS


class LabelOnlyDataset(TinyDataset):
    """Many tiny images with chosen label rows."""

    def __init__(self, labels):
        super().__init__(n=len(labels), k=labels.shape[1], size=(12, 12))
        self._labels = labels.astype(np.float32)


def _pool_of(n_disjoint, n_shared, k=4):
    labels = np.zeros((n_disjoint + n_shared + 1, k), np.float32)
    labels[0, 0] = 1  # the target
    labels[1:1 + n_disjoint, 1 + np.arange(n_disjoint) % (k - 1)] = 1
    labels[1 + n_disjoint:, 0] = 1  # share class 0 with the target
    return LabelOnlyDataset(labels)


def test_one_permutation_per_target_consecutive_slices():
    data = _pool_of(230, 40)
    pool = OtherImages(data, "cpu", resize_long=(8, 16), crop=8)
    draws = pool.draws(np.random.default_rng(0), data.labels(0), 0)
    drawn = [r["index"] for _ in range(10) for r in draws.draw(20)]
    assert len(drawn) == 200 and len(set(drawn)) == 200  # 200 distinct images over 10 steps
    assert all(1 <= i <= 230 for i in drawn)  # only the disjoint pool, never the target


def test_small_pool_is_exhausted_before_it_is_reshuffled():
    data = _pool_of(30, 5)
    pool = OtherImages(data, "cpu", resize_long=(8, 16), crop=8)
    draws = pool.draws(np.random.default_rng(1), data.labels(0), 0)
    drawn = [r["index"] for _ in range(4) for r in draws.draw(20)]
    assert sorted(drawn[:30]) == list(range(1, 31))  # a whole pass before any repeat
    assert sorted(drawn[30:60]) == list(range(1, 31))  # then a fresh one
    assert drawn[:30] != drawn[30:60]


def test_disjoint_prob_below_one_mixes_whole_pool_steps():
    data = _pool_of(30, 30)
    pool = OtherImages(data, "cpu", resize_long=(8, 16), crop=8)
    draws = pool.draws(np.random.default_rng(2), data.labels(0), 0, disjoint_prob=0.0)
    drawn = [r["index"] for _ in range(3) for r in draws.draw(20)]
    assert 0 not in drawn and any(i > 30 for i in drawn)
    assert len(set(drawn)) == 60


def test_engine_draws_one_permutation_per_target():
    from factories import tiny_cam_net
    from rib_ext.config import RIBConfig
    from rib_ext.rib import RIBEngine, Target

    data = _pool_of(12, 3)
    data._images = [np.full((20, 20, 3), 30 * (i % 8), np.uint8) for i in range(len(data))]
    pool = OtherImages(data, "cpu", resize_long=(16, 24), crop=16)
    seen = []
    batch = pool.batch
    pool.batch = lambda recipes: (seen.append([r["index"] for r in recipes]), batch(recipes))[1]
    cfg = RIBConfig(steps=3, num_others=4, margin=1e9, lr=1e-3, stop_on_explosion=False,
                    scales=(1.0,), loss_scales=(1.0,), other_resize_long=(16, 24), other_crop=16)
    RIBEngine(tiny_cam_net(k=4), pool, cfg, "cpu").run(
        [Target(0, data.name(0), data.image(0), data.labels(0), pool_index=0)])
    drawn = [i for step in seen for i in step]
    assert len(seen) == 3 and len(set(drawn)) == 12


def test_other_images_resized_with_pil_bicubic_on_uint8():
    rng = np.random.default_rng(3)
    data = TinyDataset(n=6, k=4, size=(60, 90))
    pool = OtherImages(data, "cpu", resize_long=(40, 130), crop=96)
    draws = OtherDraws(pool, rng, data.labels(0), 0)
    recipes = draws.draw(6)
    images, _ = pool.batch(recipes)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    for b, r in enumerate(recipes):
        h, w = r["size"]
        want = np.asarray(Image.fromarray(data.image(r["index"])).resize((w, h), Image.BICUBIC))
        if r["flip"]:
            want = want[:, ::-1]
        (st, sb, sl, sr), (dt, db, dl, dr) = r["src"], r["dst"]
        got = images[b][:, dt:db, dl:dr] * std + mean  # back to grey levels
        got = (got * 255).permute(1, 2, 0).numpy()
        assert np.abs(got - want[st:sb, sl:sr]).max() <= 1.0
        # and the normalisation is the authors' (host normalize of the PIL image)
        np.testing.assert_allclose(images[b][:, dt:db, dl:dr].permute(1, 2, 0).numpy(),
                                   normalize(want[st:sb, sl:sr]), atol=1e-5)


def test_coco_images_without_class_stay_in_the_pool(coco_root):  # noqa: F811
    from rib_ext.data import COCODataset

    with pytest.warns(UserWarning, match=STEMS[30]):
        assert STEMS[30] not in COCODataset(coco_root, "train").ids  # targets: no class, no map
    pool_data = COCODataset(coco_root, "train", keep_unlabelled=True)
    assert STEMS[30] in pool_data.ids
    j = pool_data.ids.index(STEMS[30])
    pool = OtherImages(pool_data, "cpu", resize_long=(16, 24), crop=16)
    assert not pool.labels[j].any()
    for i in range(len(pool_data)):
        if pool_data.labels(i).any():
            assert j in pool.candidates(pool_data.labels(i), i, disjoint=True)
