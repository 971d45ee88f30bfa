"""GNDRP masked pooling and its fused form with the RIB margin loss.

Semantics (both behaviours) are in csrc/gndrp.h; :mod:`rib_ext.ops.oracle` holds the same maths in
plain PyTorch. ``behaviour='authors'`` is the authors' released code, ``behaviour='paper'`` the
paper's equation.
"""
from __future__ import annotations

import torch

from . import oracle
from ._checks import check_behaviour, check_cam, check_rows, check_tau
from ._extension import HAS_C, use_compiled

BEHAVIOURS = ("authors", "paper")
MODES = BEHAVIOURS  # the earlier name


def _checked_behaviour(behaviour: str, mode: str | None = None) -> str:
    """``behaviour``, checked; ``mode`` is its earlier name, still accepted."""
    if mode is not None:
        behaviour = mode
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"behaviour must be one of {BEHAVIOURS}, got {behaviour!r}")
    return behaviour


def _check_tau(tau) -> float:
    """tau thresholds a map divided by its max, so only (0, 1] means anything: nan or <= 0 keeps no
    location (logits of 0, no gradient), > 1 keeps every one (plain average pooling)."""
    try:
        value = float(tau)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value <= 1.0:  # also false for nan
        raise ValueError(f"tau must be a number in (0, 1], got {tau!r}")
    return value


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gndrp_pool(cam: torch.Tensor, present: torch.Tensor, tau: float = 0.4,
               behaviour: str = "authors", *, mode: str | None = None) -> torch.Tensor:
    """Global non-discriminative region pooling (GNDRP).

    Args:
        cam: raw (pre-ReLU) class activation maps ``[N, K, H, W]``; float32/float64, or
            float16/bfloat16 (accumulated in float32).
        present: ``[N, K]``, true (or > 0) where class k is in row n's label. Absent classes keep
            every location (plain average pooling), as the authors' code does.
        tau: threshold on the max-normalised map (detached max); locations below it are pooled;
            a number in (0, 1] (anything else is a ValueError).
        behaviour: ``'authors'`` (strict ``< tau``, sum divided by H*W) or ``'paper'`` (``<= tau``,
            sum divided by the number of kept locations; 0 when none is kept). ``mode=`` is its
            earlier name.

    A present class whose max is <= 0: ``'authors'`` divides without a guard as the authors'
    code does (max < 0 keeps nothing: logit 0, no gradient; max == 0 keeps the negative locations
    and drops the zeros); ``'paper'`` keeps every location. See csrc/gndrp.h.

    Returns:
        logits ``[N, K]`` in cam's dtype, differentiable w.r.t. ``cam``.
    """
    behaviour = _checked_behaviour(behaviour, mode)
    tau = _check_tau(tau)
    present = present if present.dtype == torch.bool else present > 0
    if use_compiled("gndrp_pool", cam):
        return torch.ops.rib_ext.gndrp_pool.default(cam, present, float(tau), behaviour)[0]
    return oracle.gndrp_pool(cam, present, tau, behaviour)


def gndrp_margin_loss(cam: torch.Tensor, labels: torch.Tensor, tau: float = 0.4,
                      margin: float = 600.0, behaviour: str = "authors", *,
                      mode: str | None = None):
    """GNDRP pooling and the RIB loss in one op: the training step's hot path.

    ``loss = sum_{n,k} -t[n,k] * min(m, y[n,k])`` (paper) or ``-t[n,k] * y[n,k]`` (authors), with
    ``y = gndrp_pool(cam, labels > 0, tau, behaviour)``.

    Args:
        cam: ``[N, K, H, W]`` raw CAMs of every row of the step's batch.
        labels: ``[N, K]`` multi-hot labels (also the GNDRP presence mask).
        tau, behaviour, mode: as :func:`gndrp_pool`.
        margin: the clip m (paper behaviour); in the authors' behaviour the margin is the engine's
            stop rule.

    Returns:
        ``(loss, logits)``: a scalar (float32, or float64 for float64 cams) differentiable w.r.t.
        ``cam``, and the logits ``[N, K]`` detached (for the stop statistic and logging).
    """
    behaviour = _checked_behaviour(behaviour, mode)
    tau = _check_tau(tau)
    labels = labels.to(_acc_dtype(cam.dtype))
    if use_compiled("gndrp_margin_loss", cam):
        loss, logits, _, _ = torch.ops.rib_ext.gndrp_margin_loss.default(cam, labels, float(tau),
                                                                 float(margin), behaviour)
        return loss, logits.detach()
    loss, logits = oracle.gndrp_margin_loss(cam, labels, tau, margin, behaviour)
    return loss, logits.detach()


