"""The RIB engine (grouped, fused, functional) against the slow per-image reference loop."""
import dataclasses

import numpy as np
import pytest
import torch

from factories import TinyDataset, tiny_cam_net
from rib_ext.config import RIBConfig
from rib_ext.optim import PolyOptimizer
from rib_ext.rib import OtherImages, RIBEngine, Target
from rib_ext.rib import oracle_loop
from rib_ext.sgd import sgd_update_


def tiny_cfg(preset="authors", **kw):
    base = dict(steps=3, lr=0.02, num_others=3, other_resize_long=(40, 72), other_crop=48,
                margin=1e9, scales=(1.0, 0.5, 1.5), loss_scales=(1.0, 1.5), group_size=1)
    base.update(kw)
    return RIBConfig.preset(behaviour=preset, **base)


@pytest.fixture(scope="module")
def setup():
    data = TinyDataset(n=8, k=4)
    model = tiny_cam_net(k=4)
    pool = OtherImages(data, "cpu", resize_long=(40, 72), crop=48)
    targets = [Target(i, data.name(i), data.image(i), data.labels(i), pool_index=i)
               for i in range(4)]
    return data, model, pool, targets


def _compare(ours, theirs):
    assert [r.name for r in ours] == [r.name for r in theirs]
    for a, b in zip(ours, theirs):
        assert a.record["steps"] == b.record["steps"], (a.record, b.record)
        assert a.record["stop"] == b.record["stop"]
        np.testing.assert_allclose(a.record["target_logit_sums"], b.record["target_logit_sums"],
                                   rtol=1e-4, atol=1e-3)
        np.testing.assert_array_equal(a.maps["keys"], b.maps["keys"])
        torch.testing.assert_close(a.maps["cam"], b.maps["cam"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.maps["high_res"], b.maps["high_res"], rtol=1e-4, atol=1e-5)


def _run_engine(model, pool, targets, cfg, read_lag=None):
    results = RIBEngine(model, pool, cfg, "cpu", read_lag=read_lag).run(targets)
    return sorted(results, key=lambda r: r.name)


def _run_loop(model, pool, targets, cfg):
    return [oracle_loop.adapt_one(model, t, pool, cfg) for t in targets]


@pytest.mark.parametrize("preset", ["authors", "paper"])
def test_engine_matches_reference_loop(setup, preset):
    _, model, pool, targets = setup
    cfg = tiny_cfg(preset, margin=5.0 if preset == "paper" else 1e9)
    ours = _run_engine(model, pool, targets, cfg)
    _compare(ours, _run_loop(model, pool, targets, cfg))
    # The adaptation must move the maps: differ from a zero-step (plain CAM) map.
    plain = _run_engine(model, pool, targets[:1], dataclasses.replace(cfg, steps=1))
    assert not np.allclose(ours[0].maps["high_res"], plain[0].maps["high_res"])


@pytest.mark.parametrize("variant", [dict(pooling="gap"), dict(loss="bce_tanh"),
                                     dict(loss="bce_sigmoid"), dict(coco_first20_bug=True),
                                     dict(gndrp_behaviour="paper", clip_loss=False)])
def test_engine_matches_loop_for_ablation_variants(setup, variant):
    _, model, pool, targets = setup
    cfg = tiny_cfg(**variant)
    _compare(_run_engine(model, pool, targets[:2], cfg), _run_loop(model, pool, targets[:2], cfg))


def test_group_independence(setup):
    _, model, pool, targets = setup
    cfg = tiny_cfg()
    alone = _run_engine(model, pool, targets, cfg)
    grouped = _run_engine(model, pool, targets, dataclasses.replace(cfg, group_size=3))
    _compare(grouped, alone)


def test_vmap_over_group_weights_matches_loop(setup):
    _, model, pool, targets = setup
    cfg = tiny_cfg(group_size=3)
    looped = _run_engine(model, pool, targets, cfg)
    _compare(_run_engine(model, pool, targets, dataclasses.replace(cfg, head_batching="vmap")), looped)


# read_lag 1 with G 2: the stops are decided on the device and read a step late, so each image
# computes one more (masked) step before the host sees it stop, and the next image joins later.
LATE = [dict(read_lag=0, group_size=1), dict(read_lag=1, group_size=1), dict(read_lag=1, group_size=2)]


@pytest.mark.parametrize("late", LATE)
def test_margin_stop_fires_and_keeps_steps_so_far(setup, late):
    _, model, pool, targets = setup
    cfg = tiny_cfg(margin=1e-9, group_size=late["group_size"])  # any nonzero sum exceeds it
    ours = _run_engine(model, pool, targets[:3], cfg, late["read_lag"])
    assert all(r.record["stop"] == "margin" and r.record["steps"] == 1 for r in ours)
    _compare(ours, _run_loop(model, pool, targets[:3], cfg))


@pytest.mark.parametrize("late", LATE)
def test_explosion_stop_fires_from_step_one(setup, late):
    _, model, pool, targets = setup
    cfg = tiny_cfg(explosion_threshold=0.0, explosion_ratio=0.0,  # any positive map "covers" it
                   group_size=late["group_size"])
    ours = _run_engine(model, pool, targets[:2], cfg, late["read_lag"])
    # Step 0 never checks; step 1 stops before its update: one update made.
    assert all(r.record["stop"] == "explosion" and r.record["steps"] == 1 for r in ours)
    _compare(ours, _run_loop(model, pool, targets[:2], cfg))
    # The exploded step's scale-1.0 map is in the sum, its other scales are not: the result differs
    # from stopping after step 0 by the margin rule.
    margin_stop = _run_engine(model, pool, targets[:1], tiny_cfg(margin=1e-9))
    assert not np.allclose(ours[0].maps["high_res"], margin_stop[0].maps["high_res"])


def test_paper_preset_has_no_early_stops(setup):
    _, model, pool, targets = setup
    cfg = tiny_cfg("paper", margin=1e-9, explosion_threshold=0.0, explosion_ratio=0.0)
    assert all(r.record["stop"] == "steps" and r.record["steps"] == 3
               for r in _run_engine(model, pool, targets[:2], cfg))


def test_momentum_quirk_matches_authors_optimizer():
    """PolyOptimizer passes weight decay into SGD's momentum slot; the engine's update matches."""
    torch.manual_seed(0)
    w = torch.randn(5, 3, requires_grad=True)
    opt = PolyOptimizer([{"params": [w], "lr": 0.1, "weight_decay": 1e-4}], lr=0.1,
                        weight_decay=1e-4, max_step=10)
    assert opt.param_groups[0]["momentum"] == 1e-4
    p = w.detach().clone()
    bufs = [None]
    for step in range(3):
        g = torch.randn(5, 3)
        w.grad = g.clone()
        opt.step()
        lr = 0.1 * (1 - step / 10) ** 0.9
        sgd_update_([p], [g], bufs, [lr], 1e-4, 1e-4)
        torch.testing.assert_close(p, w.detach(), rtol=0, atol=0)
    fixed = PolyOptimizer([{"params": [w], "lr": 0.1, "weight_decay": 1e-4}], lr=0.1,
                          weight_decay=1e-4, max_step=10, authors_momentum=False)
    assert fixed.param_groups[0]["momentum"] == 0.9


def test_disjoint_sampling(setup):
    data, _, pool, _ = setup
    rng = np.random.default_rng(0)
    for i in range(len(data)):
        label = data.labels(i)
        for r in pool.draw(rng, label, i, 10, disjoint_prob=1.0):
            assert r["index"] != i
            assert (data.labels(r["index"]) * label).sum() == 0
    # disjoint_prob 0 draws from every other image, some of which share a class.
    shared = [(data.labels(r["index"]) * data.labels(0)).sum() > 0
              for r in pool.draw(np.random.default_rng(1), data.labels(0), 0, 50, 0.0)]
    assert any(shared)


def test_other_batch_shapes_and_padding(setup):
    _, _, pool, _ = setup
    recipes = pool.draw(np.random.default_rng(3), np.array([1, 0, 0, 0], np.float32), 0, 4, 1.0)
    images, labels = pool.batch(recipes)
    assert images.shape == (4, 3, 48, 48) and labels.shape == (4, 4)
    for b, r in enumerate(recipes):  # outside the pasted box the canvas is 0 (normalised mean)
        dt, db, dl, dr = r["dst"]
        mask = torch.ones(48, 48, dtype=torch.bool)
        mask[dt:db, dl:dr] = False
        assert images[b][:, mask].abs().sum() == 0


@pytest.mark.parametrize("read_lag", [0, 1])
def test_non_finite_step_is_an_error_naming_the_image(setup, read_lag):
    """A diverging adaptation (NaN target logits) stops with an error, not a silent map; read a
    step late, the same error (and no image delivered before it)."""
    from rib_ext.training import NonFiniteLossError

    _, model, pool, targets = setup
    seen = []
    with pytest.raises(NonFiniteLossError, match=r"rib: step 2 of image img0 \(loss nan, target logit sum nan\), "
                                                 r"img1 .* with learning rate [0-9.e+]+"):
        RIBEngine(model, pool, tiny_cfg(lr=1e30, group_size=2), "cpu",
                  read_lag=read_lag).run(targets[:2], on_result=seen.append)
    assert seen == []


@pytest.mark.parametrize("read_lag", [0, 1])
def test_late_reads_keep_a_stopped_image_as_it_is(setup, read_lag):
    """Margin (and explosion) stops at different steps in a group of 2 over 4 images (images join
    as others leave): read late or at once, the same steps, stops, sums and maps as the reference loop."""
    _, model, pool, targets = setup
    free = _run_engine(model, pool, targets, tiny_cfg())
    margin = float(np.median([max(r.record["target_logit_sums"]) for r in free]))
    cfg = tiny_cfg(margin=margin, group_size=2)
    ours = _run_engine(model, pool, targets, cfg, read_lag)
    stops = {r.record["stop"] for r in ours}
    assert "margin" in stops and len(stops) >= 2, stops  # images stop at different steps, for different reasons
    _compare(ours, _run_loop(model, pool, targets, cfg))
    with pytest.raises(ValueError, match="read_lag"):
        RIBEngine(model, pool, cfg, "cpu", read_lag=2)
