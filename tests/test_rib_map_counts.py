"""How many maps each behaviour sums and how many other images it draws.

The paper: M = sum_{k=0..K} CAM(x; theta_k), K+1 maps; B = 20 images per step, the target among
them. The authors' code: the maps of theta_0..theta_{K-1} (taken before each update), and B = 20
other images besides the target.
"""
import numpy as np
import pytest
import torch

from factories import TinyDataset, tiny_cam_net
from rib_ext.config import RIBConfig
from rib_ext.rib import OtherImages, RIBEngine, Target
from rib_ext.rib import oracle_loop


@pytest.fixture(scope="module")
def setup():
    data = TinyDataset(n=10, k=4)
    model = tiny_cam_net(k=4)
    return data, model


def _counting(monkeypatch, model, pool):
    """Count the target's scale-1.0 maps (CAM passes over its 16 x 16 stage-2 features: a 128 x 128
    image at stride 8) and the other images of each step."""
    counts = {"maps": 0, "others": []}
    batch = pool.batch

    def counted_batch(recipes):
        counts["others"].append(len(recipes))
        return batch(recipes)

    def count_map(module, args):
        counts["maps"] += args[0].shape[-1] == 16

    monkeypatch.setattr(pool, "batch", counted_batch)
    return counts, model.stage3.register_forward_pre_hook(count_map)


@pytest.mark.parametrize("behaviour, maps, others", [("authors", 3, 20), ("paper", 4, 19)])
@pytest.mark.parametrize("run", ["engine", "loop"])
def test_maps_summed_and_other_images_drawn_per_behaviour(setup, monkeypatch, behaviour, maps, others,
                                                          run):
    data, model = setup
    assert RIBConfig.preset("voc", behaviour).num_others == others
    assert RIBConfig.preset("coco", behaviour).num_others == {"authors": 15, "paper": 14}[behaviour]
    image = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    cfg = RIBConfig.preset("voc", behaviour, steps=3, lr=0.02, margin=1e9, scales=(1.0,),
                           loss_scales=(1.0,), other_resize_long=(40, 72), other_crop=48,
                           stop_on_explosion=False, stop_on_margin=False)
    pool = OtherImages(data, "cpu", resize_long=(40, 72), crop=48)
    counts, hook = _counting(monkeypatch, model, pool)
    target = Target(0, "t", image, data.labels(0))
    try:
        if run == "engine":
            result = RIBEngine(model, pool, cfg, "cpu").run([target])[0]
        else:
            result = oracle_loop.adapt_one(model, target, pool, cfg)
    finally:
        hook.remove()
    assert result.record["steps"] == 3
    assert counts["maps"] == maps  # authors: theta_0..theta_2; paper: theta_0..theta_3
    assert counts["others"] == [others] * 3


def test_paper_final_map_is_the_map_of_the_last_weights(setup):
    """The paper's sum is the authors' sum plus the CAM of theta_K (same draws, same updates)."""
    data, model = setup
    pool = OtherImages(data, "cpu", resize_long=(40, 72), crop=48)
    target = Target(0, "t", data.image(0), data.labels(0), pool_index=0)
    cfg = RIBConfig.preset("voc", "paper", steps=2, lr=0.02, num_others=3, scales=(1.0,),
                           loss_scales=(1.0,), other_resize_long=(40, 72), other_crop=48)
    with_final = RIBEngine(model, pool, cfg, "cpu", snapshot_steps=True).run([target])[0]
    without = RIBEngine(model, pool, RIBConfig(**{**cfg.__dict__, "final_map": False}), "cpu",
                        snapshot_steps=True).run([target])[0]
    # One map more; the first K snapshots are the same.
    assert len(with_final.step_maps) == len(without.step_maps) + 1 == 3
    for a, b in zip(with_final.step_maps, without.step_maps):
        torch.testing.assert_close(torch.as_tensor(a["cam"]), torch.as_tensor(b["cam"]))
    assert not np.allclose(with_final.maps["high_res"], without.maps["high_res"])


# ---------------------------------------------------------------- a pool smaller than K x B

class _SmallPool(TinyDataset):
    """Target 0 of class 0; images 1, 2 share it; ``disjoint`` more images of other classes."""

    def __init__(self, disjoint):
        super().__init__(n=3 + disjoint, k=4, size=(24, 32))
        self._labels = np.zeros((3 + disjoint, 4), np.float32)
        self._labels[:3, 0] = 1
        self._labels[3:, 1 + np.arange(disjoint) % 3] = 1


def _draws(monkeypatch, pool):
    drawn = []
    batch = pool.batch
    monkeypatch.setattr(pool, "batch", lambda recipes: drawn.append([r["index"] for r in recipes])
                        or batch(recipes))
    return drawn


def _authors_steps(model, pool, target, cfg):
    from authors_rib_loop import adapt_like_the_authors

    args = {"RIB_iter": cfg.steps, "RIB_lr": cfg.lr, "RIB_batch": cfg.num_others, "score_th": cfg.tau,
            "stop_th": cfg.margin, "explode_th": cfg.explosion_threshold,
            "explode_ratio": cfg.explosion_ratio, "cam_weight_decay": cfg.weight_decay,
            "pooling": cfg.pooling, "seed": cfg.seed}
    state = {n: t.clone() for n, t in model.state_dict().items()}
    try:
        return adapt_like_the_authors(model, state, target, pool, args, dtype=torch.float32)[2]
    finally:
        model.load_state_dict(state)


@pytest.mark.parametrize("disjoint, authors", [(5, 2), (1, "fails"), (0, "n/a")])
def test_a_pool_smaller_than_k_times_b(monkeypatch, disjoint, authors):
    """K = 4 steps of B = 2 need 8 images. The engine always takes its K steps of B: it walks one
    permutation of the disjoint pool and reshuffles when it runs out (5 images: steps 1-2 distinct,
    then a fresh pass; 1 image: that image B times a step); with no disjoint image at all it falls
    back to every other image. The authors' loop (a drop_last DataLoader over the disjoint pool)
    takes floor(5 / 2) = 2 steps, and none below B images, where its map is empty and it fails."""
    data = _SmallPool(disjoint)
    model = tiny_cam_net(k=4)
    pool = OtherImages(data, "cpu", resize_long=(24, 40), crop=32)
    target = Target(0, data.name(0), data.image(0), data.labels(0), pool_index=0)
    cfg = RIBConfig(steps=4, num_others=2, lr=0.02, margin=1e9, scales=(1.0, 0.5, 1.5, 2.0),
                    other_resize_long=(24, 40), other_crop=32, explosion_threshold=1.0)
    drawn = _draws(monkeypatch, pool)
    result = RIBEngine(model, pool, cfg, "cpu").run([target])[0]
    assert result.record["steps"] == 4 and len(drawn) == 4 and all(len(d) == 2 for d in drawn)
    flat = [i for d in drawn for i in d]
    if disjoint:
        assert set(flat) <= set(range(3, 3 + disjoint))  # never an image sharing class 0
        if disjoint >= 4:
            assert len(set(flat[:4])) == 4  # the first pass: distinct images
        assert set(flat) == set(range(3, 3 + disjoint))  # every image of the pool drawn
    else:
        assert set(flat) <= {1, 2}  # the fallback: every other image, sharing a class or not
    # (An explosion threshold of 1 never fires: both sides take every step they have images for.)
    if authors == "fails":
        with pytest.raises(RuntimeError):  # no batch at all: no map to stack and save
            _authors_steps(model, pool, target, cfg)
    elif authors != "n/a":  # (the transcription draws through our stream, which falls back)
        assert _authors_steps(model, pool, target, cfg) == authors
