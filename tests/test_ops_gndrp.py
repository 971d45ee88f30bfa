"""GNDRP pooling and the fused pool + loss op against the plain-PyTorch reference."""
import re
from pathlib import Path

import pytest
import torch

from factories import make_cam, make_labels
from op_tester import OpTester
from rib_ext import ops
from rib_ext.ops import oracle

SHAPES = [(3, 20, 8, 8), (2, 1, 5, 7), (4, 80, 6, 9), (2, 3, 1, 1), (2, 3, 1, 11), (3, 2, 13, 1)]
LAYOUTS = ["contiguous", "channels_last", "noncontiguous"]
BEHAVIOURS = ["authors", "paper"]


def _check_pool(cam, present, tau, behaviour):
    out = ops.gndrp_pool(cam, present, tau, behaviour)
    ref = oracle.gndrp_pool(cam.detach().clone().requires_grad_(), present, tau, behaviour)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, cam, g)
    cam_ref = cam.detach().clone().requires_grad_()
    (grad_ref,) = torch.autograd.grad(oracle.gndrp_pool(cam_ref, present, tau, behaviour),
                                      cam_ref, g)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-7)


class TestGndrpPool(OpTester):
    op = "gndrp_pool"
    FALLBACKS = ("gndrp_pool",)
    CASES = [dict(shape=s, behaviour=m) for s in SHAPES for m in BEHAVIOURS]
    GRADCHECK_CASES = [dict(shape=(2, 3, 4, 5), behaviour=m) for m in BEHAVIOURS]
    OPCHECK_CASES = [dict(behaviour=b) for b in BEHAVIOURS]

    def make_inputs(self, case, device, dtype, layout):
        cam = make_cam(*case["shape"], device=device, dtype=dtype, layout=layout, requires_grad=True)
        return cam, make_labels(*case["shape"][:2], device=device) > 0

    def call(self, args, case):
        return ops.gndrp_pool(*args, 0.4, case["behaviour"])

    def oracle(self, args, case):
        return oracle.gndrp_pool(*args, 0.4, case["behaviour"])

    def opcheck_calls(self, case, device):
        cam = make_cam(3, 4, 5, 6, device=device, requires_grad=True)
        present = make_labels(3, 4, device=device) > 0
        _, pmax, scale = torch.ops.rib_ext.gndrp_pool.default(cam.detach(), present, 0.4, case["behaviour"])
        grad = torch.randn(3, 4, device=device)
        return [(torch.ops.rib_ext.gndrp_pool.default, (cam, present, 0.4, case["behaviour"])),
                (torch.ops.rib_ext._gndrp_pool_backward.default,
                 (grad, cam.detach(), present, pmax, scale, 0.4, case["behaviour"]))]


class TestGndrpMarginLoss(OpTester):
    """The fused pool + loss: the loss and the (detached) logits against pool-then-loss."""

    op = "gndrp_margin_loss"
    FALLBACKS = ("gndrp_margin_loss",)
    CASES = [dict(shape=s, behaviour=m) for s in [(26, 20, 8, 8), (3, 80, 5, 6), (2, 1, 1, 1)] for m in BEHAVIOURS]
    GRADCHECK_CASES = [dict(shape=(3, 4, 3, 5), behaviour=m) for m in BEHAVIOURS]
    OPCHECK_CASES = [dict(behaviour=b) for b in BEHAVIOURS]
    MARGIN = 0.3  # small, so the paper clip is active on some rows

    def make_inputs(self, case, device, dtype, layout):
        cam = make_cam(*case["shape"], device=device, dtype=dtype, layout=layout, requires_grad=True)
        return cam, make_labels(*case["shape"][:2], device=device, dtype=dtype)

    def call(self, args, case):
        return ops.gndrp_margin_loss(*args, 0.4, self.MARGIN, case["behaviour"])

    def oracle(self, args, case):
        loss, logits = oracle.gndrp_margin_loss(*args, 0.4, self.MARGIN, case["behaviour"])
        return loss, logits.detach()

    def opcheck_calls(self, case, device):
        cam = make_cam(3, 4, 5, 6, device=device, requires_grad=True)
        labels = make_labels(3, 4, device=device)
        return [(torch.ops.rib_ext.gndrp_margin_loss.default, (cam, labels, 0.4, 0.5, case["behaviour"]))]

    def test_logits_detached_and_both_clip_sides_exercised(self, case, device):
        cam, labels = self.make_inputs(case, device, torch.float32, "contiguous")
        loss, logits = self.call((cam, labels), case)
        assert loss.requires_grad and not logits.requires_grad
        _, logits_ref = self.oracle((cam, labels), case)
        if case["behaviour"] and case["shape"][0] * case["shape"][1] >= 20:
            clipped = (logits_ref >= self.MARGIN) & (labels > 0)
            assert clipped.any() and (~clipped & (labels > 0)).any(), "the test must exercise both sides"


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_gndrp_pool_degenerate_planes(device, behaviour):
    """All classes absent; a present class whose map is all negative, all equal, all zero."""
    cam = make_cam(4, 5, 6, 7, device=device).detach()
    cam[0, 0] = -torch.rand(6, 7, device=device) - 0.1  # max < 0
    cam[0, 1] = 2.5  # all equal, positive: nothing is below tau
    cam[0, 2] = 0.0  # max == 0
    cam[0, 3] = -1.0  # all equal, negative
    cam.requires_grad_()
    present = torch.ones(4, 5, dtype=torch.bool, device=device)
    present[3] = False  # a row with every class absent
    _check_pool(cam, present, 0.4, behaviour)
    out = ops.gndrp_pool(cam, present, 0.4, behaviour)
    assert torch.isfinite(out).all()
    if behaviour == "paper":  # non-positive max keeps every location: the plain mean
        torch.testing.assert_close(out[0, 0], cam[0, 0].mean())
        torch.testing.assert_close(out[0, 3], torch.tensor(-1.0, device=device))
    else:  # the authors' unguarded division: max < 0 keeps nothing (tests/test_fidelity_gndrp.py)
        assert out[0, 0].item() == 0.0 and out[0, 3].item() == 0.0
    # An all-equal positive plane keeps nothing: 0 in both behaviours (paper: no division by zero).
    assert out[0, 1].item() == 0.0
    torch.testing.assert_close(out[3], cam[3].mean(dim=(1, 2)))


