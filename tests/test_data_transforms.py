"""IRN's transforms: geometry, normalisation, padding semantics, multi-scale views, dataset wrappers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rib_ext.config import IMAGENET_MEAN, IMAGENET_STD
from rib_ext.data import (
    ClassificationDataset,
    InferenceDataset,
    TrainTransform,
    hwc_to_chw,
    multiscale_flip_views,
    normalize,
    random_crop_pad,
    random_hflip,
    random_resize_long,
    resize_long,
)


def image(h=30, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_resize_long_image_and_mask():
    img = image(30, 40)
    mask = np.zeros((30, 40), np.uint8)
    mask[:, 20:] = 7
    mask[0, 0] = 255
    out, m = resize_long(img, 20, mask)
    assert out.shape == (15, 20, 3) and m.shape == (15, 20) and out.dtype == np.uint8
    assert set(np.unique(m)) <= {0, 7, 255}  # nearest: no blended labels
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(img).resize((20, 15), Image.BICUBIC)))
    assert resize_long(image(41, 20), 20).shape == (20, 10, 3)  # 20 * 20/41 = 9.76 -> 10
    assert resize_long(img, 40) is img


def test_random_resize_long_range_and_determinism():
    img = image(30, 40)
    longs = {random_resize_long(img, 32, 36, np.random.default_rng(s)).shape[1] for s in range(60)}
    assert longs == {32, 33, 34, 35, 36}
    a = random_resize_long(img, 20, 60, np.random.default_rng(5))
    b = random_resize_long(img, 20, 60, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


def test_random_hflip_moves_image_and_mask_together():
    img = image(4, 6)
    mask = np.arange(24, dtype=np.uint8).reshape(4, 6)
    outcomes = set()
    for s in range(20):
        out, m = random_hflip(img, np.random.default_rng(s), mask)
        flipped = np.array_equal(out, img[:, ::-1])
        assert flipped or np.array_equal(out, img)
        np.testing.assert_array_equal(m, mask[:, ::-1] if flipped else mask)
        outcomes.add(flipped)
    assert outcomes == {True, False}


def test_normalize():
    img = np.array([[[0, 128, 255]]], np.uint8)
    out = normalize(img)
    expected = (np.array([0, 128, 255]) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)


def _find(needle, hay):
    """Offsets (y, x) at which ``needle`` occurs inside ``hay``."""
    hits = []
    for y in range(hay.shape[0] - needle.shape[0] + 1):
        for x in range(hay.shape[1] - needle.shape[1] + 1):
            if np.array_equal(hay[y:y + needle.shape[0], x:x + needle.shape[1]], needle):
                hits.append((y, x))
    return hits


def test_crop_of_a_larger_image_is_a_window():
    img = normalize(image(20, 24))
    seen = set()
    for s in range(15):
        out = random_crop_pad(img, 8, np.random.default_rng(s))
        assert out.shape == (8, 8, 3)
        hits = _find(out, img)
        assert len(hits) == 1
        seen.add(hits[0])
    assert len(seen) > 5  # random placement


def test_smaller_image_is_pasted_whole_into_zero_padding():
    img = normalize(image(5, 7))
    mask = np.full((5, 7), 3, np.uint8)
    seen = set()
    for s in range(15):
        out, m = random_crop_pad(img, 10, np.random.default_rng(s), mask=mask)
        hits = _find(img, out)
        assert len(hits) == 1
        (y, x), = hits
        seen.add((y, x))
        rest = np.ones((10, 10), bool)
        rest[y:y + 5, x:x + 7] = False
        assert (out[rest] == 0).all()
        assert (m[~rest] == 3).all() and (m[rest] == 255).all()
    assert len(seen) > 5


def test_mixed_crop_larger_in_one_axis():
    img = normalize(image(6, 30))
    out = random_crop_pad(img, 12, np.random.default_rng(0), pad_value=-9.0)
    rows = ~(out == -9.0).all(axis=(1, 2))
    assert rows.sum() == 6  # all 6 image rows kept, the rest padding
    assert len(_find(out[rows], img)) == 1


def test_hwc_to_chw():
    img = normalize(image(3, 5))[:, ::-1]
    out = hwc_to_chw(img)
    assert out.shape == (3, 3, 5) and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out[1], img[..., 1])


def test_train_transform():
    tf = TrainTransform(resize_long=(40, 60), crop_size=32)
    a = tf(image(30, 45), np.random.default_rng(1))
    b = tf(image(30, 45), np.random.default_rng(1))
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    torch.manual_seed(7)
    c = tf(image(30, 45))
    torch.manual_seed(7)
    assert torch.equal(c, tf(image(30, 45)))
    # resized long side >= 40 > 32: the crop is all image, no padding
    assert not (a == 0).all(dim=0).any()
    with pytest.raises(ValueError, match="resize_long"):
        TrainTransform(resize_long=(60, 40))


def test_multiscale_flip_views():
    img = image(30, 40)
    views = multiscale_flip_views(img, (1.0, 0.5, 1.5, 2.0))
    assert [tuple(v.shape) for v in views] == [(2, 3, 30, 40), (2, 3, 15, 20), (2, 3, 45, 60), (2, 3, 60, 80)]
    np.testing.assert_allclose(views[0][0].numpy(), hwc_to_chw(normalize(img)))
    half = np.asarray(Image.fromarray(img).resize((20, 15), Image.BICUBIC))
    np.testing.assert_allclose(views[1][0].numpy(), hwc_to_chw(normalize(half)))
    for v in views:
        assert v.dtype == torch.float32
        assert torch.equal(v[1], v[0].flip(-1))


class TinyDataset:
    def __init__(self):
        self.imgs = [image(30, 40, 0), image(24, 20, 1)]

    def __len__(self):
        return 2

    def image(self, i):
        return self.imgs[i]

    def labels(self, i):
        return np.eye(3, dtype=np.float32)[i]

    def name(self, i):
        return f"img{i}"


def test_classification_dataset_batches():
    ds = ClassificationDataset(TinyDataset(), TrainTransform(resize_long=(20, 30), crop_size=16))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["img"].shape == (2, 3, 16, 16) and batch["label"].shape == (2, 3)
    assert batch["name"] == ["img0", "img1"]
    torch.testing.assert_close(batch["label"], torch.eye(3)[:2])


def test_inference_dataset():
    ds = InferenceDataset(TinyDataset(), scales=(1.0, 0.5))
    item = ds[1]
    assert item["name"] == "img1" and item["size"] == (24, 20)
    assert [tuple(v.shape) for v in item["views"]] == [(2, 3, 24, 20), (2, 3, 12, 10)]
    torch.testing.assert_close(item["label"], torch.tensor([0.0, 1.0, 0.0]))
    assert len(ds) == 2
