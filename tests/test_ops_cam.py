"""CAM map operators and the finishing step that writes IRN's map format."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from factories import make_cam
from op_tester import OpTester
from rib_ext import ops
from rib_ext.ops import oracle

LAYOUTS = ["contiguous", "channels_last", "noncontiguous"]


class TestCamFlipMerge(OpTester):
    op = "cam_flip_merge"
    FALLBACKS = ("cam_flip_merge",)
    CASES = [dict(shape=s) for s in [(1, 20, 8, 9), (1, 1, 1, 1), (2, 80, 3, 1), (1, 3, 1, 7)]]
    GRADCHECK_CASES = [dict(shape=(1, 3, 4, 5))]

    def make_inputs(self, case, device, dtype, layout):
        return (make_cam(*case["shape"], device=device, dtype=dtype, layout=layout, seed=2, requires_grad=True),
                make_cam(*case["shape"], device=device, dtype=dtype, layout=layout, seed=3, requires_grad=True))

    def call(self, args, case):
        return ops.cam_flip_merge(*args)

    def oracle(self, args, case):
        return oracle.cam_flip_merge(*args)

    def opcheck_calls(self, case, device):
        cam = make_cam(1, 5, 6, 7, device=device, requires_grad=True)
        cam_flip = make_cam(1, 5, 6, 7, device=device, seed=7, requires_grad=True)
        return [(torch.ops.rib_ext.cam_flip_merge.default, (cam, cam_flip))]

    def test_exact_mirror_merges_to_twice_the_relu(self, case, device):
        cam = make_cam(*case["shape"], device=device, seed=2)
        torch.testing.assert_close(ops.cam_flip_merge(cam, cam.flip(-1)), 2 * torch.relu(cam))


class TestCamFlipAccumulate(OpTester):
    """The in-place form: ``acc += merge(cam, cam_flip)`` (no autograd; maps are detached)."""

    op = "cam_flip_accumulate_"
    FALLBACKS = ("cam_flip_merge",)
    CASES = TestCamFlipMerge.CASES
    GRADCHECK_CASES = []  # in place, not differentiable

    def make_inputs(self, case, device, dtype, layout):
        acc = torch.rand(case["shape"], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        return (acc.to(device=device, dtype=dtype),
                make_cam(*case["shape"], device=device, dtype=dtype, layout=layout, seed=2),
                make_cam(*case["shape"], device=device, dtype=dtype, layout=layout, seed=3))

    def call(self, args, case):
        acc, cam, cam_flip = args
        acc = acc.clone()
        ops.cam_flip_accumulate_(acc, cam, cam_flip)
        ops.cam_flip_accumulate_(acc, cam, cam_flip)  # accumulates: twice the merge
        return acc

    def oracle(self, args, case):
        acc, cam, cam_flip = args
        return acc + 2 * oracle.cam_flip_merge(cam, cam_flip)

    def opcheck_calls(self, case, device):
        cam = make_cam(1, 5, 6, 7, device=device)
        cam_flip = make_cam(1, 5, 6, 7, device=device, seed=7)
        acc = torch.zeros(1, 5, 6, 7, device=device)
        return [(torch.ops.rib_ext.cam_flip_accumulate_.default, (acc, cam, cam_flip))]


class TestCamMaxNormalize(OpTester):
    op = "cam_max_normalize"
    FALLBACKS = ("cam_max_normalize",)
    CASES = [dict(shape=(1, 7, 9, 5)), dict(shape=(2, 3, 1, 1))]
    GRADCHECK_CASES = [dict(shape=(1, 2, 4, 5))]

    def make_inputs(self, case, device, dtype, layout):
        # A strictly positive map (one ReLU'd value per plane is the max): the argmax is unique.
        cam = make_cam(*case["shape"], device=device, dtype=dtype, layout=layout)
        return ((cam.abs() + 0.1).detach().requires_grad_(),)

    def call(self, args, case):
        return ops.cam_max_normalize(*args, 1e-5)

    def oracle(self, args, case):
        return oracle.cam_max_normalize(*args, 1e-5)

    def opcheck_calls(self, case, device):
        maps = torch.relu(make_cam(1, 5, 6, 7, device=device)).requires_grad_()
        return [(torch.ops.rib_ext.cam_max_normalize.default, (maps, 1e-5))]

    @pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
    def test_relu_maps_end_at_most_one(self, case, device, layout):
        maps = torch.relu(make_cam(*case["shape"], device=device, layout=layout, requires_grad=True))
        out = ops.cam_max_normalize(maps, 1e-5)
        torch.testing.assert_close(out, oracle.cam_max_normalize(maps, 1e-5))
        assert out.amax(dim=(-2, -1)).le(1).all()
        g = torch.randn_like(out)
        torch.testing.assert_close(torch.autograd.grad(out, maps, g)[0],
                                   torch.autograd.grad(oracle.cam_max_normalize(maps), maps, g)[0])


def test_accumulate_into_noncontiguous_acc():
    cam, cam_flip = make_cam(1, 4, 5, 6, seed=4), make_cam(1, 4, 5, 6, seed=5)
    acc = torch.zeros(1, 4, 6, 5).transpose(-1, -2)
    ops.cam_flip_accumulate_(acc, cam, cam_flip)
    torch.testing.assert_close(acc, oracle.cam_flip_merge(cam, cam_flip))


def test_max_normalize_zero_map_stays_finite():
    out = ops.cam_max_normalize(torch.zeros(2, 3, 4))
    assert torch.isfinite(out).all() and out.abs().sum() == 0


@pytest.mark.skipif(not ops.HAS_C, reason="the fake kernels exist with the compiled extension")
def test_fake_kernels_check_inputs_like_the_kernels():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        cam = torch.empty(1, 3, 4, 5)
        with pytest.raises(RuntimeError, match=r"cam_flip_merge: cam \(1, 3, 4, 5\) and cam_flip \(1, 3, 4, 6\) must"):
            torch.ops.rib_ext.cam_flip_merge.default(cam, torch.empty(1, 3, 4, 6))
        with pytest.raises(RuntimeError, match="cam_flip_accumulate_: acc must be torch.float32"):
            torch.ops.rib_ext.cam_flip_accumulate_.default(torch.empty(1, 3, 4, 5, dtype=torch.float64), cam, cam)
        with pytest.raises(RuntimeError, match=r"cam_max_normalize: maps must be \[..., H, W\]"):
            torch.ops.rib_ext.cam_max_normalize.default(torch.empty(5), 1e-5)


def _irn_make_cam_transcript(outputs, size, label):
    """IRN's make_cam finishing step written as its code does it (the format our stage must match)."""
    strided_size = ((size[0] + 3) // 4, (size[1] + 3) // 4)
    up = (((size[0] + 15) // 16) * 16, ((size[1] + 15) // 16) * 16)
    strided_cam = torch.sum(torch.stack(
        [F.interpolate(torch.unsqueeze(o, 0), strided_size, mode="bilinear", align_corners=False)[0]
         for o in outputs]), 0)
    highres_cam = [F.interpolate(torch.unsqueeze(o, 1), up, mode="bilinear", align_corners=False)
                   for o in outputs]
    highres_cam = torch.sum(torch.stack(highres_cam, 0), 0)[:, 0, :size[0], :size[1]]
    valid_cat = torch.nonzero(label)[:, 0]
    strided_cam = strided_cam[valid_cat]
    strided_cam /= F.adaptive_max_pool2d(strided_cam, (1, 1)) + 1e-5
    highres_cam = highres_cam[valid_cat]
    highres_cam /= F.adaptive_max_pool2d(highres_cam, (1, 1)) + 1e-5
    return {"keys": valid_cat, "cam": strided_cam, "high_res": highres_cam.numpy()}


@pytest.mark.parametrize("size", [(37, 50), (64, 48), (17, 5)])
def test_finalize_maps_matches_irn_format(size):
    label = torch.zeros(20)
    label[[3, 11, 19]] = 1
    scales = (1.0, 0.5, 1.5, 2.0)
    outputs = []
    for s in scales:
        h, w = max(1, round(size[0] * s / 16)), max(1, round(size[1] * s / 16))
        outputs.append(ops.cam_flip_merge(make_cam(1, 20, h, w, seed=int(s * 10))[0],
                                          make_cam(1, 20, h, w, seed=int(s * 10) + 1)[0]))
    ours = ops.finalize_maps(outputs, size, np.array([3, 11, 19]))
    theirs = _irn_make_cam_transcript(outputs, size, label)
    assert set(ours) == {"keys", "cam", "high_res"}
    assert isinstance(ours["cam"], torch.Tensor) and isinstance(ours["high_res"], np.ndarray)
    np.testing.assert_array_equal(ours["keys"], theirs["keys"].numpy())
    assert ours["cam"].shape == (3, (size[0] + 3) // 4, (size[1] + 3) // 4)
    assert ours["high_res"].shape == (3, *size)
    torch.testing.assert_close(ours["cam"], theirs["cam"])
    np.testing.assert_allclose(ours["high_res"], theirs["high_res"], rtol=1e-5, atol=1e-6)
    assert np.allclose(ours["high_res"].max(axis=(1, 2)), 1.0, atol=1e-3)
