"""RIB's data made on the adaptation device: the other images' batches and the target's
views from the cached uint8 images with resize_bicubic_u8, staged on a side stream, equal bit for
bit to the Pillow-on-the-host path they replace (kept here as the oracle)."""
import dataclasses

import numpy as np
import pytest
import torch

from factories import TinyDataset, make_image, tiny_cam_net
from rib_ext.config import IMAGENET_MEAN, IMAGENET_STD, RIBConfig
from rib_ext.data.transforms import (BICUBIC, crop_boxes, multiscale_flip_views,
                                     multiscale_flip_views_tensor, normalize, resize)
from rib_ext.rib import OtherImages, RIBEngine, Target
from rib_ext.rib.staging import SideStream, Staged, to_device
from rib_ext.rib.targets import TargetViews


def pillow_batch(pool, recipes):
    """The other images as the host builds them: Pillow on the host, then per image on the device
    float, flip, normalise and paste on zeros; labels gathered on the device."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = torch.zeros(len(recipes), 3, pool.crop, pool.crop)
    for b, r in enumerate(recipes):
        host = pool.dataset.image(r["index"])
        img = torch.from_numpy(np.array(resize(host, r["size"], BICUBIC))).permute(2, 0, 1).float()
        if r["flip"]:
            img = img.flip(-1)
        img = (img / 255.0 - mean) / std
        (st, sb, sl, sr), (dt, db, dl, dr) = r["src"], r["dst"]
        out[b, :, dt:db, dl:dr] = img[:, st:sb, sl:sr]
    index = torch.tensor([r["index"] for r in recipes])
    return out, torch.from_numpy(pool.labels).index_select(0, index)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal as bit patterns (a -0.0 against a 0.0 pad would fail here, not in assert_close)."""
    assert a.shape == b.shape and a.dtype == b.dtype and a.dtype in (torch.float32, torch.int64)
    view = torch.int32 if a.dtype == torch.float32 else torch.int64
    assert torch.equal(a.contiguous().view(view), b.contiguous().view(view))


@pytest.fixture(scope="module")
def photo_data():
    """VOC's other-image recipe scaled down by 10: ~50x37 images, long side 32..64, crop 48
    (crops larger and smaller than the resized image, both flips)."""
    data = TinyDataset(n=10, k=4, size=(37, 50), seed=3)
    data._images = [make_image(*im.shape[:2], seed=20 + i) for i, im in enumerate(data._images)]
    return data


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_other_images_batch_is_the_pillow_path_bit_for_bit(photo_data, seed):
    pool = OtherImages(photo_data, "cpu", resize_long=(32, 64), crop=48)
    rng = np.random.default_rng(seed)
    stream = pool.draws(rng, photo_data.labels(0), 0, disjoint_prob=0.0)
    for _ in range(3):
        recipes = stream.draw(7)
        images, labels = pool.batch(recipes)
        want_images, want_labels = pillow_batch(pool, recipes)
        same_bits(images, want_images)
        torch.testing.assert_close(labels, want_labels, rtol=0, atol=0)
        assert images.is_contiguous()
    flips = [r["flip"] for r in recipes]
    assert any(flips) or seed != 0  # the flip branch is exercised


def test_other_images_resized_upward_and_to_one_pixel(photo_data):
    pool = OtherImages(photo_data, "cpu", resize_long=(1, 120), crop=48)
    recipes = []
    for i, size in enumerate([(1, 1), (1, 90), (120, 87), (48, 48)]):
        src, dst = crop_boxes(size, 48, np.random.default_rng(i))
        recipes.append({"index": i, "size": size, "flip": i % 2 == 1, "src": src, "dst": dst})
    same_bits(pool.batch(recipes)[0], pillow_batch(pool, recipes)[0])


@pytest.mark.parametrize("shape", [(37, 50), (1, 7), (9, 1), (33, 33)])
def test_target_views_are_the_host_views_bit_for_bit(shape):
    img = make_image(*shape, seed=sum(shape))
    scales = (1.0, 0.5, 1.5, 2.0, 0.3)
    host = multiscale_flip_views(img, scales)
    device = multiscale_flip_views_tensor(torch.from_numpy(img), scales)
    for h, d in zip(host, device, strict=True):
        same_bits(d, h)


def test_target_views_take_label_and_keys():
    data = TinyDataset(n=2, k=5, size=(21, 30))
    target = Target(1, data.name(1), data.image(1), data.labels(1))
    views, label, keys = TargetViews("cpu", (1.0, 0.5)).take(target)
    for v, h in zip(views, multiscale_flip_views(target.image, (1.0, 0.5)), strict=True):
        same_bits(v, h)
    torch.testing.assert_close(label, torch.as_tensor(target.label, dtype=torch.float32), rtol=0, atol=0)
    assert keys.dtype == torch.int64 and keys.tolist() == np.nonzero(target.label)[0].tolist()


