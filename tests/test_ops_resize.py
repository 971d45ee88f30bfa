"""resize_bicubic_u8: Pillow's bicubic resize of uint8 images, bit for bit (Pillow is the oracle)."""
import numpy as np
import pytest
import torch
from PIL import Image

from factories import TinyDataset, make_image
from rib_ext import ops
from rib_ext.ops import _extension, oracle
from rib_ext.rib import OtherImages


def pil_resize(img: np.ndarray, size) -> np.ndarray:
    """The oracle: Pillow on the uint8 image (mode L for one channel, RGB for three)."""
    h, w = size
    if img.shape[2] == 1:
        return np.asarray(Image.fromarray(img[..., 0]).resize((w, h), Image.BICUBIC))[..., None]
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))


def resize(img: np.ndarray, size, device="cpu") -> np.ndarray:
    return ops.resize_bicubic_u8(torch.from_numpy(img).to(device), size).cpu().numpy()


def random_cases(n, seed, max_in=70, max_out=140):
    """(in_h, in_w, out_h, out_w): 1-pixel sides, equal sides, up and down scales, odd sizes."""
    rng = np.random.default_rng(seed)
    edges = [(1, 1, 1, 1), (1, 1, 5, 3), (5, 3, 1, 1), (1, 9, 1, 4), (9, 1, 4, 1), (2, 2, 3, 3),
             (7, 7, 7, 7), (7, 11, 7, 3), (7, 11, 20, 11), (300, 2, 7, 1), (3, 4, 200, 150)]
    drawn = [tuple(int(v) for v in np.r_[rng.integers(1, max_in, 2), rng.integers(1, max_out, 2)])
             for _ in range(n)]
    return edges + drawn


@pytest.mark.parametrize("case", random_cases(60, seed=0))
def test_cpu_kernel_is_pillow_bit_for_bit(case):
    img = make_image(case[0], case[1], seed=sum(case))
    np.testing.assert_array_equal(resize(img, case[2:]), pil_resize(img, case[2:]))


@pytest.mark.parametrize("case", random_cases(12, seed=1, max_in=40, max_out=60))
def test_plain_pytorch_reference_is_pillow_bit_for_bit(case):
    img = make_image(case[0], case[1], seed=sum(case))
    got = oracle.resize_bicubic_u8(torch.from_numpy(img), case[2:]).numpy()
    np.testing.assert_array_equal(got, pil_resize(img, case[2:]))


def test_strong_scales_and_one_axis_only():
    img = make_image(333, 517, seed=4)
    for size in [(333, 40), (20, 517), (3, 5), (333, 517), (1000, 517), (480, 640), (17, 1301)]:
        np.testing.assert_array_equal(resize(img, size), pil_resize(img, size), err_msg=str(size))


def test_one_and_four_channels_are_independent_planes():
    img = make_image(23, 31, c=4, seed=5)
    got = resize(img, (40, 13))
    for c in range(4):  # Pillow's L mode per channel (RGBA would be alpha-premultiplied by Pillow)
        np.testing.assert_array_equal(got[..., c:c + 1], pil_resize(img[..., c:c + 1], (40, 13)))
    gray = make_image(19, 27, c=1, seed=6)
    np.testing.assert_array_equal(resize(gray, (9, 50)), pil_resize(gray, (9, 50)))


def test_strided_inputs_give_the_same_bytes():
    img = make_image(30, 41, seed=7)
    t = torch.from_numpy(img)
    for view in (t.flip(1), t[::2, 1::3], t.permute(1, 0, 2)):
        want = pil_resize(np.ascontiguousarray(view.numpy()), (17, 25))
        out = ops.resize_bicubic_u8(view, (17, 25))
        assert out.is_contiguous()
        np.testing.assert_array_equal(out.numpy(), want)


@pytest.mark.parametrize("case", [(300, 2, 7, 1), (60, 40, 20, 39), (61, 40, 20, 20), (40, 60, 20, 50)])
def test_both_pass_orders_match_the_plain_reference(case):
    """Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
    pixels as the width; older Pillow never does. Both orders, kernel against the reference."""
    img = torch.from_numpy(make_image(case[0], case[1], seed=13))
    outs = {}
    for adaptive in (True, False):
        outs[adaptive] = ops.resize_bicubic_u8(img, case[2:], adaptive_order=adaptive)
        torch.testing.assert_close(outs[adaptive], oracle.resize_bicubic_u8(img, case[2:], adaptive),
                                   rtol=0, atol=0)
    vertical_first = oracle.vertical_first(case[:2], case[2:])
    assert vertical_first == (case[0] - case[2] > 2 * (case[1] - case[3]))
    if not vertical_first:
        assert torch.equal(outs[True], outs[False])
    elif case == (300, 2, 7, 1):  # the order shows in the bytes
        assert not torch.equal(outs[True], outs[False])


def test_the_default_order_follows_the_installed_pillow():
    import PIL

    from rib_ext.ops import resize as resize_mod

    assert resize_mod.PILLOW_ADAPTIVE_ORDER == (int(PIL.__version__.split(".")[0]) >= 13)


def test_same_size_is_a_copy():
    t = torch.from_numpy(make_image(8, 9, seed=8))
    out = ops.resize_bicubic_u8(t, (8, 9))
    assert torch.equal(out, t) and out.data_ptr() != t.data_ptr()


