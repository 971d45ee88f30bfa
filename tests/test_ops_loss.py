"""The clipped-margin loss and the stop statistic against the plain-PyTorch reference."""
import pytest
import torch

from factories import make_labels
from op_tester import OpTester
from rib_ext import ops
from rib_ext.ops import oracle

BEHAVIOURS = ["authors", "paper"]


def make_logits(shape, *, device="cpu", dtype=torch.float32, layout="contiguous", seed=0):
    """Pooled logits of both signs; ``noncontiguous``: a strided view of a wider tensor."""
    g = torch.Generator().manual_seed(seed)
    wide = 2 if layout == "noncontiguous" else 1
    y = torch.randn(shape[0], wide * shape[1], generator=g, dtype=torch.float64) * 2
    return y.to(device=device, dtype=dtype)[:, ::wide]


class TestMarginLoss(OpTester):
    op = "margin_loss"
    FALLBACKS = ("margin_loss",)
    CASES = [dict(shape=s, behaviour=m, reduction=r) for s in [(26, 20), (1, 1), (4, 80)] for m in BEHAVIOURS
             for r in ["sum", "mean", "none"]]
    GRADCHECK_CASES = [dict(shape=(5, 7), behaviour=m, reduction="none") for m in BEHAVIOURS]
    OPCHECK_CASES = [dict(behaviour=b) for b in BEHAVIOURS]
    LAYOUTS = ("contiguous", "noncontiguous")

    def make_inputs(self, case, device, dtype, layout):
        y = make_logits(case["shape"], device=device, dtype=dtype, layout=layout).requires_grad_()
        return y, make_labels(*case["shape"], device=device, dtype=dtype)

    def call(self, args, case):
        return ops.margin_loss(*args, 0.5, case["behaviour"], case["reduction"])

    def oracle(self, args, case):
        out = oracle.margin_loss(*args, 0.5, case["behaviour"])
        return {"sum": out.sum(), "mean": out.mean(), "none": out}[case["reduction"]]

    def opcheck_calls(self, case, device):
        y = make_logits((6, 20), device=device).requires_grad_()
        t = make_labels(6, 20, device=device)
        return [(torch.ops.rib_ext.margin_loss.default, (y, t, 0.5, case["behaviour"])),
                (torch.ops.rib_ext._margin_loss_backward.default,
                 (torch.randn(6, 20, device=device), y.detach(), t, 0.5, case["behaviour"]))]


def test_margin_loss_clip_by_hand():
    """y = [1, 2, 3], t = [1, 1, 0], m = 2.
    paper: -(1) - min(2, 2) - 0 = -3; gradient -1 where y < 2, 0 at y = 2 (clip active) and for t = 0.
    authors: -(1 + 2) = -3 as well here, but gradient -t everywhere: [-1, -1, 0]."""
    y = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    t = torch.tensor([[1.0, 1.0, 0.0]])
    paper = ops.margin_loss(y, t, 2.0, "paper")
    assert paper.item() == -3.0
    assert torch.autograd.grad(paper, y)[0].tolist() == [[-1.0, 0.0, 0.0]]
    ref = ops.margin_loss(y, t, 2.0, "authors")
    assert ref.item() == -3.0
    assert torch.autograd.grad(ref, y)[0].tolist() == [[-1.0, -1.0, 0.0]]


def test_margin_stop_statistic():
    y = torch.tensor([[3.0, -1.0], [2.0, 5.0], [100.0, 100.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    # target rows 0..1: |3 - 1 + 5| = 7; the other row does not count.
    assert ops.margin_stop_statistic(y, t, slice(0, 2)).item() == 7.0
    assert ops.margin_stop_statistic(-y, t, slice(0, 2)).item() == 7.0
    assert ops.margin_stop_statistic(y, t).item() == 207.0


def test_margin_loss_rejects_mismatched_shapes():
    with pytest.raises((RuntimeError, ValueError)):
        ops.margin_loss(torch.randn(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="reduction"):
        ops.margin_loss(torch.randn(2, 3), torch.ones(2, 3), reduction="max")


@pytest.mark.skipif(not ops.HAS_C, reason="the fake kernel exists with the compiled extension")
def test_fake_kernel_checks_shapes_like_the_kernel():
    """Under FakeTensor tracing no kernel runs: the fake kernel's torch._check must catch it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        y, t = torch.empty(2, 3), torch.empty(3, 2)
        with pytest.raises(RuntimeError, match=r"margin_loss: logits \(2, 3\) and labels \(3, 2\) must have the same shape"):
            torch.ops.rib_ext.margin_loss.default(y, t, 0.5, "authors")
