"""The toy experiment (rib_ext.toy): regions and HGR worked by hand, gradient maps, MNIST files,
and a tiny end-to-end run."""
import gzip
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from rib_ext.toy import (ToyConfig, ToyNet, gradient_maps, hgr, make_toy_data, normalise_maps,
                         region_masks, rib_g6_maps, rib_loss, run_toy)
from rib_ext.toy.__main__ import config_from_args, parse_args
from rib_ext.toy.data import CIRCLE, SQUARE, place_shape, shape_stamp
from rib_ext.toy.experiment import layer_names, verdict_final_layer, verdict_rib
from rib_ext.toy.mnist import IMAGES, LABELS, load_mnist_train



pytestmark = pytest.mark.usefixtures("one_thread")


# 4x4 example: digit intensities, the added shape, and a raw (signed) gradient map.
DIGIT = np.array([[0.0, 0.9, 0.9, 0.0],
                  [0.0, 0.8, 0.2, 0.0],
                  [0.0, 0.6, 0.0, 0.0],
                  [0.0, 0.0, 0.0, 0.0]])
SHAPE = np.array([[0, 0, 0, 0],
                  [0, 0, 0, 0],
                  [0, 1, 0, 0],
                  [1, 0, 0, 0]], dtype=bool)
GRAD = torch.tensor([[0.0, -4.0, 1.0, 0.0],
                     [0.0, 2.0, 0.5, 0.0],
                     [3.2, 8.0, 0.0, 0.0],
                     [3.0, 0.0, 0.0, -0.4]])


def test_region_masks_partition_with_shape_winning_over_digit():
    r = region_masks(DIGIT, SHAPE, threshold=0.5)
    # Digit > 0.5 at (0,1) (0,2) (1,1) (2,1); (2,1) lies under the shape, so R_D keeps 3 pixels.
    assert sorted(map(tuple, torch.nonzero(r["D"]).tolist())) == [(0, 1), (0, 2), (1, 1)]
    assert sorted(map(tuple, torch.nonzero(r["ND"]).tolist())) == [(2, 1), (3, 0)]
    assert int(r["BG"].sum()) == 16 - 3 - 2
    assert bool((r["D"].int() + r["ND"].int() + r["BG"].int() == 1).all())


def test_hgr_worked_example():
    r = region_masks(DIGIT, SHAPE, threshold=0.5)
    norm = normalise_maps(GRAD)
    # |G| / 8: D sees 0.5, 0.125, 0.25 -> one above 0.3; ND sees 1.0, 0.375 -> both;
    # BG's largest values are 0.4 at (2,0) (above) and 0.0625, 0.05 (below) -> 1 of 11.
    assert norm.max() == 1.0 and norm[0, 1] == 0.5
    assert float(hgr(norm, r["D"], 0.3)) == pytest.approx(1 / 3)
    assert float(hgr(norm, r["ND"], 0.3)) == pytest.approx(1.0)
    assert float(hgr(norm, r["BG"], 0.3)) == pytest.approx(1 / 11)
    # A stricter threshold drops ND's 0.375; "exceeds" is strict: D's 0.5 is not above 0.5.
    assert float(hgr(norm, r["ND"], 0.4)) == pytest.approx(0.5)
    assert float(hgr(norm, r["D"], 0.5)) == 0.0
    # Leading dims are kept.
    batch = hgr(torch.stack([norm, torch.zeros(4, 4)]), torch.stack([r["D"], r["D"]]), 0.3)
    assert batch.shape == (2,) and batch.tolist() == pytest.approx([1 / 3, 0.0])
    assert math.isnan(float(hgr(norm, torch.zeros(4, 4, dtype=torch.bool), 0.3)))


def test_normalise_keeps_zero_maps_zero():
    z = normalise_maps(torch.zeros(2, 3, 3))
    assert torch.equal(z, torch.zeros(2, 3, 3))


def test_place_shape_avoids_the_digit():
    digit = np.zeros((20, 20), bool)
    digit[:, :12] = True  # only the right 8 columns are free
    stamp = shape_stamp(SQUARE, ToyConfig())
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = place_shape(digit, stamp, 0.1, rng)
        assert m.sum() == stamp.sum()
        assert (m & digit).sum() <= 0.1 * stamp.sum()
    assert shape_stamp(CIRCLE, ToyConfig()).sum() == 29


@pytest.fixture(scope="module")
def small_data():
    return make_toy_data(replace(ToyConfig(), copies=1, eval_images=10), seed=3)


