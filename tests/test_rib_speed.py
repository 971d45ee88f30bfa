"""The RIB engine's speed settings compute what the plain engine computes."""
import contextlib
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn

from factories import TinyDataset, tiny_cam_net
from rib_ext.config import ConfigError, RIBConfig
from rib_ext.precision import fold_batch_norms
from rib_ext.rib import OtherImages, RIBEngine, Target
from rib_ext.rib.group_size import choose_group_size
from rib_ext.rib.image_cache import ImageCache
from rib_ext.sgd import sgd_update_, sgd_update_foreach_


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


@contextlib.contextmanager
def deterministic_cudnn():
    """cuDNN's deterministic algorithms (no timing) for a test that compares CUDA runs bit for bit;
    the process's flags as they were afterwards."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


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
    """The whole-group foreach update (CUDA's) and the per-parameter one (the CPU's, and
    foreach_update off): the same maps bit for bit."""
    _, model, pool, targets = setup
    cfg = small_cfg(group_size=2)
    foreach = RIBEngine(model, pool, cfg, "cpu")
    assert not foreach.foreach  # the CPU updates parameter by parameter
    foreach.foreach = True  # as on CUDA
    _same(sorted(foreach.run(targets), key=lambda r: r.name),
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
    with deterministic_cudnn():  # compared bit for bit
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


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_bf16_on_every_grouped_path_correlates_with_float32(setup, batching):
    """bf16 on the vmap path once raised on the CPU (autocast does not reach inside vmap)."""
    _, model, pool, targets = setup
    cfg = small_cfg(group_size=2, head_batching=batching)
    f32 = _run(model, pool, targets, cfg)
    bf16 = _run(model, pool, targets, dataclasses.replace(cfg, precision="bf16", channels_last=True))
    bf16_alone = _run(model, pool, targets, small_cfg(precision="bf16", channels_last=True))
    for a, b, c in zip(f32, bf16, bf16_alone, strict=True):
        assert a.record["steps"] == b.record["steps"] and a.record["stop"] == b.record["stop"]
        r = np.corrcoef(a.maps["high_res"].ravel(), b.maps["high_res"].ravel())[0, 1]
        assert r >= 0.99, r  # the fidelity criterion of benchmarks/RESULTS.md
        assert not np.array_equal(a.maps["high_res"], b.maps["high_res"])  # bf16 really ran
        # grouped bf16 against the same image adapted alone in bf16: bf16 rounding apart, equal
        np.testing.assert_allclose(b.maps["high_res"], c.maps["high_res"], rtol=0, atol=1e-3)


def _bn(c=6, seed=0):
    from rib_ext.models.resnet_cam import FixedBatchNorm
    g = torch.Generator().manual_seed(seed)
    bn = FixedBatchNorm(c).eval()
    bn.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
    bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    bn.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
    bn.bias.data.copy_(torch.rand(c, generator=g) - 0.5)
    return bn


def test_affine_batch_norm_equals_the_fixed_batch_norm():
    from rib_ext.rib.head import AffineBatchNorm
    bn = _bn().double()
    x = torch.randn(3, 6, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(AffineBatchNorm(bn)(x).double(), bn(x), rtol=0, atol=1e-6)
    # bf16 input, float32 parameters: autocast's mixed batch norm, to bf16 rounding
    bn = _bn()
    xb = x.float().to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = bn(xb)
    out = AffineBatchNorm(bn)(xb)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)


def test_affine_batch_norm_under_vmap_in_bf16_matches_each_image():
    """vmap over per-image affine parameters with a bf16 input (vmap's own batch-norm rule
    raises there), gradients included."""
    from torch.func import functional_call, vmap
    from rib_ext.rib.head import AffineBatchNorm
    bn = AffineBatchNorm(_bn())
    g = torch.Generator().manual_seed(2)
    weights = (torch.rand(3, 6, generator=g) + 0.5).requires_grad_()
    biases = (torch.rand(3, 6, generator=g) - 0.5).requires_grad_()
    x = torch.randn(3, 2, 6, 4, 4, generator=g).to(torch.bfloat16)

    def one(w, b, xi):
        return functional_call(bn, {"weight": w, "bias": b}, (xi,))

    batched = vmap(one)(weights, biases, x)
    looped = torch.stack([one(weights[i], biases[i], x[i]) for i in range(3)])
    assert batched.dtype == torch.bfloat16
    torch.testing.assert_close(batched.float(), looped.float(), rtol=0, atol=0)
    gw_b, gb_b = torch.autograd.grad(batched.float().square().sum(), (weights, biases))
    gw_l, gb_l = torch.autograd.grad(looped.float().square().sum(), (weights, biases))
    torch.testing.assert_close(gw_b, gw_l, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gb_b, gb_l, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError):  # why AffineBatchNorm exists: vmap's rule refuses this
        raw = _bn()
        vmap(lambda w, b, xi: functional_call(raw, {"weight": w, "bias": b}, (xi,)))(weights, biases, x)


def test_cudnn_benchmark_is_set_only_inside_the_block():
    from rib_ext.precision import cudnn_benchmark
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        with cudnn_benchmark(True):
            assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.benchmark is False
        with pytest.raises(KeyError), cudnn_benchmark(True):
            raise KeyError("restored on the way out of an error too")
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


def test_split_backward_of_the_benchmarked_pass_keeps_the_maps(setup):
    """With cudnn_benchmark on CUDA the other images' backward runs apart (timed by cuDNN), the
    target's apart (not timed): the same gradients. Forced on here on the CPU."""
    _, model, pool, targets = setup
    for batching in ("loop", "vmap"):
        cfg = small_cfg(group_size=2, head_batching=batching)
        engine = RIBEngine(model, pool, cfg, "cpu")
        engine.bench_others = True
        before = torch.backends.cudnn.benchmark
        split = sorted(engine.run(targets), key=lambda r: r.name)
        assert torch.backends.cudnn.benchmark == before  # not left set
        _same(split, _run(model, pool, targets, cfg), atol=1e-6)


