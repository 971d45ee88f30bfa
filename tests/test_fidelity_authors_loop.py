"""The engine against a literal transcription of the authors' per-image loop (tests/authors_rib_loop.py)
on a tiny network in float64: the same accumulated maps bit for bit, the same stops."""
import dataclasses

import numpy as np
import pytest
import torch

from authors_rib_loop import adapt_like_the_authors
from factories import TinyDataset
from rib_ext.config import RIBConfig
from rib_ext.rib import OtherImages, RIBEngine, Target


class _Data(TinyDataset):
    def __init__(self, k, n=40, seed=0):
        super().__init__(n=n, k=k, size=(24, 32), seed=seed)
        rng = np.random.default_rng(seed)
        labels = np.zeros((n, k), np.float32)
        # Targets 0, 1: classes below and (COCO) above 20; the others avoid them, some have none.
        labels[0, [3, k - 5]] = 1
        labels[1, [7]] = 1
        for i in range(2, n):
            if k == 80 and i % 7 == 0:
                continue  # COCO keeps images with no class in the pool
            labels[i, rng.choice([c for c in range(k) if c not in (3, 7, k - 5)], 2, False)] = 1
        self._labels = labels


class _Engine(RIBEngine):
    """Keeps each image's accumulated per-scale maps (the authors' outputs_cam); float64 input."""

    def _stem(self, x):
        return super()._stem(x.double())

    def _finish(self, st):
        res = super()._finish(st)
        res.record["acc"] = [a.clone() for a in st.acc]
        return res


def _tiny_net(k):
    """A narrow random ResNet-10 CAMNet in float64 (inputs cast by the stem)."""
    import warnings

    from rib_ext.models import build_cam_net

    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_cam_net("resnet_tiny", k, random_init=True)
    for m in model.modules():
        if getattr(m, "running_var", None) is not None:
            m.running_var.fill_(4.0)
    model = model.eval().double()
    stem = model.stem
    model.stem = lambda x: stem(x.double())
    return model


@pytest.fixture(scope="module", params=["voc", "coco"])
def world(request):
    k = 20 if request.param == "voc" else 80
    data = _Data(k)
    model = _tiny_net(k)
    state = {n: t.clone() for n, t in model.state_dict().items()}
    pool = OtherImages(data, "cpu", resize_long=(24, 40), crop=32)
    targets = [Target(i, data.name(i), data.image(i), data.labels(i), pool_index=i) for i in (0, 1)]
    return request.param, model, state, pool, targets


def _cfg(dataset, margin, explode_th):
    # fold_stem=False: the authors' stem keeps its batch norms (folding them changes the rounding).
    return RIBConfig.preset(dataset, behaviour="authors", steps=3, fold_stem=False, num_others=3, lr=0.02 if dataset == "voc" else 0.05,
                                margin=margin, explosion_threshold=explode_th,
                                other_resize_long=(24, 40), other_crop=32, seed=5)


def _authors(model, state, pool, target, cfg):
    args = {"RIB_iter": cfg.steps, "RIB_lr": cfg.lr, "RIB_batch": cfg.num_others, "score_th": cfg.tau,
            "stop_th": cfg.margin, "explode_th": cfg.explosion_threshold,
            "explode_ratio": cfg.explosion_ratio, "cam_weight_decay": cfg.weight_decay,
            "pooling": cfg.pooling, "seed": cfg.seed}
    out = adapt_like_the_authors(model, state, target, pool, args)
    model.load_state_dict(state)  # the authors' loop trains the model in place
    return out


@pytest.mark.parametrize("case", ["none", "margin", "explosion", "both"])
def test_engine_is_the_authors_loop(world, case):
    dataset, model, state, pool, targets = world
    if case == "both" and dataset == "coco":
        pytest.skip("covered on VOC")
    # Threshold 0 and ratio 0: any positive location "explodes" the map at step 1; a threshold of
    # 1 never fires (max-normalised maps stay below 1).
    explode = case in ("explosion", "both")
    cfg = _cfg(dataset, 1e9, 0.0 if explode else 1.0)
    if explode:
        cfg = dataclasses.replace(cfg, explosion_ratio=0.0)
    if case in ("margin", "both"):
        # Half the free run's largest target logit sum: crossed at some step <= K.
        free = _authors(model, state, pool, targets[0], dataclasses.replace(cfg, explosion_threshold=1.0))
        cfg = dataclasses.replace(cfg, margin=max(free[4]) / 2)
    assert cfg.coco_first20_bug == (dataset == "coco")
    engine = _Engine(model, pool, cfg, "cpu")
    ours = sorted(engine.run(targets), key=lambda r: r.record["index"])
    stops = []
    for target, res in zip(targets, ours):
        acc, maps, steps, stop, sums = _authors(model, state, pool, target, cfg)
        stops.append(stop)
        assert (res.record["steps"], res.record["stop"]) == (steps, stop)
        np.testing.assert_allclose(res.record["target_logit_sums"], np.round(sums, 4), rtol=0, atol=1e-4)
        assert len(res.record["acc"]) == len(acc) == 4  # scales 1.0, 0.5, 1.5, 2.0
        for a, b in zip(res.record["acc"], acc):
            assert a.dtype == b.dtype == torch.float64
            torch.testing.assert_close(a, b, rtol=0, atol=0)  # bit-identical
        np.testing.assert_array_equal(res.maps["keys"], maps["keys"].numpy())
        torch.testing.assert_close(res.maps["cam"], maps["cam"].float(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res.maps["high_res"], maps["high_res"].float().numpy(),
                                   rtol=1e-5, atol=1e-6)
    want = {"none": "steps", "margin": "margin", "explosion": "explosion", "both": None}[case]
    if want:
        assert stops[0] == want
    else:
        assert set(stops) <= {"margin", "explosion"}
