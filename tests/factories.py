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