def test_other_images_recipe_sizes_are_pillow_bit_for_bit():
    """The sizes RIB's other images get (long side drawn in a range, np.round per side), scaled
    down from VOC's 320..640 of ~500x375 images to 32..64 of ~50x37 (plus larger-than-source)."""
    data = TinyDataset(n=6, k=4, size=(37, 50), seed=9)
    data._images = [make_image(*im.shape[:2], seed=i) for i, im in enumerate(data._images)]
    pool = OtherImages(data, "cpu", resize_long=(32, 64), crop=48)
    rng = np.random.default_rng(10)
    for _ in range(30):
        idx = int(rng.integers(len(data)))
        r = pool.recipe(idx, rng)
        np.testing.assert_array_equal(resize(data.image(idx), r["size"]),
                                      pil_resize(data.image(idx), r["size"]))


BAD = [
    (lambda: torch.zeros(4, 4, 3), (2, 2), "image must be uint8, got (Float|torch.float32)"),
    (lambda: torch.zeros(4, 4, dtype=torch.uint8), (2, 2), r"must be \[H, W, C\] \(channels last\), got 2 dims"),
    (lambda: torch.zeros(1, 4, 4, 3, dtype=torch.uint8), (2, 2), "got 4 dims"),
    (lambda: torch.zeros(3, 4, 0, dtype=torch.uint8), (2, 2), "1 to 4 channels"),
    (lambda: torch.zeros(4, 4, 5, dtype=torch.uint8), (2, 2), "1 to 4 channels .* got 5"),
    (lambda: torch.zeros(0, 4, 3, dtype=torch.uint8), (2, 2), "image sides must be in 1.."),
    (lambda: torch.zeros(4, 4, 3, dtype=torch.uint8), (0, 2), "output size must be in 1.*height 0"),
    (lambda: torch.zeros(4, 4, 3, dtype=torch.uint8), (2, -1), "output size .*width -1"),
    (lambda: torch.zeros(4, 4, 3, dtype=torch.uint8), (2, (1 << 24) + 1), "output size"),
]


@pytest.mark.parametrize("make,size,message", BAD)
@pytest.mark.parametrize("path", ["wrapper", "reference"])
def test_bad_inputs_are_refused_with_a_clear_message(make, size, message, path):
    fn = ops.resize_bicubic_u8 if path == "wrapper" else oracle.resize_bicubic_u8
    with pytest.raises(RuntimeError, match=f"resize_bicubic_u8: .*{message}"):
        fn(make(), size)


@pytest.mark.skipif(not ops.HAS_C, reason="opcheck needs the compiled extension")
def test_opcheck(device):
    cases = [((9, 13, 3), (5, 20), True), ((30, 4, 2), (3, 3), True), ((1, 1, 1), (3, 2), False)]
    for shape, size, adaptive in cases:
        img = torch.from_numpy(make_image(*shape[:2], c=shape[2], seed=11)).to(device)
        torch.library.opcheck(torch.ops.rib_ext.resize_bicubic_u8.default, (img, *size, adaptive))


@pytest.mark.skipif(not ops.HAS_C, reason="needs the compiled extension")
def test_wrapper_runs_the_compiled_kernel(device, monkeypatch):
    assert "resize_bicubic_u8" in _extension.registered_ops()
    assert ops.backend("resize_bicubic_u8", device) == f"compiled-{device}"

    def fallback_called(*a, **k):
        raise AssertionError("the wrapper ran the Python reference, not the kernel")

    monkeypatch.setattr(oracle, "resize_bicubic_u8", fallback_called)
    ops.resize_bicubic_u8(torch.zeros(3, 4, 3, dtype=torch.uint8, device=device), (5, 6))


def test_compiles_with_the_fake_kernel():
    fn = torch.compile(lambda x: ops.resize_bicubic_u8(x, (7, 9)).float().mean(), backend="eager",
                       fullgraph=True)
    img = torch.from_numpy(make_image(12, 5, seed=12))
    torch.testing.assert_close(fn(img), ops.resize_bicubic_u8(img, (7, 9)).float().mean())


@pytest.mark.needs_cuda
@pytest.mark.parametrize("case", random_cases(40, seed=2, max_in=300, max_out=700))
def test_cuda_kernel_equals_the_cpu_kernel(case):
    img = torch.from_numpy(make_image(case[0], case[1], seed=sum(case)))
    for adaptive in (True, False):
        torch.testing.assert_close(ops.resize_bicubic_u8(img.cuda(), case[2:], adaptive).cpu(),
                                   ops.resize_bicubic_u8(img, case[2:], adaptive), rtol=0, atol=0)


@pytest.mark.needs_cuda
def test_cuda_kernel_every_channel_count_and_strided_input():
    for c in (1, 2, 3, 4):
        t = torch.from_numpy(make_image(41, 67, c=c, seed=c))
        for view in (t, t.flip(0)[::2]):
            torch.testing.assert_close(ops.resize_bicubic_u8(view.cuda(), (29, 130)).cpu(),
                                       ops.resize_bicubic_u8(view, (29, 130)), rtol=0, atol=0)