def test_normalizer_is_numpy_normalize():
    from rib_ext.data.transforms import Normalizer

    img = make_image(17, 23, seed=5)
    got = Normalizer("cpu")(torch.from_numpy(img).permute(2, 0, 1)).permute(1, 2, 0)
    same_bits(got.contiguous(), torch.from_numpy(normalize(img)))


def test_lookahead_yields_every_target_in_order_and_stages_them():
    views = TargetViews("cpu", (1.0,))
    data = TinyDataset(n=5, k=3, size=(8, 9))
    targets = [Target(i, data.name(i), data.image(i), data.labels(i)) for i in range(5)]
    seen = []
    for t in views.lookahead(iter(targets), background=True):
        assert id(t) in views._ready  # staged before it was handed out
        seen.append(t.index)
        views.take(t)
    assert seen == list(range(5)) and not views._ready
    assert [t.index for t in views.lookahead(targets, background=False)] == list(range(5))


def test_lookahead_passes_the_datasets_error_on():
    def broken():
        yield Target(0, "a", np.zeros((4, 4, 3), np.uint8), np.ones(2, np.float32))
        raise OSError("cannot decode b.jpg")

    views = TargetViews("cpu", (1.0,))
    got = views.lookahead(broken(), background=True)
    assert next(got).name == "a"
    with pytest.raises(OSError, match="b.jpg"):
        next(got)


def test_staging_on_the_cpu_runs_inline_and_copies():
    side = SideStream("cpu")
    staged = side.run(lambda: torch.ones(2))
    assert isinstance(staged, Staged) and staged.event is None
    torch.testing.assert_close(staged.take(), torch.ones(2))
    host = np.arange(3, dtype=np.float32)
    t = to_device(host, torch.device("cpu"))
    host[0] = 7  # a copy: the caller's array may change afterwards
    assert t.tolist() == [0.0, 1.0, 2.0]


def test_engine_with_prefetch_on_the_cpu_gives_the_same_maps(photo_data):
    """prefetch='on' on the CPU: other images built in the prefetch thread, targets fetched and
    prepared one ahead in their own thread; maps and records as without."""
    pool = OtherImages(photo_data, "cpu", resize_long=(32, 64), crop=40)
    model = tiny_cam_net(k=4)
    targets = [Target(i, photo_data.name(i), photo_data.image(i), photo_data.labels(i), pool_index=i)
               for i in range(3)]
    cfg = RIBConfig.preset(behaviour="authors", steps=2, lr=0.02, num_others=2,
                           other_resize_long=(32, 64), other_crop=40, margin=1e9, scales=(1.0, 0.5),
                           loss_scales=(1.0,), group_size=2)
    runs = [sorted(RIBEngine(model, pool, dataclasses.replace(cfg, prefetch=p), "cpu").run(targets),
                   key=lambda r: r.name) for p in ("off", "on")]
    for a, b in zip(*runs, strict=True):
        assert a.record["steps"] == b.record["steps"] and a.record["stop"] == b.record["stop"]
        np.testing.assert_array_equal(a.maps["high_res"], b.maps["high_res"])


@pytest.mark.needs_cuda
def test_cuda_batches_and_views_equal_the_cpu_ones(photo_data):
    cpu = OtherImages(photo_data, "cpu", resize_long=(32, 64), crop=48)
    gpu = OtherImages(photo_data, "cuda", resize_long=(32, 64), crop=48)
    recipes = cpu.draw(np.random.default_rng(4), photo_data.labels(0), 0, 8, 0.0)
    staged = gpu.stage([recipes, recipes[:3]])
    (images, labels), (few, _) = staged.take()
    same_bits(images.cpu(), cpu.batch(recipes)[0])
    same_bits(few.cpu(), cpu.batch(recipes[:3])[0])
    torch.testing.assert_close(labels.cpu(), cpu.batch(recipes)[1], rtol=0, atol=0)
    target = Target(0, "t", make_image(37, 50, seed=1), np.eye(4, dtype=np.float32)[1])
    views, label, keys = TargetViews("cuda", (1.0, 0.5, 1.5, 2.0)).take(target)
    for v, h in zip(views, multiscale_flip_views(target.image, (1.0, 0.5, 1.5, 2.0)), strict=True):
        same_bits(v.cpu(), h)  # numpy's float32 arithmetic, bit for bit, on the GPU
    assert keys.tolist() == [1] and label.device.type == "cuda"