def test_gndrp_pool_hand_worked_example():
    """The authors' semantics on a 2x2 map, worked by hand.

    plane = [[4, 1], [-2, 2]], tau = 0.4, max M = 4, normalised = [[1, .25], [-.5, .5]].
    authors: kept where < 0.4 -> {1, -2}; logit = (1 - 2) / (2*2) = -0.25.
    paper:   kept where <= 0.4 -> {1, -2}; logit = (1 - 2) / 2 = -0.5.
    absent class: every location, (4 + 1 - 2 + 2) / 4 = 1.25 in both behaviours (authors divides
    by H*W = 4, paper by the kept count, 4 as well).
    With tau = 0.5: authors keeps {1, -2} (0.5 is not < 0.5) -> -0.25;
                    paper keeps {1, -2, 2} (0.5 <= 0.5)      -> (1 - 2 + 2) / 3 = 1/3.
    Gradient (authors, tau 0.4): 1/4 at the kept locations (0,1) and (1,0), 0 elsewhere.
    """
    plane = torch.tensor([[4.0, 1.0], [-2.0, 2.0]])
    cam = torch.stack([plane, plane])[None].clone().requires_grad_()  # [1, 2, 2, 2]
    present = torch.tensor([[True, False]])
    ref = ops.gndrp_pool(cam, present, 0.4, "authors")
    assert ref.tolist() == [[-0.25, 1.25]]
    assert ops.gndrp_pool(cam, present, 0.4, "paper").tolist() == [[-0.5, 1.25]]
    assert ops.gndrp_pool(cam, present, 0.5, "authors")[0, 0].item() == -0.25
    assert ops.gndrp_pool(cam, present, 0.5, "paper")[0, 0].item() == pytest.approx(1 / 3)
    (grad,) = torch.autograd.grad(ref[0, 0], cam)
    assert grad[0, 0].tolist() == [[0.0, 0.25], [0.25, 0.0]]
    assert grad[0, 1].abs().sum().item() == 0.0


@pytest.mark.needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_half_precision_cuda(dtype, behaviour):
    cam32 = make_cam(26, 20, 16, 16, device="cuda")
    labels = make_labels(26, 20, device="cuda")
    cam = cam32.to(dtype).requires_grad_()
    loss, logits = ops.gndrp_margin_loss(cam, labels, 0.4, 600.0, behaviour)
    loss_ref, logits_ref = oracle.gndrp_margin_loss(cam.detach().float(), labels, 0.4, 600.0,
                                                       behaviour)
    assert loss.dtype == torch.float32 and logits.dtype == dtype
    torch.testing.assert_close(logits.float(), logits_ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-3, atol=1e-2)
    (grad,) = torch.autograd.grad(loss, cam)
    assert grad.dtype == dtype and torch.isfinite(grad.float()).all()


@pytest.mark.needs_cuda
@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_cuda_matches_cpu(behaviour):
    cam = make_cam(26, 20, 32, 32)
    labels = make_labels(26, 20)
    cpu = ops.gndrp_margin_loss(cam, labels, 0.4, 600.0, behaviour)
    gpu = ops.gndrp_margin_loss(cam.cuda(), labels.cuda(), 0.4, 600.0, behaviour)
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-5, atol=1e-5)


def test_compiles_without_graph_breaks():
    """The fake kernels let torch.compile trace the fused op (and its backward) in one graph."""
    cam = make_cam(6, 5, 4, 4, requires_grad=True)
    labels = make_labels(6, 5)

    def step(x):
        return ops.gndrp_margin_loss(x, labels, 0.4, 600.0, "paper")[0]

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(cam), step(cam))
    (g1,) = torch.autograd.grad(compiled(cam), cam)
    (g2,) = torch.autograd.grad(step(cam), cam)
    torch.testing.assert_close(g1, g2)


