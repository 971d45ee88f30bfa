"""The RIB engine's CUDA-graph path (``rib.cuda_graphs``, CUDA only): the capture, and the passes
it captures.

Per group size G one graph holds the other images' pass (stem, head, loss, and their backward);
with ``cuda_graph_targets`` each target's passes at every scale get their own graph. The engine
keeps the graphs and falls back to its eager path when a capture fails; what is captured, and how,
lives here so that the eager scheduling reads without it.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

import torch

from rib_ext.config import RIBConfig
from rib_ext.precision import tf32_flags
from rib_ext.rib.losses import group_loss
from rib_ext.rib.staging import DEVICE_WORK


def capture_graphed(fn, sample_args, warmup: int = 3):
    """``torch.cuda.make_graphed_callables(fn, sample_args)`` after ``warmup`` plain runs, under a
    module-level name so that a CPU test can stand the plain function in for the capture and check
    the graphed step's maths. The capture is thread-local where torch offers it (only this
    thread's calls are checked against it); :func:`capture_or_error` also brings the worker
    threads to rest around it."""
    mode = ({"capture_error_mode": "thread_local"} if "capture_error_mode" in
            inspect.signature(torch.cuda.make_graphed_callables).parameters else {})
    return torch.cuda.make_graphed_callables(fn, sample_args, num_warmup_iters=warmup, **mode)


def capture_or_error(fn, args, warmup: int, precision: str,
                     device: torch.device) -> tuple[Optional[Callable], Optional[str]]:
    """``fn`` captured by :func:`capture_graphed`, with the worker threads at rest (the prefetch
    and lookahead preparations wait, :data:`~rib_ext.rib.staging.DEVICE_WORK`) and TF32 as the
    precision says (the captured backward too): (graphed, None), or (None, the cause) when the
    capture failed, so that the caller can go on eagerly. A stream left capturing cannot go on:
    that raises."""
    try:
        with DEVICE_WORK.exclusive(), tf32_flags(precision):
            return capture_graphed(fn, args, warmup=warmup), None
    except Exception as exc:  # noqa: BLE001 - any failure of the capture: eager from here on
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise
        return None, f"{type(exc).__name__}: {exc}"


def other_losses_pass(stem: Callable, other_cams: Callable, n: int, g: int,
                      cfg: RIBConfig) -> Callable:
    """The other images' pass of a group of ``g`` images as one function of (crops, labels,
    every image's ``n`` weights in turn), returning each image's other-images loss term [g]:
    ``stem`` and ``other_cams`` (the engine's) then the loss, as the eager step computes them."""

    def others(images, labels, *flat):
        x2 = stem(images)
        params = [list(flat[i * n:(i + 1) * n]) for i in range(g)]
        cams = other_cams(params, x2.chunk(g))
        return torch.stack([group_loss(cam, lab, cfg)[0]
                            for cam, lab in zip(cams, labels.chunk(g))])

    return others


def target_passes(scale_forward: Callable, n: int) -> Callable:
    """A target's passes at its ``n`` scales as one function of (its views' stem features per
    scale, its weights): CAMs per scale through the engine's ``scale_forward``, differentiable at
    the loss scales. Captured on the image's first step (after one warm-up run, which makes the
    lazy initialisations), forward and backward, and replayed for the rest."""

    def passes(*args):
        return tuple(scale_forward(list(args[n:]), args[:n], s) for s in range(n))

    return passes
