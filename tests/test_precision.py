"""precision="float32" means float32 (no TF32 on Ampere and newer GPUs); TF32 is its own named
choice; the previous flags come back afterwards."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rib_ext.config import MakeCamConfig, RIBConfig
from rib_ext.precision import PRECISIONS, autocast, tf32_flags


def flags():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture
def restore_flags():
    saved = flags()
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("precision, tf32", [("float32", False), ("tf32", True), ("bf16", False)])
def test_each_precision_sets_the_tf32_flags_and_restores_them(restore_flags, precision, tf32):
    # PyTorch's own default (cudnn.allow_tf32=True) is what made float32 convolutions TF32.
    for before in [(True, True), (False, False), (False, True)]:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
        with autocast(torch.device("cpu"), precision):
            assert flags() == (tf32, tf32)
        assert flags() == before
        with tf32_flags(precision):
            assert flags() == (tf32, tf32)
        assert flags() == before


def test_flags_come_back_after_an_error(restore_flags):
    torch.backends.cudnn.allow_tf32 = True
    with pytest.raises(RuntimeError):
        with autocast(torch.device("cpu"), "float32"):
            raise RuntimeError("boom")
    assert torch.backends.cudnn.allow_tf32 is True


def test_tf32_is_a_named_choice_of_the_configs():
    assert PRECISIONS == ("float32", "tf32", "bf16")
    assert RIBConfig(precision="tf32").precision == "tf32"
    assert MakeCamConfig(precision="tf32").precision == "tf32"
    with pytest.raises(ValueError, match="precision"):
        RIBConfig(precision="fp32")


def test_make_cam_and_rib_run_their_network_under_the_flags(restore_flags):
    """The flags are on during the forward passes of make_cam and of the RIB engine."""
    from rib_ext.rib.engine import RIBEngine
    from rib_ext.rib.targets import Target
    from rib_ext.cam.maps import image_maps
    from factories import tiny_cam_net

    seen = []
    model = tiny_cam_net(k=3)
    hook = model.stage3.register_forward_pre_hook(lambda *a: seen.append(flags()))
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
    views = [torch.rand(2, 3, 32, 32)]
    image_maps(model, views, (32, 32), np.array([0]), "float32")
    assert seen and all(s == (False, False) for s in seen)
    seen.clear()
    image_maps(model, views, (32, 32), np.array([0]), "tf32")
    assert seen and all(s == (True, True) for s in seen)
    hook.remove()
    assert flags() == (True, True)

    class Pool:  # two other images, one class each
        labels = np.eye(3, dtype=np.float32)[[1, 1]]

        def draws(self, rng, label, exclude, p):
            return self

        def draw(self, count):
            return [None] * count

        def batch(self, recipes):
            return torch.rand(len(recipes), 3, 32, 32), torch.eye(3)[[1] * len(recipes)]

        def stage(self, recipes):  # the engine takes its batches through the (CPU: inline) staging
            from rib_ext.rib.staging import Staged
            return Staged([self.batch(r) for r in recipes])

    cfg = RIBConfig(steps=2, num_others=2, scales=(1.0,), loss_scales=(1.0,), precision="float32",
                    prefetch="off", device="cpu")
    engine = RIBEngine(model, Pool(), cfg, torch.device("cpu"))
    seen.clear()
    engine.head.stage3.register_forward_pre_hook(lambda *a: seen.append(flags()))
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    engine.run([Target(0, "a", image, np.array([1, 0, 0], np.float32))])
    assert seen and all(s == (False, False) for s in seen)
    assert flags() == (True, True)


def _conv_error(precision: str) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 256, 32, 32, generator=g, dtype=torch.float64)
    w = torch.randn(256, 256, 3, 3, generator=g, dtype=torch.float64) / 48
    reference = F.conv2d(x, w, padding=1)
    with autocast(torch.device("cuda"), precision):
        out = F.conv2d(x.float().cuda(), w.float().cuda(), padding=1)
    return ((out.double().cpu() - reference).abs().max() / reference.abs().max()).item()


@pytest.mark.needs_cuda
def test_float32_convolution_matches_a_float64_reference_on_cuda(restore_flags):
    # PyTorch's default lets cuDNN use TF32 (10-bit mantissa, ~1e-3 relative) on Ampere+.
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
    err32 = _conv_error("float32")
    assert err32 < 1e-5, err32
    if torch.cuda.get_device_capability()[0] >= 8:  # TF32 exists only from Ampere on
        assert _conv_error("tf32") > 10 * err32