def test_the_earlier_keyword_mode_still_chooses_the_behaviour():
    cam, labels = make_cam(2, 3, 4, 4), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    present = labels > 0
    for behaviour in BEHAVIOURS:
        assert torch.equal(ops.gndrp_pool(cam, present, 0.4, mode=behaviour),
                           ops.gndrp_pool(cam, present, 0.4, behaviour=behaviour))
        assert torch.equal(ops.gndrp_margin_loss(cam, labels, 0.4, 0.3, mode=behaviour)[0],
                           ops.gndrp_margin_loss(cam, labels, 0.4, 0.3, behaviour=behaviour)[0])
        assert torch.equal(ops.margin_loss(labels * 3, labels, 2.0, mode=behaviour),
                           ops.margin_loss(labels * 3, labels, 2.0, behaviour=behaviour))
    assert ops.MODES == ops.BEHAVIOURS


def test_bad_inputs_have_clear_errors():
    cam = make_cam(2, 3, 4, 4)
    with pytest.raises(ValueError, match="behaviour must be one of"):
        ops.gndrp_pool(cam, torch.ones(2, 3, dtype=torch.bool), 0.4, "gap")
    if ops.HAS_C:
        with pytest.raises(RuntimeError, match=r"present must be \[N, K\]"):
            ops.gndrp_pool(cam, torch.ones(3, 3, dtype=torch.bool))
        with pytest.raises(RuntimeError, match=r"cam must be \[N, K, H, W\]"):
            ops.gndrp_pool(cam[0], torch.ones(3, 4, dtype=torch.bool))


@pytest.mark.skipif(not ops.HAS_C, reason="needs the compiled extension")
def test_the_kernels_refuse_an_unknown_behaviour():
    cam, labels = make_cam(2, 3, 4, 4), torch.ones(2, 3)
    calls = [lambda: torch.ops.rib_ext.gndrp_pool.default(cam, labels > 0, 0.4, "reference"),
             lambda: torch.ops.rib_ext.gndrp_margin_loss.default(cam, labels, 0.4, 0.5, "reference"),
             lambda: torch.ops.rib_ext.margin_loss.default(labels, labels, 0.5, "reference")]
    for call in calls:
        with pytest.raises(RuntimeError, match="behaviour must be 'authors' or 'paper', got 'reference'"):
            call()
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        cam, labels = torch.empty(2, 3, 4, 4), torch.empty(2, 3)
        for call in calls:
            with pytest.raises(RuntimeError, match="behaviour must be 'authors' or 'paper'"):
                call()


@pytest.mark.skipif(not ops.HAS_C, reason="the fake kernels exist with the compiled extension")
def test_fake_kernels_check_inputs_like_the_kernels():
    """Under FakeTensor tracing (torch.compile) no kernel runs: the fake kernels' torch._check must
    refuse what the C++ checks refuse, with the same message."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        cam = torch.empty(2, 3, 4, 4)
        with pytest.raises(RuntimeError, match=r"gndrp_pool: present must be \[N, K\] = \[2, 3\], got \(3, 3\)"):
            torch.ops.rib_ext.gndrp_pool.default(cam, torch.empty(3, 3, dtype=torch.bool), 0.4, "authors")
        with pytest.raises(RuntimeError, match=r"gndrp_pool: cam must be \[N, K, H, W\], got 3 dims"):
            torch.ops.rib_ext.gndrp_pool.default(cam[0], torch.empty(3, 4, dtype=torch.bool), 0.4, "authors")
        with pytest.raises(RuntimeError, match="gndrp_pool: present must be bool"):
            torch.ops.rib_ext.gndrp_pool.default(cam, torch.empty(2, 3), 0.4, "authors")
        with pytest.raises(RuntimeError, match=r"gndrp_margin_loss: labels must be \[N, K\]"):
            torch.ops.rib_ext.gndrp_margin_loss.default(cam, torch.empty(2, 4), 0.4, 0.5, "authors")


@pytest.mark.skipif(not ops.HAS_C, reason="needs the compiled extension")
def test_every_registered_op_has_a_tester():
    """The operator list comes from the registered schemas; each public op (and so each op a
    wrapper may reach) has an OpTester subclass, and each backward op belongs to a tested op."""
    from rib_ext.ops import _extension

    # The test modules are read, not imported (no test module imports another).
    tests = Path(__file__).resolve().parent
    tested = set()
    for path in tests.glob("test_ops_*.py"):
        text = path.read_text()
        for block in re.split(r"^class ", text, flags=re.M)[1:]:
            if re.match(r"\w+\(OpTester\):", block):
                tested |= set(re.findall(r'^    op = "(\w+)"', block, flags=re.M))
    # uint8 resampling has no gradient and the SGD update is in place, not differentiated: their
    # own modules check them (opcheck too).
    for op, module in (("resize_bicubic_u8", "test_ops_resize.py"), ("sgd_step_", "test_ops_sgd.py")):
        assert re.search(r"^def test_opcheck\(", (tests / module).read_text(), flags=re.M), module
        tested.add(op)
    registered = set(_extension.registered_ops())
    public = {op for op in registered if not op.startswith("_")}
    assert public == set(_extension.OPS) == tested
    assert all(op[1:-len("_backward")] in public for op in registered - public)
