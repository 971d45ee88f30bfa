"""The C++ input checks (csrc/checks.h) for the fake kernels, with ``torch._check``.

Under torch.compile / FakeTensor tracing no kernel runs, so without these a wrong shape would be
traced into the graph and fail only at run time, far from the call that caused it.
"""
from __future__ import annotations

import torch


def check_behaviour(behaviour: str, op: str) -> None:
    torch._check(behaviour in ("authors", "paper"),
                 lambda: f"{op}: behaviour must be 'authors' or 'paper', got '{behaviour}'")


def check_cam(cam: torch.Tensor, op: str) -> None:
    torch._check(cam.dim() == 4, lambda: f"{op}: cam must be [N, K, H, W], got {cam.dim()} dims {tuple(cam.shape)}")
    torch._check(cam.numel() == 0 or cam.shape[2] * cam.shape[3] > 0,
                 lambda: f"{op}: cam has an empty spatial size {tuple(cam.shape)}")
    torch._check(cam.dtype.is_floating_point, lambda: f"{op}: cam must be floating point, got {cam.dtype}")


def check_tau(tau: float, op: str) -> None:
    torch._check(0.0 < tau <= 1.0, lambda: f"{op}: tau must be a number in (0, 1], got {tau}")


def check_rows(cam: torch.Tensor, t: torch.Tensor, name: str, op: str) -> None:
    torch._check(t.dim() == 2 and t.shape[0] == cam.shape[0] and t.shape[1] == cam.shape[1],
                 lambda: f"{op}: {name} must be [N, K] = [{cam.shape[0]}, {cam.shape[1]}], got {tuple(t.shape)}")
    torch._check(t.device == cam.device, lambda: f"{op}: {name} is on {t.device} but cam is on {cam.device}")


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str, op: str) -> None:
    torch._check(a.shape == b.shape, lambda: f"{op}: {name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} "
                                             f"must have the same shape")
    torch._check(a.device == b.device, lambda: f"{op}: {name_a} is on {a.device} but {name_b} is on {b.device}")


def check_planes(x: torch.Tensor, name: str, op: str) -> None:
    torch._check(x.dim() >= 2, lambda: f"{op}: {name} must be [..., H, W], got {tuple(x.shape)}")


MAX_RESIZE_SIDE = 1 << 24  # Pillow keeps the source box in float: sides beyond 2^24 are not exact


def check_resize_bicubic_u8(image: torch.Tensor, height: int, width: int) -> None:
    """csrc/checks.h ``check_resize_bicubic_u8``, same messages."""
    op, top = "resize_bicubic_u8", MAX_RESIZE_SIDE
    torch._check(image.dtype == torch.uint8, lambda: f"{op}: image must be uint8, got {image.dtype}")
    torch._check(image.dim() == 3, lambda: f"{op}: image must be [H, W, C] (channels last), got "
                                           f"{image.dim()} dims {tuple(image.shape)}")
    torch._check(1 <= image.shape[2] <= 4, lambda: f"{op}: image must have 1 to 4 channels (last dim), "
                                                   f"got {image.shape[2]} in {tuple(image.shape)}")
    torch._check(1 <= image.shape[0] <= top and 1 <= image.shape[1] <= top,
                 lambda: f"{op}: image sides must be in 1..{top}, got {tuple(image.shape)}")
    torch._check(1 <= height <= top and 1 <= width <= top,
                 lambda: f"{op}: output size must be in 1..{top}, got height {height}, width {width}")