def test_toy_data_regions_and_shapes(small_data):
    d = small_data
    n, h, w = d.regions["D"].shape
    assert d.images.shape == (n, 1, 32, 32) and (h, w) == (32, 32) and n == 351
    total = sum(d.regions[k].int() for k in ("D", "ND", "BG"))
    assert bool((total == 1).all())
    for c in (0, 1):  # a tenth of the '2's carry a circle, a tenth of the '8's a square
        members = d.labels == c
        assert int((d.has_shape & members).sum()) == round(0.1 * int(members.sum()))
    nd = d.regions["ND"].sum(dim=(1, 2))
    assert bool((nd[~d.has_shape] == 0).all())
    # Circle (29 px) only on '2' (label 0), square (36 px) only on '8' (label 1).
    assert set(nd[d.has_shape & (d.labels == 0)].tolist()) == {29}
    assert set(nd[d.has_shape & (d.labels == 1)].tolist()) == {36}
    assert bool((d.images[:, 0][d.regions["ND"]] == 1).all())
    assert torch.equal(d.images[~d.has_shape], d.clean[~d.has_shape])
    assert len(d.eval_index) == 10 and bool(d.has_shape[d.eval_index].all())
    # Shapes sit mostly off the digit.
    on_digit = (d.regions["ND"] & (d.clean[:, 0] > 0.5)).sum(dim=(1, 2))[d.has_shape]
    assert float((on_digit / nd[d.has_shape]).max()) <= 0.1 + 1e-6
    # The same seed gives the same set.
    again = make_toy_data(replace(ToyConfig(), copies=1, eval_images=10), seed=3)
    assert torch.equal(again.images, d.images)


class PatchNet(ToyNet):
    """A ToyNet that sees only a patch of its input."""

    def __init__(self, mask):
        super().__init__(channels=(4, 4, 4, 4, 4))
        self.mask = mask

    def features(self, x):
        return super().features(x * self.mask)


def test_gradient_maps_shapes_and_patch_locality():
    torch.manual_seed(0)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:9, 6:12] = 1
    model = PatchNet(mask).eval()
    x = torch.rand(3, 1, 16, 16)
    maps = gradient_maps(model, x, torch.tensor([0, 1, 0]))
    assert maps.shape == (6, 3, 16, 16)
    outside = mask[0, 0] == 0
    assert float(maps[:, :, outside].abs().max()) == 0.0
    assert bool((maps[:, :, ~outside].abs().sum(dim=-1) > 0).all())  # every map sees the patch


def test_gradient_maps_match_autograd_per_image():
    torch.manual_seed(1)
    model = ToyNet(channels=(4, 4, 8, 8, 8)).eval()
    x = torch.rand(4, 1, 16, 16)
    target = torch.tensor([1, 0, 1, 1])
    maps = gradient_maps(model, x, target)
    xi = x[2:3].clone().requires_grad_(True)
    (g6,) = torch.autograd.grad(model(xi)[0, 1], xi)
    assert torch.allclose(maps[-1, 2], g6[0, 0], atol=1e-6)
    (g3,) = torch.autograd.grad(model.features(xi)[2].sum(), xi)
    assert torch.allclose(maps[2, 2], g3[0, 0], atol=1e-6)
    # The other class's logit gives another map: the target is honoured.
    assert not torch.allclose(gradient_maps(model, x, 1 - target)[-1], maps[-1])