if HAS_C:

    @torch.library.register_fake("rib_ext::gndrp_pool")
    def _gndrp_pool_fake(cam, present, tau, behaviour):
        check_behaviour(behaviour, "gndrp_pool")
        check_cam(cam, "gndrp_pool")
        check_tau(tau, "gndrp_pool")
        check_rows(cam, present, "present", "gndrp_pool")
        torch._check(present.dtype == torch.bool, lambda: f"gndrp_pool: present must be bool, got {present.dtype}")
        rows = cam.shape[:2]
        acc = _acc_dtype(cam.dtype)
        return cam.new_empty(rows), cam.new_empty(rows, dtype=acc), cam.new_empty(rows, dtype=acc)

    @torch.library.register_fake("rib_ext::_gndrp_pool_backward")
    def _gndrp_pool_backward_fake(grad, cam, present, plane_max, scale, tau, behaviour):
        check_behaviour(behaviour, "_gndrp_pool_backward")
        check_cam(cam, "_gndrp_pool_backward")
        check_rows(cam, grad, "grad", "_gndrp_pool_backward")
        check_rows(cam, present, "present", "_gndrp_pool_backward")
        return torch.empty_like(cam, memory_format=torch.contiguous_format)

    @torch.library.register_fake("rib_ext::gndrp_margin_loss")
    def _gndrp_margin_loss_fake(cam, labels, tau, margin, behaviour):
        check_behaviour(behaviour, "gndrp_margin_loss")
        check_cam(cam, "gndrp_margin_loss")
        check_tau(tau, "gndrp_margin_loss")
        check_rows(cam, labels, "labels", "gndrp_margin_loss")
        rows = cam.shape[:2]
        acc = _acc_dtype(cam.dtype)
        return (cam.new_empty((), dtype=acc), cam.new_empty(rows),
                cam.new_empty(rows, dtype=acc), cam.new_empty(rows, dtype=acc))

    @torch.library.register_fake("rib_ext::_gndrp_margin_loss_backward")
    def _gndrp_margin_loss_backward_fake(grad_loss, cam, labels, logits, plane_max, scale, tau,
                                         margin, behaviour):
        check_behaviour(behaviour, "_gndrp_margin_loss_backward")
        check_cam(cam, "_gndrp_margin_loss_backward")
        check_rows(cam, labels, "labels", "_gndrp_margin_loss_backward")
        check_rows(cam, logits, "logits", "_gndrp_margin_loss_backward")
        torch._check(grad_loss.numel() == 1, lambda: "_gndrp_margin_loss_backward: grad_loss must be a scalar")
        return torch.empty_like(cam, memory_format=torch.contiguous_format)

    def _pool_setup_context(ctx, inputs, output):
        cam, present, tau, behaviour = inputs
        _, plane_max, scale = output
        ctx.save_for_backward(cam, present, plane_max, scale)
        ctx.tau, ctx.behaviour = tau, behaviour

    def _pool_backward(ctx, grad_pooled, _grad_max, _grad_scale):
        cam, present, plane_max, scale = ctx.saved_tensors
        grad_cam = torch.ops.rib_ext._gndrp_pool_backward.default(
            grad_pooled, cam, present, plane_max, scale, ctx.tau, ctx.behaviour)
        return grad_cam, None, None, None

    torch.library.register_autograd("rib_ext::gndrp_pool", _pool_backward,
                                    setup_context=_pool_setup_context)

    def _fused_setup_context(ctx, inputs, output):
        cam, labels, tau, margin, behaviour = inputs
        _, logits, plane_max, scale = output
        ctx.save_for_backward(cam, labels, logits, plane_max, scale)
        ctx.tau, ctx.margin, ctx.behaviour = tau, margin, behaviour

    def _fused_backward(ctx, grad_loss, _grad_logits, _grad_max, _grad_scale):
        cam, labels, logits, plane_max, scale = ctx.saved_tensors
        grad_cam = torch.ops.rib_ext._gndrp_margin_loss_backward.default(
            grad_loss, cam, labels, logits, plane_max, scale, ctx.tau, ctx.margin, ctx.behaviour)
        return grad_cam, None, None, None, None

    torch.library.register_autograd("rib_ext::gndrp_margin_loss", _fused_backward,
                                    setup_context=_fused_setup_context)
