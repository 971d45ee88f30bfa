"""The clipped-margin loss and the stop statistic against the plain-PyTorch reference."""
import pytest
import torch

from conftest import cpu_and_cuda
from factories import make_labels
from rib_ext import ops
from rib_ext.ops import reference


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("mode", ["reference", "paper"])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("shape", [(26, 20), (1, 1), (4, 80)])
def test_margin_loss_matches_reference(device, mode, reduction, shape):
    g = torch.Generator().manual_seed(0)
    y = (torch.randn(*shape, generator=g) * 2).to(device).requires_grad_()
    t = make_labels(*shape, device=device)
    out = ops.margin_loss(y, t, 0.5, mode, reduction)
    ref = reference.margin_loss(y, t, 0.5, mode == "paper")
    ref = {"sum": ref.sum(), "mean": ref.mean(), "none": ref}[reduction]
    torch.testing.assert_close(out, ref)
    w = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, y, w)
    (grad_ref,) = torch.autograd.grad(ref, y, w)
    torch.testing.assert_close(grad, grad_ref)


def test_margin_loss_clip_by_hand():
    """y = [1, 2, 3], t = [1, 1, 0], m = 2.
    paper: -(1) - min(2, 2) - 0 = -3; gradient -1 where y < 2, 0 at y = 2 (clip active) and for t = 0.
    reference: -(1 + 2) = -3 as well here, but gradient -t everywhere: [-1, -1, 0]."""
    y = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    t = torch.tensor([[1.0, 1.0, 0.0]])
    paper = ops.margin_loss(y, t, 2.0, "paper")
    assert paper.item() == -3.0
    assert torch.autograd.grad(paper, y)[0].tolist() == [[-1.0, 0.0, 0.0]]
    ref = ops.margin_loss(y, t, 2.0, "reference")
    assert ref.item() == -3.0
    assert torch.autograd.grad(ref, y)[0].tolist() == [[-1.0, -1.0, 0.0]]


@pytest.mark.parametrize("mode", ["reference", "paper"])
def test_margin_loss_gradcheck_float64(mode):
    y = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    t = make_labels(5, 7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: ops.margin_loss(v, t, 0.3, mode, "none"), (y,))


def test_margin_stop_statistic():
    y = torch.tensor([[3.0, -1.0], [2.0, 5.0], [100.0, 100.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    # target rows 0..1: |3 - 1 + 5| = 7; the other row does not count.
    assert ops.margin_stop_statistic(y, t, slice(0, 2)).item() == 7.0
    assert ops.margin_stop_statistic(-y, t, slice(0, 2)).item() == 7.0
    assert ops.margin_stop_statistic(y, t).item() == 207.0


@pytest.mark.skipif(not ops.HAS_C, reason="opcheck needs the compiled extension")
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("paper", [False, True])
def test_opcheck_margin_loss(device, paper):
    y = torch.randn(6, 20, device=device, requires_grad=True)
    t = make_labels(6, 20, device=device)
    torch.library.opcheck(torch.ops.rib_ext.margin_loss, (y, t, 0.5, paper))
    torch.library.opcheck(torch.ops.rib_ext._margin_loss_backward,
                          (torch.randn(6, 20, device=device), y.detach(), t, 0.5, paper))


def test_margin_loss_rejects_mismatched_shapes():
    with pytest.raises((RuntimeError, ValueError)):
        ops.margin_loss(torch.randn(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="reduction"):
        ops.margin_loss(torch.randn(2, 3), torch.ones(2, 3), reduction="max")
