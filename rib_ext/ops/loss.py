"""The RIB clipped-margin loss and the authors' stop statistic."""
from __future__ import annotations

import torch

from . import oracle
from ._checks import check_behaviour, check_same_shape
from ._extension import HAS_C, use_compiled
from .gndrp import _checked_behaviour

REDUCTIONS = ("sum", "mean", "none")


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, margin: float = 600.0,
                behaviour: str = "authors", reduction: str = "sum", *,
                mode: str | None = None) -> torch.Tensor:
    """L_RIB on pooled logits.

    ``behaviour='paper'``: ``-t * min(m, y)`` elementwise, gradient ``-t`` where ``y < m`` and 0
    where ``y >= m``. ``behaviour='authors'``: ``-t * y`` (the authors' code: no clip; the margin becomes a
    stop rule, see :func:`margin_stop_statistic`).

    Args:
        logits: ``[N, K]`` pooled logits (any shape works; labels must match it).
        labels: same shape, multi-hot (not differentiated).
        margin: m.
        reduction: ``'sum'`` (the authors' loss, the default), ``'mean'`` or ``'none'``.
        mode: the earlier name of ``behaviour``.
    """
    behaviour = _checked_behaviour(behaviour, mode)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if use_compiled("margin_loss", logits):
        out = torch.ops.rib_ext.margin_loss.default(logits, labels, float(margin), behaviour)
    else:
        out = oracle.margin_loss(logits, labels, margin, behaviour)
    if reduction == "sum":
        return out.sum()
    if reduction == "mean":
        return out.mean()
    return out


def margin_stop_statistic(logits: torch.Tensor, labels: torch.Tensor,
                          rows: slice | torch.Tensor | None = None) -> torch.Tensor:
    """``|sum of the labelled logits over rows|``: the authors' stop rule compares it with m.

    ``rows`` selects the target image's rows of the step's batch (all rows when None).
    """
    if rows is not None:
        logits, labels = logits[rows], labels[rows]
    return (labels.to(logits.dtype) * logits).sum().abs()


if HAS_C:

    @torch.library.register_fake("rib_ext::margin_loss")
    def _margin_loss_fake(logits, labels, margin, behaviour):
        check_behaviour(behaviour, "margin_loss")
        check_same_shape(logits, labels, "logits", "labels", "margin_loss")
        torch._check(logits.dtype.is_floating_point, lambda: "margin_loss: logits must be floating point")
        return torch.empty_like(logits, memory_format=torch.contiguous_format)

    @torch.library.register_fake("rib_ext::_margin_loss_backward")
    def _margin_loss_backward_fake(grad, logits, labels, margin, behaviour):
        check_behaviour(behaviour, "_margin_loss_backward")
        check_same_shape(logits, labels, "logits", "labels", "_margin_loss_backward")
        check_same_shape(logits, grad, "logits", "grad", "_margin_loss_backward")
        return torch.empty_like(logits, memory_format=torch.contiguous_format)

    def _setup_context(ctx, inputs, output):
        logits, labels, margin, behaviour = inputs
        ctx.save_for_backward(logits, labels)
        ctx.margin, ctx.behaviour = margin, behaviour

    def _backward(ctx, grad):
        logits, labels = ctx.saved_tensors
        grad_logits = torch.ops.rib_ext._margin_loss_backward.default(grad, logits, labels, ctx.margin,
                                                              ctx.behaviour)
        return grad_logits, None, None, None

    torch.library.register_autograd("rib_ext::margin_loss", _backward, setup_context=_setup_context)
