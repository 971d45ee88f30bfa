"""GNDRP against a literal transcription of the authors' ``gndp2d`` (oracle.gndrp_pool_loop):
degenerate planes (max < 0, max == 0, all zero), COCO's 80 classes and the first-20 loop."""
import pytest
import torch

from factories import make_cam, make_labels
from rib_ext import ops
from rib_ext.config import RIBConfig
from rib_ext.ops import oracle
from rib_ext.rib.losses import group_loss


def _degenerate(device, dtype=torch.float64):
    """Planes of one row, every class present: max < 0, max == 0 with negatives, all zero,
    all equal negative, and an ordinary plane."""
    cam = make_cam(2, 5, 6, 7, dtype=dtype, device=device).detach()
    cam[0, 0] = -torch.rand(6, 7, device=device, dtype=dtype) - 0.1  # max < 0
    cam[0, 1] = -torch.rand(6, 7, device=device, dtype=dtype)
    cam[0, 1, 2, 3] = 0.0  # max == 0, reached at one location
    cam[0, 1, 4, 5] = 0.0
    cam[0, 2] = 0.0  # all zero
    cam[0, 3] = -1.0  # all equal, negative
    present = torch.ones(2, 5, dtype=torch.bool, device=device)
    present[1, 2:] = False
    return cam, present


def _value_and_grad(fn, cam):
    x = cam.detach().clone().requires_grad_()
    out = fn(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    return out.detach(), grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_mode_is_the_authors_unguarded_division(device, dtype):
    cam, present = _degenerate(device, dtype)
    want, want_grad = _value_and_grad(lambda x: oracle.gndrp_pool_loop(x, present, 0.4), cam)
    for fn in (lambda x: ops.gndrp_pool(x, present, 0.4, "authors"),
               lambda x: oracle.gndrp_pool(x, present, 0.4, behaviour="authors")):
        got, grad = _value_and_grad(fn, cam)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grad, want_grad, rtol=0, atol=0)
    hw = 6 * 7
    # max < 0: every ratio >= 1, nothing kept: logit 0 and no gradient.
    assert want[0, 0] == 0 and (want_grad[0, 0] == 0).all()
    assert want[0, 3] == 0 and (want_grad[0, 3] == 0).all()
    # max == 0: negatives -> -inf (kept), zeros -> NaN (dropped): the mean, but no gradient at 0.
    torch.testing.assert_close(want[0, 1], cam[0, 1].mean())
    assert (want_grad[0, 1][cam[0, 1] == 0] == 0).all()
    assert (want_grad[0, 1][cam[0, 1] < 0] == 1 / hw).all()
    # all zero: 0/0 everywhere, nothing kept.
    assert want[0, 2] == 0 and (want_grad[0, 2] == 0).all()
    assert torch.isfinite(want).all()


def test_fused_reference_op_matches_the_transcription_on_degenerate_planes(device):
    cam, present = _degenerate(device)
    labels = present.double()
    want, want_grad = _value_and_grad(lambda x: oracle.gndrp_pool_loop(x, present, 0.4), cam)
    x = cam.clone().requires_grad_()
    loss, logits = ops.gndrp_margin_loss(x, labels, 0.4, 600.0, "authors")
    (grad,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(logits, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, -labels[..., None, None] * want_grad, rtol=0, atol=0)


def test_paper_mode_average_pools_planes_without_positive_evidence(device):
    cam, present = _degenerate(device)
    got, grad = _value_and_grad(lambda x: ops.gndrp_pool(x, present, 0.4, "paper"), cam)
    for k in range(4):  # max <= 0: every location kept, divided by their number
        torch.testing.assert_close(got[0, k], cam[0, k].mean())
        assert (grad[0, k] == 1 / 42).all()
    ref = oracle.gndrp_pool(cam, present, 0.4, behaviour="paper")
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("tau", [0.4, 0.5])
def test_coco_shapes_match_the_transcription(device, tau):
    cam = make_cam(6, 80, 9, 11, dtype=torch.float64, device=device)
    cam[0, 3] = -cam[0, 3].abs() - 0.01  # a present class with max < 0
    present = make_labels(6, 80, device=device) > 0
    present[0, 3] = True
    want, want_grad = _value_and_grad(lambda x: oracle.gndrp_pool_loop(x, present, tau), cam)
    got, grad = _value_and_grad(lambda x: ops.gndrp_pool(x, present, tau, "authors"), cam)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, want_grad, rtol=0, atol=0)
    assert want[0, 3] == 0


def test_coco_first20_bug_is_the_authors_loop_over_20_classes():
    cam = make_cam(5, 80, 8, 8, dtype=torch.float64)
    labels = torch.zeros(5, 80, dtype=torch.float64)
    labels[:, 3] = 1
    labels[:, 25] = 1  # a class the authors' loop never normalises
    labels[2, 70] = 1
    cfg = RIBConfig.preset("coco", behaviour="authors")
    assert cfg.coco_first20_bug and cfg.tau == 0.5
    assert not RIBConfig.preset("coco", behaviour="paper").coco_first20_bug
    assert not RIBConfig.preset("voc", behaviour="authors").coco_first20_bug
    want = oracle.gndrp_pool_loop(cam, labels > 0, cfg.tau, visited=20)
    x = cam.clone().requires_grad_()
    loss, logits = group_loss(x, labels, cfg)
    torch.testing.assert_close(logits, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(loss, -(labels * want).sum())
    # Classes 25 and 70 were average-pooled, class 3 was normalised.
    torch.testing.assert_close(want[:, 25], cam[:, 25].mean(dim=(1, 2)))
    all80 = oracle.gndrp_pool_loop(cam, labels > 0, cfg.tau)
    assert not torch.allclose(all80[:, 25], want[:, 25])
    torch.testing.assert_close(all80[:, 3], want[:, 3])
    # The paper preset normalises every class.
    _, logits_paper = group_loss(x, labels, RIBConfig.preset("coco", behaviour="paper"))
    torch.testing.assert_close(logits_paper, oracle.gndrp_pool(cam, labels > 0, 0.5, behaviour="paper"))


def test_gap_pooling_is_a_plain_mean_even_for_a_zero_plane():
    cam = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    cam[0, 1] = torch.randn(4, 4, dtype=torch.float64)
    labels = torch.ones(1, 2, dtype=torch.float64)
    x = cam.clone().requires_grad_()
    loss, logits = group_loss(x, labels, RIBConfig(pooling="gap"))
    (grad,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(logits[0], cam[0].mean(dim=(1, 2)))
    assert (grad == -1 / 16).all()