def test_automatic_group_size_from_free_memory_and_the_largest_target(setup, monkeypatch):
    _, model, pool, _ = setup
    gib = 2**30
    engine = RIBEngine(model, pool, small_cfg(group_size=0), "cpu")
    engine.device = torch.device("cuda")  # only the choice runs: memory figures are faked
    probed = []
    monkeypatch.setattr(engine, "_probe_step_bytes", lambda size: probed.append(size) or 3 * gib)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * gib, 141 * gib))
    assert engine._choose_group_size((333, 500)) == 12  # 40 GiB less a tenth, 3 GiB a step
    assert probed == [(333, 500)]
    assert engine.group_choice["free_bytes"] == 40 * gib
    assert engine.group_choice["largest_target"] == [333, 500]
    engine.cfg = small_cfg(group_size=0, group_memory_gb=16.0)  # a cap below the free memory
    assert engine._choose_group_size((333, 500)) == 5
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * gib, 141 * gib))
    assert engine._choose_group_size((333, 500)) == 1  # never below one image
    # With graphs, each image's graph pool (one more step) and weight slots count too.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * gib, 141 * gib))
    engine.cfg = small_cfg(group_size=0)
    engine.graphs = {}
    slot_bytes = 3 * 4 * sum(p.numel() for p in engine.base)
    assert engine._choose_group_size((333, 500)) == int(36 * gib // (6 * gib + slot_bytes)) == 5
    assert engine.group_choice["graph_pool_bytes_per_image"] == 3 * gib
    assert engine.group_choice["slot_bytes_per_image"] == slot_bytes
    engine.cfg = small_cfg(group_size=0, cuda_graphs=True, cuda_graph_targets=True)
    assert engine._choose_group_size((333, 500)) == int(36 * gib // (9 * gib + slot_bytes)) == 3
    with pytest.raises(ValueError, match="group_memory_gb"):
        small_cfg(group_memory_gb=-1.0)


def test_cuda_graphs_setting_is_validated_and_ignored_on_the_cpu(setup):
    from rib_ext import pipeline

    _, model, pool, targets = setup
    with pytest.raises(ConfigError, match="cuda_graphs"):
        small_cfg(cuda_graphs="yes")
    assert pipeline.config_from_argv(["--rib.cuda_graphs", "true"]).rib.cuda_graphs is True
    with pytest.warns(UserWarning, match="cuda_graphs is for CUDA devices: ignored on cpu"):
        engine = RIBEngine(model, pool, small_cfg(cuda_graphs=True), "cpu")
    assert engine.graphs is None
    _same(sorted(engine.run(targets), key=lambda r: r.name), _run(model, pool, targets, small_cfg()))


@pytest.mark.parametrize("batching", ["loop", "vmap"])
def test_graphed_step_maths_equal_the_eager_step_on_the_cpu(setup, monkeypatch, batching):
    """The graphed path computes the other images' loss terms in one function (the graph's) and
    adds each image's term to its target terms: with the capture replaced by the plain function,
    the maps equal the eager path's bit for bit. (The capture itself: CUDA only, below.)"""
    from rib_ext.rib import graphs as graphs_mod

    data, model, pool, _ = setup
    targets = [Target(i, data.name(i), data.image(i), data.labels(i), pool_index=i) for i in range(5)]
    cfg = small_cfg(group_size=2, steps=3, head_batching=batching)  # full groups of 2, a tail of 1
    captured = []
    monkeypatch.setattr(graphs_mod, "capture_graphed", lambda fn, args, **kw: captured.append(len(args)) or fn)
    graphed = RIBEngine(model, pool, cfg, "cpu")
    graphed.graphs = {}  # as cuda_graphs does on CUDA
    results = sorted(graphed.run(targets), key=lambda r: r.name)
    assert list(graphed.graphs) == [2] and captured == [2 + 2 * len(graphed.names)]
    _same(results, _run(model, pool, targets, cfg))


@pytest.mark.needs_cuda
@pytest.mark.parametrize("targets_too", [False, True])
@pytest.mark.parametrize("extra", [{}, dict(precision="bf16", channels_last=True, head_batching="vmap",
                                            cudnn_benchmark=True)])
def test_cuda_graphs_keep_the_maps(setup, extra, targets_too):
    data, model, _, _ = setup
    cuda_pool = OtherImages(data, "cuda", resize_long=(40, 56), crop=40)
    targets = [Target(i, data.name(i), data.image(i), data.labels(i), pool_index=i) for i in range(5)]
    cfg = small_cfg(group_size=2, steps=3, **extra)  # full groups of 2, then a tail of 1 (eager)
    eager = _run(model, cuda_pool, targets, cfg, "cuda")
    engine = RIBEngine(model, cuda_pool, dataclasses.replace(cfg, cuda_graphs=True,
                                                             cuda_graph_targets=targets_too), "cuda")
    graphed = sorted(engine.run(targets), key=lambda r: r.name)
    assert engine.graph_error is None  # no capture failed (a failure would have run eagerly)
    assert list(engine.graphs) == [2]  # captured for G = 2, replayed at every full step
    assert engine.slots is not None and engine.slots.free == [0, 1]
    _same(graphed, eager, atol=1e-5 if not extra else 2e-2)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("targets_too", [False, True])
def test_cuda_graphs_hand_a_slot_to_a_new_image_after_a_margin_stop(setup, monkeypatch, targets_too):
    """Under real graphs: images stop on the margin at different steps, a new image takes the
    stopped one's slot (its weights and momentum start afresh there), and the steps, stops and
    maps are the eager engine's (float32, to the graphs' rounding)."""
    from rib_ext.rib.slots import WeightSlots

    data, model, _, _ = setup
    cuda_pool = OtherImages(data, "cuda", resize_long=(40, 56), crop=40)
    targets = [Target(i, data.name(i), data.image(i), data.labels(i), pool_index=i) for i in range(5)]
    taken = []
    take = WeightSlots.take
    monkeypatch.setattr(WeightSlots, "take", lambda self: taken.append(take(self)) or taken[-1])
    with deterministic_cudnn():
        free = _run(model, cuda_pool, targets, small_cfg(steps=3), "cuda")
        margin = float(np.median([max(r.record["target_logit_sums"]) for r in free]))
        cfg = small_cfg(group_size=2, steps=3, margin=margin)
        eager = _run(model, cuda_pool, targets, cfg, "cuda")
        engine = RIBEngine(model, cuda_pool, dataclasses.replace(cfg, cuda_graphs=True,
                                                                 cuda_graph_targets=targets_too),
                           "cuda")
        graphed = sorted(engine.run(targets), key=lambda r: r.name)
    stops = {r.record["stop"] for r in eager}
    assert "margin" in stops and len(stops) >= 2, stops
    assert engine.graph_error is None and list(engine.graphs) == [2]
    assert len(taken) == len(targets) and set(taken) == {0, 1}  # two slots, handed on
    _same(graphed, eager, atol=1e-5)


@pytest.mark.parametrize("read_lag", [0, 1])
def test_graphed_step_with_weight_slots_reads_late_as_the_eager_step(setup, monkeypatch, read_lag):
    """With graphs the group's weights are rows of one tensor and one kernel (ops.sgd_step_) steps
    them, learning rates and masks from the device. Margin stops at different steps (images leave
    and others take their rows, a stopped image's row masked out until its stop is read): the
    steps, stops and maps equal the eager engine's bit for bit, read at once or a step late."""
    from rib_ext.rib import graphs as graphs_mod
    from rib_ext.rib.slots import WeightSlots

    data, model, pool, _ = setup
    targets = [Target(i, data.name(i), data.image(i), data.labels(i), pool_index=i) for i in range(5)]
    free = _run(model, pool, targets, small_cfg(steps=3))
    margin = float(np.median([max(r.record["target_logit_sums"]) for r in free]))
    cfg = small_cfg(group_size=2, steps=3, margin=margin)
    monkeypatch.setattr(graphs_mod, "capture_graphed", lambda fn, args, **kw: fn)
    graphed = RIBEngine(model, pool, cfg, "cpu", read_lag=read_lag)
    graphed.graphs = {}  # as cuda_graphs does on CUDA
    stepped = []
    monkeypatch.setattr(WeightSlots, "step", _counting(WeightSlots.step, stepped))
    results = sorted(graphed.run(targets), key=lambda r: r.name)
    eager = sorted(RIBEngine(model, pool, cfg, "cpu", read_lag=read_lag).run(targets),
                   key=lambda r: r.name)
    stops = {r.record["stop"] for r in results}
    assert "margin" in stops and len(stops) >= 2, stops
    assert graphed.slots.group_size == 2 and graphed.slots.free == [0, 1] and stepped
    _same(results, eager)


@pytest.mark.parametrize("read_lag", [0, 1])
def test_graphed_target_passes_keep_the_maps_on_the_cpu(setup, monkeypatch, read_lag):
    """cuda_graph_targets: each image's passes at every scale come from its own graph, captured
    once (one warm-up run) and replayed for its steps; with the capture replaced by the plain
    function the steps, stops and maps equal the eager engine's bit for bit."""
    from rib_ext.rib import graphs as graphs_mod

    data, model, pool, _ = setup
    targets = [Target(i, data.name(i), data.image(i), data.labels(i), pool_index=i) for i in range(5)]
    cfg = small_cfg(group_size=2, steps=2, scales=(1.0, 0.5, 1.5), loss_scales=(1.0, 1.5))
    captures = []
    monkeypatch.setattr(graphs_mod, "capture_graphed",
                        lambda fn, args, warmup=3: captures.append((len(args), warmup)) or fn)
    with pytest.warns(UserWarning, match="ignored on cpu"):
        graphed = RIBEngine(model, pool, dataclasses.replace(cfg, cuda_graphs=True,
                                                             cuda_graph_targets=True),
                            "cpu", read_lag=read_lag)
    graphed.graphs = {}  # as cuda_graphs does on CUDA
    results = sorted(graphed.run(targets), key=lambda r: r.name)
    n = len(graphed.names)
    # one capture per image (its three views and weights, one warm-up), one for the group of 2
    assert sorted(captures) == sorted([(3 + n, 1)] * 5 + [(2 + 2 * n, 3)])
    _same(results, sorted(RIBEngine(model, pool, cfg, "cpu", read_lag=read_lag).run(targets),
                          key=lambda r: r.name))
    with pytest.raises(ConfigError, match="cuda_graph_targets .* needs cuda_graphs on"):
        small_cfg(cuda_graph_targets=True)


def _counting(fn, calls):
    def counted(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)
    return counted
