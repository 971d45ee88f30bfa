"""The RIB engine's speed settings compute what the plain engine computes (issue 13)."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn

from factories import TinyDataset, tiny_cam_net
from rib_ext.config import RIBConfig
from rib_ext.precision import fold_batch_norms
from rib_ext.rib import OtherImages, RIBEngine, Target
from rib_ext.rib.engine import choose_group_size, sgd_update_, sgd_update_foreach_
from rib_ext.rib.image_cache import ImageCache


def small_cfg(**kw):
    base = dict(steps=2, lr=0.02, num_others=2, other_resize_long=(40, 56), other_crop=40,
                margin=1e9, scales=(1.0, 1.5), loss_scales=(1.0, 1.5), group_size=1)
    base.update(kw)
    return RIBConfig.preset(behaviour="authors", **base)


@pytest.fixture(scope="module")
def setup():
    data = TinyDataset(n=6, k=4)
    model = tiny_cam_net(k=4)
    pool = OtherImages(data, "cpu", resize_long=(40, 56), crop=40)
    targets = [Target(i, data.name(i), data.image(i), data.labels(i), pool_index=i) for i in range(2)]
    return data, model, pool, targets


def _run(model, pool, targets, cfg, device="cpu"):
    return sorted(RIBEngine(model, pool, cfg, device).run(targets), key=lambda r: r.name)


def _same(a_results, b_results, atol=0.0):
    for a, b in zip(a_results, b_results, strict=True):
        assert a.record["steps"] == b.record["steps"] and a.record["stop"] == b.record["stop"]
        np.testing.assert_allclose(a.maps["high_res"], b.maps["high_res"], rtol=0, atol=atol)


def _randomise_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)


def test_folded_stem_equals_unfolded_in_float64():
    model = tiny_cam_net(k=4).double().eval()
    _randomise_bn(model)  # fresh BNs are the identity: folding them would prove nothing
    stem = nn.Sequential(model.stage1, model.stage2)
    folded = fold_batch_norms(stem)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 40, 56, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = stem(x), folded(x)
    assert ref.abs().max() > 1.0
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    # the model keeps its batch norms
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.stage1.modules())


def test_fold_refuses_a_batch_norm_without_its_convolution():
    with pytest.raises(ValueError, match="cannot fold"):
        fold_batch_norms(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1)))


def test_foreach_update_is_bit_identical_to_the_loop():
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3, 3, 3), (4,), (5, 4, 1, 1)] * 2  # two images' weights
    a = [torch.randn(s, dtype=torch.float64, generator=g) for s in shapes]
    b = [t.clone() for t in a]
    bufs_a, bufs_b = [None] * 6, [None] * 6
    for step in range(3):
        grads = [torch.randn(s, dtype=torch.float64, generator=g) for s in shapes]
        lrs = [0.1 * (1 - step / 3), 0.1 * (1 - step / 3), 1.0 * (1 - step / 3), 0.2, 0.2, 2.0]
        for lo in (0, 3):
            sgd_update_(a[lo:lo + 3], grads[lo:lo + 3], _view(bufs_a, lo),
                        lrs[lo:lo + 3], 1e-4, 0.9)
        sgd_update_foreach_(b, grads, bufs_b, lrs, 1e-4, 0.9)
        for x, y in zip(a + bufs_a, b + bufs_b):
            assert torch.equal(x, y)


class _view(list):
    """A slice of a list that writes back (sgd_update_ fills empty momentum slots)."""

    def __init__(self, base, lo):
        super().__init__(base[lo:lo + 3])
        self.base, self.lo = base, lo

    def __setitem__(self, i, v):
        super().__setitem__(i, v)
        self.base[self.lo + i] = v


def test_engine_foreach_update_matches_per_image_update(setup):
    _, model, pool, targets = setup
    cfg = small_cfg(group_size=2)
    _same(_run(model, pool, targets, cfg),
          _run(model, pool, targets, dataclasses.replace(cfg, foreach_update=False)))


def test_folded_stem_and_channels_last_keep_the_maps(setup):
    _, model, pool, targets = setup
    cfg = small_cfg(fold_stem=False)
    plain = _run(model, pool, targets, cfg)
    fast = _run(model, pool, targets, dataclasses.replace(cfg, fold_stem=True, channels_last=True))
    assert not np.array_equal(plain[0].maps["high_res"], np.zeros_like(plain[0].maps["high_res"]))
    _same(fast, plain, atol=1e-4)


def test_bf16_maps_correlate_with_float32(setup):
    _, model, pool, targets = setup
    cfg = small_cfg()
    f32 = _run(model, pool, targets, cfg)
    bf16 = _run(model, pool, targets, dataclasses.replace(cfg, precision="bf16"))
    for a, b in zip(f32, bf16):
        assert a.maps["high_res"].dtype == b.maps["high_res"].dtype
        r = np.corrcoef(a.maps["high_res"].ravel(), b.maps["high_res"].ravel())[0, 1]
        assert r > 0.99, r
        assert not np.array_equal(a.maps["high_res"], b.maps["high_res"])  # bf16 really ran


def test_precision_is_checked(setup):
    _, model, pool, _ = setup
    with pytest.raises(ValueError, match="precision"):
        small_cfg(precision="fp16")


def test_prefetch_gives_the_same_maps(setup):
    _, model, pool, targets = setup
    # an explosion at step 1 makes the prefetched draw of a finished image go unused
    for extra in ({}, {"explosion_threshold": 0.0, "explosion_ratio": 0.0}):
        cfg = small_cfg(group_size=2, **extra)
        _same(_run(model, pool, targets, dataclasses.replace(cfg, prefetch="on")),
              _run(model, pool, targets, dataclasses.replace(cfg, prefetch="off")))


def test_streamed_results_are_not_kept(setup):
    _, model, pool, targets = setup
    seen = []
    kept = RIBEngine(model, pool, small_cfg(steps=1), "cpu").run(targets, on_result=seen.append)
    assert kept == [] and sorted(r.name for r in seen) == sorted(t.name for t in targets)


def test_automatic_group_size(setup):
    _, model, pool, targets = setup
    engine = RIBEngine(model, pool, small_cfg(group_size=0), "cpu")
    results = sorted(engine.run(targets), key=lambda r: r.name)
    assert engine.group_size == 1 and engine.group_choice["group_size"] == 1
    _same(results, _run(model, pool, targets, small_cfg()))
    assert choose_group_size(3e9, 16 * 2**30) == 5
    assert choose_group_size(64e9, 16 * 2**30) == 1
    assert choose_group_size(1e6, 16 * 2**30, max_group=8) == 8


def test_image_cache_keeps_to_its_budget():
    decoded = []
    sizes = {0: (10, 20), 1: (12, 8), 2: (6, 6)}

    def decode(i):
        decoded.append(i)
        return np.full(sizes[i] + (3,), i, dtype=np.uint8)

    nbytes = {i: h * w * 3 for i, (h, w) in sizes.items()}
    cache = ImageCache(decode, budget_bytes=nbytes[0] + nbytes[1])
    cache.get(0), cache.get(1), cache.get(0)  # 0 is now the most recently used
    assert decoded == [0, 1] and cache.bytes == nbytes[0] + nbytes[1]
    cache.get(2)  # over budget: the least recently used (1) goes
    assert cache.bytes <= cache.budget and cache.evictions == 1
    assert cache.size(1) == (12, 8) and decoded == [0, 1, 2]  # its size is still known
    assert int(cache.get(0)[0, 0, 0]) == 0 and decoded == [0, 1, 2]
    assert int(cache.get(1)[0, 0, 0]) == 1 and decoded == [0, 1, 2, 1]
    nothing = ImageCache(decode, budget_bytes=0)
    nothing.get(2), nothing.get(2)
    assert len(nothing) == 0 and decoded[-2:] == [2, 2]
    with pytest.raises(ValueError, match="budget"):
        ImageCache(decode, budget_bytes=-1)


def test_pool_with_a_tiny_cache_draws_the_same_crops(setup):
    data, _, pool, _ = setup
    small = OtherImages(data, "cpu", resize_long=(40, 56), crop=40, cache_bytes=1)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    ra = pool.draw(rng_a, data.labels(0), 0, 3, 1.0)
    rb = small.draw(rng_b, data.labels(0), 0, 3, 1.0)
    assert ra == rb
    torch.testing.assert_close(pool.batch(ra)[0], small.batch(rb)[0], rtol=0, atol=0)
    assert len(small.cache) == 0


@pytest.mark.needs_cuda
def test_cuda_speed_settings_keep_the_maps(setup):
    _, model, pool, targets = setup
    cuda_pool = OtherImages(pool.dataset, "cuda", resize_long=(40, 56), crop=40)
    cfg = small_cfg(group_size=2)
    ref = _run(model, pool, targets, cfg)
    fast = _run(model, cuda_pool, targets, dataclasses.replace(cfg, prefetch="on", channels_last=True,
                                                                 cudnn_benchmark=True), "cuda")
    _same(fast, ref, atol=1e-3)
    bf16 = _run(model, cuda_pool, targets, dataclasses.replace(cfg, precision="bf16"), "cuda")
    for a, b in zip(ref, bf16):
        assert np.corrcoef(a.maps["high_res"].ravel(), b.maps["high_res"].ravel())[0, 1] > 0.99


@pytest.mark.needs_cuda
def test_cuda_prefetch_is_deterministic_and_auto_group_measures(setup):
    _, model, _, targets = setup
    cuda_pool = OtherImages(setup[0], "cuda", resize_long=(40, 56), crop=40)
    cfg = small_cfg(group_size=2)
    _same(_run(model, cuda_pool, targets, dataclasses.replace(cfg, prefetch="on"), "cuda"),
          _run(model, cuda_pool, targets, dataclasses.replace(cfg, prefetch="off"), "cuda"))
    engine = RIBEngine(model, cuda_pool, small_cfg(group_size=0, group_memory_gb=1.0), "cuda")
    engine.run(targets)
    assert engine.group_choice["step_bytes_per_image"] > 0 and engine.group_size >= 1


def test_make_cam_speed_settings_keep_the_maps(setup):
    from rib_ext.data.transforms import multiscale_flip_views
    from rib_ext.cam.maps import image_maps

    data, model, _, _ = setup
    views = multiscale_flip_views(data.image(0), (1.0, 0.5, 1.5))
    keys = np.nonzero(data.labels(0))[0]
    size = data.image(0).shape[:2]
    ref = image_maps(model, views, size, keys)
    cl = image_maps(model, views, size, keys, channels_last=True)
    bf16 = image_maps(model, views, size, keys, precision="bf16")
    np.testing.assert_allclose(cl["high_res"], ref["high_res"], rtol=0, atol=1e-5)
    assert bf16["high_res"].dtype == ref["high_res"].dtype
    assert np.corrcoef(ref["high_res"].ravel(), bf16["high_res"].ravel())[0, 1] > 0.99
    assert not np.array_equal(ref["high_res"], bf16["high_res"])
