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
