"""Input factories shared by the op tests and the benchmarks (benchmarks/bench_ops.py)."""
from __future__ import annotations

import torch


def make_cam(n, k, h, w, *, dtype=torch.float32, device="cpu", seed=0, layout="contiguous",
             requires_grad=False):
    """Raw CAMs with both signs, like a ResNet's pre-ReLU maps; ``layout`` in
    contiguous | channels_last | noncontiguous (a strided view of a larger tensor)."""
    g = torch.Generator().manual_seed(seed)
    wide = 2 if layout == "noncontiguous" else 1
    x = (torch.randn(n, k, h, wide * w, generator=g, dtype=torch.float64) * 3 + 0.5)
    x = x.to(device=device, dtype=dtype)[..., ::wide]
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    if layout == "noncontiguous" and w > 1:  # a width-1 view is contiguous whatever its strides
        assert not x.is_contiguous()
    return x.requires_grad_(requires_grad)


def make_labels(n, k, *, p=0.3, device="cpu", seed=1, dtype=torch.float32):
    """Multi-hot labels [n, k] with at least one class per row (as every training row has)."""
    g = torch.Generator().manual_seed(seed)
    t = (torch.rand(n, k, generator=g) < p).to(dtype)
    t[torch.arange(n), torch.randint(0, k, (n,), generator=g)] = 1
    return t.to(device)


def make_image(h, w, c=3, *, seed=0):
    """A uint8 [h, w, c] numpy image with what stresses a resampler: smooth ramps, hard edges
    between saturated blocks (bicubic overshoots there, so both clips are hit) and noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    ramp = (yy[..., None] * rng.uniform(0, 255, c) + xx[..., None] * rng.uniform(-128, 128, c)) % 256
    blocks = rng.integers(0, 2, size=(h // 3 + 1, w // 3 + 1, c)).repeat(3, 0).repeat(3, 1)[:h, :w] * 255
    noise = rng.integers(0, 256, size=(h, w, c))
    pick = rng.integers(0, 3, size=(h // 8 + 1, w // 8 + 1, 1)).repeat(8, 0).repeat(8, 1)[:h, :w]
    return np.where(pick == 0, ramp, np.where(pick == 1, blocks, noise)).astype(np.uint8)


class TinyDataset:
    """In-memory images + labels with the dataset interface the RIB code reads."""

    def __init__(self, n=8, k=4, size=(40, 56), seed=0):
        import numpy as np

        rng = np.random.default_rng(seed)
        self._images = [rng.integers(0, 256, size=(size[0] + 4 * (i % 3), size[1] - 4 * (i % 2), 3),
                                     dtype=np.uint8) for i in range(n)]
        labels = np.zeros((n, k), np.float32)
        for i in range(n):
            labels[i, i % k] = 1
            if i % 3 == 0:
                labels[i, (i + 1) % k] = 1
        self._labels = labels
        self.class_names = tuple(f"c{i}" for i in range(k))
        self.num_classes = k
        self.ids = [f"img{i}" for i in range(n)]

    def __len__(self):
        return len(self._images)

    def name(self, i):
        return self.ids[i]

    def image(self, i):
        return self._images[i]

    def labels(self, i):
        return self._labels[i].copy()

    def label_matrix(self):
        return self._labels


def tiny_cam_net(k=4, seed=0):
    """A small random ResNet-18 CAMNet with non-trivial fixed-BN statistics."""
    import warnings

    from rib_ext.models import build_cam_net

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_cam_net("resnet18", k, random_init=True)
    for m in model.modules():
        if hasattr(m, "running_var") and m.running_var is not None:
            m.running_var.fill_(4.0)  # keeps activations from growing through the random stages
    return model.eval()


def tiny_deeplab(num_classes=4, seed=0):
    """A DeepLab-v2 on a random ResNet-18, its frozen batch norms' variances set to 4 so that random
    activations do not grow through the layers."""
    import warnings

    from rib_ext.models import FixedBatchNorm
    from rib_ext.segment import build_deeplab

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_deeplab("resnet18", num_classes, random_init=True)
    for m in model.modules():
        if isinstance(m, FixedBatchNorm):
            m.running_var.fill_(4.0)
    return model


# The segmentation tests' tiny settings (a SegmentConfig's fields); each module sets its own
# iterations and CRF.
TINY_SEGMENT = dict(backbone="resnet18", random_init=True, batch_size=2, crop_size=21,
                    checkpoint_every=100, tensorboard=False, device="cpu")


def gpu_check_steps() -> list:
    """(name, limit in s) of every step of benchmarks/gpu_check.sh, as its STEPS line lists them."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh").read_text()
    listed = re.search(r"^STEPS=\((.*?)\)", text, re.S | re.M).group(1).split()
    return [(s.split(":")[0], int(s.split(":")[1])) for s in listed]
