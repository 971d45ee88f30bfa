"""Pair labels and IRN's losses on a hand-made label map (radius 2, worked out below)."""
import math

import numpy as np
import pytest
import torch

from rib_ext.irn.affinity_labels import (EPS, affinity_losses, displacement_losses,
                                         downsample_labels, irn_loss, pair_displacement,
                                         pair_labels)
from rib_ext.irn.path_index import PathIndex

# 3x4 stride-4 labels; radius 2 -> r_f = 1, sources (0,1) (0,2) (1,1) (1,2) = columns n0..n3,
# directions d0 (0,1), d1 (1,0), d2 (1,-1), d3 (1,1).
LABELS = [[0, 0, 1, 255],
          [0, 1, 1, 1],
          [2, 2, 255, 1]]
# n0 = (0,1) label 0: d0 ->(0,2)=1 neg; d1 ->(1,1)=1 neg; d2 ->(1,0)=0 bg-pos; d3 ->(1,2)=1 neg
# n1 = (0,2) label 1: d0 ->(0,3)=255 ignored; d1 ->(1,2)=1 fg; d2 ->(1,1)=1 fg; d3 ->(1,3)=1 fg
# n2 = (1,1) label 1: d0 ->(1,2)=1 fg; d1 ->(2,1)=2 neg; d2 ->(2,0)=2 neg; d3 ->(2,2)=255 ignored
# n3 = (1,2) label 1: d0 ->(1,3)=1 fg; d1 ->(2,2)=255 ignored; d2 ->(2,1)=2 neg; d3 ->(2,3)=1 fg
BG_POS = [(2, 0)]
FG_POS = [(1, 1), (2, 1), (3, 1), (0, 2), (0, 3), (3, 3)]
NEG = [(0, 0), (1, 0), (3, 0), (1, 2), (2, 2), (2, 3)]
IGNORED = [(0, 1), (3, 2), (1, 3)]


def _mask(cells):
    m = torch.zeros(4, 4)
    for d, n in cells:
        m[d, n] = 1
    return m


@pytest.fixture
def index():
    idx = PathIndex(2)
    assert idx.offsets.tolist() == [[0, 1], [1, 0], [1, -1], [1, 1]]
    return idx


def test_pair_labels_by_hand(index):
    labels = torch.tensor([LABELS])
    pairs = pair_labels(labels, index)
    assert torch.equal(pairs.bg_pos[0], _mask(BG_POS))
    assert torch.equal(pairs.fg_pos[0], _mask(FG_POS))
    assert torch.equal(pairs.neg[0], _mask(NEG))
    covered = pairs.bg_pos + pairs.fg_pos + pairs.neg
    assert covered.max() == 1 and torch.equal(1 - covered[0], _mask(IGNORED))


def test_uncertain_source_ignores_all_its_pairs(index):
    labels = torch.tensor([LABELS, LABELS])
    labels[1, 0, 1] = 255  # source n0 of the second image becomes uncertain
    pairs = pair_labels(labels, index)
    for m in pairs:
        assert m[1, :, 0].sum() == 0
        assert torch.equal(m[1, :, 1:], m[0, :, 1:])


def test_pair_labels_need_integer_labels(index):
    with pytest.raises(ValueError, match="integer labels"):
        pair_labels(torch.zeros(1, 3, 4), index)


def test_affinity_losses_average_over_each_set(index):
    pairs = pair_labels(torch.tensor([LABELS]), index)
    aff = torch.linspace(0.05, 0.95, 16, dtype=torch.float64).view(1, 4, 4)
    terms = affinity_losses(aff, pairs)
    a = aff[0].numpy()
    bg = -math.log(a[2, 0] + EPS) / (1 + EPS)
    fg = sum(-math.log(a[d, n] + EPS) for d, n in FG_POS) / (6 + EPS)
    neg = sum(-math.log(1 + EPS - a[d, n]) for d, n in NEG) / (6 + EPS)
    assert terms["bg_pos"].item() == pytest.approx(bg)
    assert terms["fg_pos"].item() == pytest.approx(fg)
    assert terms["pos"].item() == pytest.approx(bg / 2 + fg / 2)
    assert terms["neg"].item() == pytest.approx(neg)


def test_displacement_losses(index):
    pairs = pair_labels(torch.tensor([LABELS]), index)
    # A constant field: every pair difference is 0, so bg pairs cost nothing and fg pairs cost
    # their offset's L1 / 2: d1, d2, d3, d0, d0, d3 -> 1, 2, 2, 1, 1, 2 = 9, over 2 * 6.
    disp = torch.full((1, 2, 3, 4), 0.7)
    terms = displacement_losses(pair_displacement(disp, index), index, pairs)
    assert terms["disp_bg"].item() == pytest.approx(0.0)
    assert terms["disp_fg"].item() == pytest.approx(9 / 12, rel=1e-4)
    # Every pixel pointing at the origin: src - dst displacement = the offset itself, the fg
    # target; the bg pair d2 = (1, -1) then costs (1 + 1) / 2.
    ys, xs = torch.meshgrid(torch.arange(3.0), torch.arange(4.0), indexing="ij")
    disp = torch.stack([-ys, -xs])[None]
    terms = displacement_losses(pair_displacement(disp, index), index, pairs)
    assert terms["disp_fg"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["disp_bg"].item() == pytest.approx(1.0, rel=1e-4)


def test_irn_loss_total_and_gradients(index):
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 3, 4, requires_grad=True)
    disp = torch.randn(1, 2, 3, 4, requires_grad=True)
    terms = irn_loss(logits, disp, torch.tensor([LABELS]), index)
    expected = (terms["pos"] + terms["neg"]) / 2 + (terms["disp_fg"] + terms["disp_bg"]) / 2
    assert terms["total"].item() == pytest.approx(expected.item())
    terms["total"].backward()
    assert logits.grad.abs().sum() > 0 and disp.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="label grid"):
        irn_loss(logits, disp, torch.zeros(1, 4, 4, dtype=torch.long), index)


def test_downsample_samples_like_pil_nearest():
    """IRN downsamples the labels with pil_rescale(label, 0.25, order=0): Pillow's nearest resize,
    which samples pixel 4i + 2 of each 4-pixel cell, not its top-left."""
    from PIL import Image

    labels = np.arange(64).reshape(8, 8)
    np.testing.assert_array_equal(downsample_labels(labels), [[18, 22], [50, 54]])
    rng = np.random.default_rng(0)
    for h, w in [(512, 512), (128, 96), (36, 20)]:
        lab = rng.integers(0, 256, (h, w)).astype(np.uint8)
        pil = np.asarray(Image.fromarray(lab).resize((w // 4, h // 4), Image.NEAREST))
        np.testing.assert_array_equal(downsample_labels(lab), pil)
    assert downsample_labels(np.zeros((512, 512))).shape == (128, 128)
    t = torch.from_numpy(lab)
    np.testing.assert_array_equal(downsample_labels(t).numpy(), downsample_labels(lab))