def test_rib_loss_clips_at_the_margin():
    logits = torch.tensor([[2.0, 700.0], [-1.0, 3.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    loss = rib_loss(logits, targets, margin=600.0)
    assert loss.item() == -(2 + 600 + 3)
    loss.backward()
    assert logits.grad.tolist() == [[-1.0, 0.0], [0.0, -1.0]]


def test_rib_starts_from_the_trained_maps_and_moves(small_data):
    torch.manual_seed(0)
    model = ToyNet(channels=(4, 4, 8, 8, 8)).eval()
    before = [p.detach().clone() for p in model.parameters()]
    idx = small_data.eval_index[:3]
    cfg = replace(ToyConfig(), rib_steps=2, rib_batch=4, rib_lr=1e-2)
    out = rib_g6_maps(model, small_data, idx, cfg, seed=0)
    assert out["g6"].shape == (3, 3, 32, 32) and out["logit"].shape == (3, 3)
    maps = gradient_maps(model, small_data.images[idx], small_data.labels[idx])
    assert torch.allclose(out["g6"][0], maps[-1], atol=1e-5)
    assert not torch.allclose(out["g6"][-1], out["g6"][0])
    assert bool((out["logit"][-1] > out["logit"][0]).all())  # L_RIB raises the own logit
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _write_idx(path, magic, array, gz):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_reader_and_toy_data(tmp_path, gz):
    labels = np.array([2, 8, 3] * 20, dtype=np.uint8)
    images = np.zeros((60, 28, 28), np.uint8)
    images[:, 6:22, 11:17] = 255  # a bar as the "digit", leaving room beside it
    suffix = ".gz" if gz else ""
    _write_idx(tmp_path / (IMAGES + suffix), 2051, images, gz)
    _write_idx(tmp_path / (LABELS + suffix), 2049, labels, gz)
    got_images, got_labels = load_mnist_train(tmp_path)
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    d = make_toy_data(replace(ToyConfig(), mnist_dir=str(tmp_path), mnist_images=30,
                              eval_images=2), seed=0)
    assert d.images.shape == (30, 1, 28, 28) and int(d.has_shape.sum()) == 3


def test_mnist_missing_file_is_named(tmp_path):
    _write_idx(tmp_path / IMAGES, 2051, np.zeros((1, 28, 28)), False)
    with pytest.raises(FileNotFoundError, match=LABELS):
        load_mnist_train(tmp_path)


def test_cli_builds_the_config():
    cfg = config_from_args(parse_args(["--seeds", "2", "--out", "x", "--rib-lr", "0.5"]))
    assert cfg.seeds == (0, 1) and cfg.out == "x" and cfg.rib_lr == 0.5
    assert config_from_args(parse_args([])).seeds == ToyConfig().seeds


def test_run_toy_tiny(tmp_path):
    cfg = replace(ToyConfig(), copies=1, eval_images=6, epochs=1, rib_steps=2, rib_batch=3,
                  seeds=(0, 1), workers=1, examples=2, out=str(tmp_path / "toy"),
                  rib_grid=((1e-3, 5.0),))
    res = run_toy(cfg)
    assert {"config", "layers", "layer_hgr", "rib_iterations", "rib_hgr", "verdicts", "per_seed",
            "files", "elapsed_s"} <= set(res)
    assert res["layers"][-1].startswith("G6") and len(res["layers"]) == 6
    for key, length in (("layer_hgr", 6), ("rib_hgr", 3)):
        for region in ("D", "ND", "BG"):
            stats = res[key][region]
            assert len(stats["mean"]) == len(stats["std"]) == length
            assert all(0.0 <= v <= 1.0 for v in stats["mean"])
    for s in res["per_seed"]:
        assert s["eval_images"] == 6
        for region in ("D", "ND", "BG"):  # RIB's iteration 0 is the trained model's G6
            assert s["rib_hgr"][region][0] == pytest.approx(s["layer_hgr"][region][-1], abs=1e-3)
    for v in res["verdicts"].values():
        assert isinstance(v["holds"], bool)
        assert ("): holds." if v["holds"] else "): does not hold.") in v["text"]
    out = tmp_path / "toy"
    for name in res["files"]:
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "results.json").read_text())["verdicts"].keys() == res["verdicts"].keys()
    table = (out / "table.md").read_text()
    assert "Figure 1c" in table and "Figure 2b" in table and "Claim 1" in table
    assert "| 0.001 | 5 |" in table  # the --rib-grid row
    assert len(res["rib_grid"]) == 1 and len(res["per_seed"][0]["rib_grid"]) == 1


def _stats(**regions):
    return {r: {"mean": list(v), "std": [0.0] * len(v)} for r, v in regions.items()}


def test_verdicts_on_hand_made_numbers():
    names = layer_names(5)
    nd_final = [0.9, 0.85, 0.8, 0.75, 0.7, 0.1]  # drops .05 .05 .05 .05 .6: the last is largest
    nd_early = [0.9, 0.3, 0.25, 0.2, 0.15, 0.1]  # the first drop (.6) is largest
    flat = [0.5] * 6
    for nd, expect in ((nd_final, True), (nd_early, False)):
        stats = _stats(D=flat, ND=nd, BG=flat)
        v = verdict_final_layer(stats, [{"layer_hgr": {"D": flat, "ND": nd, "BG": flat}}], names)
        assert v["holds"] is expect
        assert v["nd_drops"] == pytest.approx([a - b for a, b in zip(nd[:-1], nd[1:])])
    cfg = ToyConfig()  # rise_min 0.05, flat_tol 0.05
    cases = [((0.2, 0.4), (0.1, 0.3), (0.1, 0.12), True),  # both rise, BG +0.02
             ((0.2, 0.4), (0.1, 0.3), (0.1, 0.30), False),  # BG rises too
             ((0.2, 0.22), (0.1, 0.3), (0.1, 0.1), False)]  # R_D barely moves
    for d, nd, bg, expect in cases:
        per_seed = [{"D": list(d), "ND": list(nd), "BG": list(bg)}]
        v = verdict_rib(_stats(D=d, ND=nd, BG=bg), per_seed, cfg)
        assert v["holds"] is expect, v["text"]
