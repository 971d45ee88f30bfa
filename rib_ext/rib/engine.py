"""The RIB engine: many target images adapted at once, each with its own functional weight copy.

Per image the state is a copy of only the trainable weights (stage 3, stage 4 with their fixed-BN
affine parameters, classifier) and its SGD momentum buffers. The stem (stages 1-2) is shared and
runs without gradients: the target's stage-2 features are computed once per image, the other
images' once per step for the whole group in one batch. A group of up to ``cfg.group_size``
images steps together (one autograd call for the group's summed losses: the weights are disjoint,
so each image's gradient is its own); a finished image leaves and the next one takes its place.

Speed settings (:class:`RIBConfig`): bf16 autocast and channels_last for the convolutions, the stem
with its batch norms folded in, the SGD update as ``torch._foreach_*`` over the whole group, the
step's figures read by the host once per step (on CUDA one step late, the stops decided on the
device), the
other images built in a background thread while the device runs the target pass, G chosen from a
memory budget (``group_size=0``), and on CUDA ``cuda_graphs``: the other images' pass replayed
from a graph per G, the group's weights in :class:`~rib_ext.rib.slots.WeightSlots` stepped by one
kernel, and with ``cuda_graph_targets`` each target's passes replayed from its own graph.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import itertools
import logging
import math
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from rib_ext import ops
from rib_ext.config import RIBConfig
from rib_ext.precision import (autocast, bf16_convolutions, check_precision, cudnn_benchmark,
                               fold_stem, memory_format, tf32_flags)
from rib_ext.rib.losses import group_loss, step_loss
from rib_ext.rib.sampling import OtherDraws, OtherImages, image_generator
from rib_ext.rib.slots import WeightSlots
from rib_ext.rib.staging import DEVICE_WORK
from rib_ext.rib.targets import TargetViews
from rib_ext.rib.stops import STOP_EXPLOSION, STOP_MARGIN, STOP_STEPS, explosion_ratio_tensor
from rib_ext.training import NonFiniteLossError

log = logging.getLogger("rib_ext.rib")


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """bf16 autocast output back to float32; float32 and float64 (the exactness tests) unchanged."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class CAMHead(nn.Module):
    """What RIB adapts, as shared modules: the classifier's adapted layers (a CAMNet's stages 3-4,
    an adapted model's body: ``model.head_modules()``) and its classifier applied per location,
    from the frozen stem's output to the raw CAM."""

    def __init__(self, model):
        super().__init__()
        self.parts = list(model.head_modules())
        for name, module in model.head_modules().items():
            self.add_module(name, module)
        self.classifier = model.classifier

    def forward(self, x2: torch.Tensor) -> torch.Tensor:
        for name in self.parts:
            x2 = getattr(self, name)(x2)
        return self.classifier(x2)


class AffineBatchNorm(nn.Module):
    """A fixed batch norm as the per-channel affine map it is, computed in float32 and returned in
    the input's dtype: what autocast's mixed-dtype batch norm does for a bf16 input, written so
    that vmap can batch it over per-image affine parameters (its batch-norm rule cannot)."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.eps = bn.eps
        self.weight, self.bias = bn.weight, bn.bias
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)
        # timm's BatchNormAct2d is a batch norm with its activation (and a dropout, off in eval)
        # inside: kept, so that the copy computes what the layer computes.
        self.act = getattr(bn, "act", None) if isinstance(getattr(bn, "act", None), nn.Module) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        y = (x.float() * scale.view(-1, 1, 1) + shift.view(-1, 1, 1)).to(x.dtype)
        return y if self.act is None else self.act(y)


@dataclass
class Target:
    """One image to adapt: what it is, and (for the engine) its adaptation state."""

    index: int  # position in the full image list: seeds its random draws
    name: str
    image: np.ndarray  # uint8 [H, W, 3]
    label: np.ndarray  # float32 [K] of 0/1, at least one class
    pool_index: Optional[int] = None  # its own index in the other-image pool, never drawn for it

    def __post_init__(self) -> None:
        check_target(self)


def check_target(target: Target, num_classes: Optional[int] = None) -> None:
    """A target's image and label as the engine reads them, or a ValueError naming the image and
    the value (a float image would be cast to black, a CHW one read as a 3-pixel-wide image)."""
    name, image, label = target.name, target.image, target.label
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name}: image must be a numpy array uint8 [H, W, 3], got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        chw = " (it looks channels first: use image.transpose(1, 2, 0))" if (
            image.ndim == 3 and image.shape[0] == 3) else ""
        raise ValueError(f"{name}: image has shape {image.shape}; expected [H, W, 3] RGB{chw}")
    if image.dtype != np.uint8:
        hint = (" (values in [0, 1]: pass (image * 255).round().astype(np.uint8))"
                if image.dtype.kind == "f" and image.size and 0 <= np.nanmin(image) and np.nanmax(image) <= 1
                else "")
        raise ValueError(f"{name}: image is {image.dtype}; expected uint8 RGB values 0..255{hint}")
    label = np.asarray(label)
    if label.ndim != 1:
        raise ValueError(f"{name}: label has shape {label.shape}; expected [K] (one 0/1 per class)")
    if not np.isin(label, (0, 1)).all():
        raise ValueError(f"{name}: label holds values other than 0 or 1: {label.tolist()}")
    if not label.any():
        raise ValueError(f"{name}: label has no class (all zeros): there is nothing to adapt")
    if num_classes is not None and label.shape[0] != num_classes:
        raise ValueError(f"{name}: label has {label.shape[0]} classes but the classifier has "
                         f"{num_classes}")


@dataclass
class _State:
    target: Target
    keys: torch.Tensor
    label: torch.Tensor
    x2: list  # per scale: stage-2 features [2, C, h, w] of (image, flip)
    params: list
    bufs: list
    acc: list  # per scale: accumulated map [K, h, w]
    rng: np.random.Generator
    others: Optional[OtherDraws] = None  # this image's other images, one permutation of its pool
    step: int = 0  # updates made, as the host has read them
    stop: Optional[str] = None
    queued: int = 0  # steps queued on the device (ahead of ``step`` by the reads not yet made)
    # On the device: still adapting. A step queued before the host has read that the image stopped
    # leaves its maps and weights as they are (late reads only; None otherwise).
    alive: Optional[torch.Tensor] = None
    stats: list = field(default_factory=list)
    snapshots: list = field(default_factory=list)  # maps after each step (snapshot_steps only)
    t0: float = field(default_factory=time.time)
    slot: Optional[int] = None  # its row of the engine's weight slots (cuda_graphs)
    target_graph: Optional[Callable] = None  # its passes, graphed (cuda_graph_targets)
    graph_cams: Optional[tuple] = None  # this step's CAMs per scale from that graph


@dataclass
class _Readout:
    """One group step's per-image figures on their way to the host, read one step late on CUDA.

    ``values`` [n, 3] float64 per image of ``states``: exploded (0/1), stop statistic, loss.
    ``exploded``: images the host already knows exploded in that step (early reads only)."""

    states: list
    values: Optional[torch.Tensor]
    exploded: list
    snapshots: list  # per image of ``states``: its per-scale maps after the target pass, or None
    event: Optional[object] = None  # CUDA event after the copy to pinned memory

    def rows(self) -> list:
        if self.values is None:
            return []
        if self.event is not None:
            self.event.synchronize()  # this step's copy only: later steps stay queued
        return self.values.tolist()


@dataclass
class Result:
    """One adapted image: IRN's map dict and the record of how adaptation went."""

    name: str
    maps: dict
    record: dict
    step_maps: list = field(default_factory=list)  # maps of steps 0..k, when snapshots are asked for


def sgd_update_(params, grads, bufs, lrs, weight_decay: float, momentum: float) -> None:
    """torch.optim.SGD's update (dampening 0, no Nesterov), in place, op for op."""
    for i, (p, g) in enumerate(zip(params, grads)):
        d = g.add(p, alpha=weight_decay) if weight_decay else g
        if momentum:
            if bufs[i] is None:
                bufs[i] = torch.clone(d).detach()
            else:
                bufs[i].mul_(momentum).add_(d)
            d = bufs[i]
        p.add_(d, alpha=-lrs[i])


def _decayed(grads, params, weight_decay: float) -> list:
    """The gradients with weight decay added (a new list; the gradients themselves untouched)."""
    return torch._foreach_add(list(grads), params, alpha=weight_decay) if weight_decay else list(grads)


def _start_buffers(d, bufs) -> list[int]:
    """Momentum buffers a first step creates (a copy of d, as torch.optim.SGD does); returns the
    indices of the buffers that existed before."""
    old = [i for i, b in enumerate(bufs) if b is not None]
    for i, b in enumerate(bufs):
        if b is None:
            bufs[i] = torch.clone(d[i]).detach()
    return old


def _step_by_lr_(params, d, lrs) -> None:
    """params[i] -= lrs[i] * d[i]: one foreach call per learning rate (alpha is one scalar per call)."""
    by_lr: dict[float, list[int]] = {}
    for i, lr in enumerate(lrs):
        by_lr.setdefault(float(lr), []).append(i)
    for lr, idx in by_lr.items():
        torch._foreach_add_([params[i] for i in idx], [d[i] for i in idx], alpha=-lr)


def sgd_update_foreach_(params, grads, bufs, lrs, weight_decay: float, momentum: float) -> None:
    """:func:`sgd_update_` over any number of parameters (a whole group's) in a few
    ``torch._foreach_*`` calls: the same operations per element, so the same result bit for bit."""
    if not params:
        return
    d = _decayed(grads, params, weight_decay)
    if momentum:
        old = _start_buffers(d, bufs)
        if old:
            kept = [bufs[i] for i in old]
            torch._foreach_mul_(kept, momentum)
            torch._foreach_add_(kept, [d[i] for i in old])
        d = list(bufs)
    _step_by_lr_(params, d, lrs)


def sgd_update_masked_(params, grads, bufs, lrs, weight_decay: float, momentum: float,
                       masks) -> None:
    """:func:`sgd_update_foreach_` where ``masks[i]`` (a 0-d bool tensor on the device) is False:
    that parameter and its momentum buffer are left as they are. Where True, the same operations
    as the unmasked update (bit for bit); a masked-out non-finite gradient changes nothing."""
    if not params:
        return
    d = _decayed(grads, params, weight_decay)
    if momentum:
        # A buffer created here is an image's first step: it is alive (no stop precedes its first update).
        old = _start_buffers(d, bufs)
        if old:
            new = torch._foreach_mul([bufs[i] for i in old], momentum)
            torch._foreach_add_(new, [d[i] for i in old])
            for i, n in zip(old, new):
                bufs[i].copy_(torch.where(masks[i], n, bufs[i]))
        d = list(bufs)
    d = [torch.where(m, x, 0) for m, x in zip(masks, d)]
    _step_by_lr_(params, d, lrs)


def capture_graphed(fn, sample_args, warmup: int = 3):
    """``torch.cuda.make_graphed_callables(fn, sample_args)`` after ``warmup`` plain runs, under a
    module-level name so that a CPU test can stand the plain function in for the capture and check
    the graphed step's maths. The capture is thread-local where torch offers it (only this
    thread's calls are checked against it); the engine also brings its own worker threads to rest
    around it (:meth:`RIBEngine._capture`)."""
    mode = ({"capture_error_mode": "thread_local"} if "capture_error_mode" in
            inspect.signature(torch.cuda.make_graphed_callables).parameters else {})
    return torch.cuda.make_graphed_callables(fn, sample_args, num_warmup_iters=warmup, **mode)


GROUP_MEMORY_SLACK = 0.1  # the part of the free device memory the automatic G leaves alone


def choose_group_size(per_image_bytes: float, budget_bytes: float, max_group: int = 16) -> int:
    """The largest G (1..max_group) whose step, at ``per_image_bytes`` each, fits the budget."""
    if per_image_bytes <= 0:
        return max_group
    return int(max(1, min(max_group, budget_bytes // per_image_bytes)))


class RIBEngine:
    """Adapts images from the trained classifier ``model`` (θ0) as :class:`RIBConfig` says.

    Args:
        model: a trained CAMNet (left unchanged).
        pool: the other images (:class:`OtherImages`), on ``device``.
        cfg: the RIB settings (``group_size`` images at once).
    """

    def __init__(self, model, pool: OtherImages, cfg: RIBConfig, device: torch.device,
                 snapshot_steps: bool = False, read_lag: Optional[int] = None):
        if cfg.steps < 1:
            raise ValueError(f"RIB needs at least one step, got steps={cfg.steps}")
        if cfg.scales[0] != 1.0:
            raise ValueError(f"RIB scales must start with 1.0 (the explosion check), got {cfg.scales}")
        if cfg.prefetch not in ("auto", "on", "off"):
            raise ValueError(f"prefetch must be 'auto', 'on' or 'off', got {cfg.prefetch!r}")
        if cfg.group_size < 0:
            raise ValueError(f"group_size must be >= 1, or 0 for automatic; got {cfg.group_size}")
        self.cfg = cfg
        self.device = torch.device(device)
        self.precision = check_precision(cfg.precision)
        self.fmt = memory_format(cfg.channels_last)
        # cuDNN's algorithm timing only around the other images' pass (fixed shapes): targets
        # come in every size, and timing each new one costs more than it saves.
        self.bench_others = cfg.cudnn_benchmark and self.device.type == "cuda"
        # A copy: moving it to the device, eval() and channels_last (the unfolded stem) would
        # otherwise change the caller's model.
        self.model = copy.deepcopy(model).to(self.device).eval()
        self.pool = pool
        self.head = CAMHead(self.model)
        # The stem never trains: a copy with its batch norms folded into the convolutions (the
        # model itself stays as it was).
        stem = self.model.stem_module()
        family = getattr(self.model, "family", type(self.model).__name__)
        self.stem = (fold_stem(stem, family) if cfg.fold_stem else stem).to(memory_format=self.fmt)
        names, base = zip(*[(n, p) for n, p in self.head.named_parameters() if p.requires_grad])
        self.names = list(names)
        # clone() keeps the memory format, so every image's weight copy is channels_last too.
        self.base = [p.detach().contiguous(memory_format=self.fmt) if p.dim() == 4 else p.detach()
                     for p in base]
        self.lr_mults = [cfg.classifier_lr_mult if n.startswith("classifier.") else 1.0
                         for n in self.names]
        self.buffers = {n: b for n, b in self.head.named_buffers()}
        # The group's update in whole-group foreach passes on CUDA (few launches); on the CPU
        # parameter by parameter: each stays in cache through its update, 3x faster there than
        # whole-group passes, the same bits (benchmarks/bench_sgd.py).
        self.foreach = cfg.foreach_update and self.device.type != "cpu"
        self.momentum = cfg.weight_decay if cfg.authors_momentum else 0.9
        self.snapshot_steps = snapshot_steps  # keep the map after every step (the per-step curve)
        # Prefetch pays where the device works asynchronously; on the CPU the thread would only
        # take cores from the convolutions.
        self.prefetch = cfg.prefetch == "on" or (cfg.prefetch == "auto" and self.device.type == "cuda")
        self.views = TargetViews(self.device, cfg.scales)  # each target's views, one target ahead
        # Steps the host reads behind: on CUDA 1 (the stops and the non-finite check decided on the
        # device as masks; step k's figures read once step k+1 is queued, so the device never
        # waits for the host); on the CPU 0 (a read costs nothing there, and reading at once
        # spares the step a stopped image would otherwise compute for nothing).
        self.read_lag = (1 if self.device.type == "cuda" else 0) if read_lag is None else read_lag
        if self.read_lag not in (0, 1):
            raise ValueError(f"read_lag must be 0 or 1, got {read_lag}")
        self.group_size = cfg.group_size  # 0 until chosen (run)
        self.group_choice: Optional[dict] = None  # how G was chosen, when automatic
        self._affine: Optional[CAMHead] = None  # the bf16 vmap head (built when first needed)
        # group size -> the graphed other-images pass (cuda_graphs on CUDA only)
        self.graphs: Optional[dict] = None
        # the group's weights as rows of one tensor, stepped by one kernel (with graphs; made
        # once G is known)
        self.slots: Optional[WeightSlots] = None
        # why a capture failed (graphs are then off for the rest of the run); None while they work
        self.graph_error: Optional[str] = None
        if cfg.cuda_graphs and self.device.type == "cuda":
            self.graphs = {}
        elif cfg.cuda_graphs:
            warnings.warn(f"rib.cuda_graphs is for CUDA devices: ignored on {self.device.type}, "
                          f"which runs eagerly", stacklevel=2)

    def _graphs_on(self) -> bool:
        return self.graphs is not None and self.graph_error is None

    def _capture(self, fn, args, warmup: int = 3) -> Optional[Callable]:
        """``fn`` captured by :func:`capture_graphed`, with the worker threads at rest (the
        prefetch and lookahead preparations wait, :data:`~rib_ext.rib.staging.DEVICE_WORK`) and
        TF32 as the precision says (the captured backward too). A capture that fails turns graphs
        off for the rest of the run with a warning naming the cause, and returns None: the run goes
        on eagerly (the same maps). A stream left capturing cannot go on: that raises."""
        if self.graph_error is not None:
            return None
        try:
            with DEVICE_WORK.exclusive(), tf32_flags(self.precision):
                return capture_graphed(fn, args, warmup=warmup)
        except Exception as exc:  # noqa: BLE001 - any failure of the capture: eager from here on
            if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise
            self.graph_error = f"{type(exc).__name__}: {exc}"
            self.graphs.clear()
            warnings.warn(f"rib: CUDA graph capture failed ({self.graph_error}); graphs are off for "
                          f"the rest of this run, which goes on eagerly", RuntimeWarning, stacklevel=2)
            return None

    def _autocast(self):
        # autocast's cast cache must stay off where a CUDA graph may be captured
        return autocast(self.device, self.precision, cache_enabled=self.graphs is None)

    @torch.no_grad()
    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.stem(x.to(self.device, non_blocking=True).contiguous(memory_format=self.fmt))

    # -- per image ----------------------------------------------------------------------------
    @torch.no_grad()
    def _start(self, target: Target) -> _State:
        check_target(target, self.pool.labels.shape[1])
        views, label, keys = self.views.take(target)
        x2 = [self._stem(v) for v in views]
        slot = self.slots.take() if self.slots is not None else None
        params = (self.slots.leaves[slot] if slot is not None
                  else [p.clone().requires_grad_() for p in self.base])
        rng = image_generator(self.cfg.seed, target.index)
        others = self.pool.draws(rng, target.label, target.pool_index, self.cfg.disjoint_prob)
        alive = torch.ones((), dtype=torch.bool, device=self.device) if self.read_lag else None
        return _State(target, keys, label, x2, params, [None] * len(params), [None] * len(x2),
                      rng, others, alive=alive, slot=slot)

    def _cam(self, params: list, x2: torch.Tensor) -> torch.Tensor:
        """Raw CAMs [N, K, h, w] under one image's weights ``params``, float32 whatever the
        precision (the maps accumulate and the loss pools in float32)."""
        params = dict(zip(self.names, params))
        with self._autocast():
            cam = functional_call(self.head, (params, self.buffers), (x2,))
        return _at_least_float32(cam)

    def _other_cams(self, params: list[list], x2_split) -> list[torch.Tensor]:
        """The other images' CAMs under each image's own weights (``params``, one list per
        image): one call per image, or one ``vmap`` over the group's stacked weights (the crops
        share a size, the targets do not)."""
        if self.cfg.head_batching == "loop" or len(params) == 1:
            return [self._cam(ps, x2o) for ps, x2o in zip(params, x2_split)]
        stacked = [torch.stack(ps) for ps in zip(*params)]
        x2 = torch.stack(list(x2_split))
        module = self.head
        if self.precision == "bf16":
            # CPU autocast does not reach inside vmap, and vmap's batch-norm rule refuses a bf16
            # input with (batched) float32 affine parameters: cast as autocast would (convolution
            # weights and inputs to bf16) and run the fixed batch norms as their float32 affine
            # map, so the vmapped head computes what the loop's autocast head computes.
            stacked = [p.to(torch.bfloat16) if p.dim() == 5 else p for p in stacked]
            x2 = x2.to(torch.bfloat16)
            module = self._affine_head()

        def head(params, x2):
            return functional_call(module, (dict(zip(self.names, params)), self.buffers), (x2,))

        bf16 = bf16_convolutions() if self.precision == "bf16" else contextlib.nullcontext()
        with self._autocast(), bf16:
            cams = torch.func.vmap(head)(stacked, x2)
        return list(_at_least_float32(cams))

    def _affine_head(self) -> CAMHead:
        """A copy of the head whose fixed batch norms are :class:`AffineBatchNorm` (same names)."""
        if self._affine is None:
            self._affine = copy.deepcopy(self.head)
            for m in list(self._affine.modules()):
                for name, child in m.named_children():
                    if isinstance(child, nn.BatchNorm2d):
                        setattr(m, name, AffineBatchNorm(child))
        return self._affine

    def _scale_forward(self, params: list, x2: Sequence[torch.Tensor], s: int) -> torch.Tensor:
        """Scale ``s``'s CAMs under ``params``, differentiable when the scale feeds the loss."""
        with torch.set_grad_enabled(self.cfg.scales[s] in self.cfg.loss_scales):
            return self._cam(params, x2[s])

    def _scale_cam(self, st: _State, s: int, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scale ``s``'s CAMs [2, K, h, w] (differentiable when the scale feeds the loss), added
        to the image's accumulated map (only where the 0-d ``mask`` is True, when given)."""
        cam = st.graph_cams[s] if st.graph_cams is not None else self._scale_forward(st.params, st.x2, s)
        if st.acc[s] is None:
            # cam_flip_accumulate_ wants cam's accumulation dtype (float64 for float64 cams).
            st.acc[s] = cam.new_zeros(cam.shape[1:], dtype=cam.dtype)
        # A masked-out step adds exact zeros (ReLU of 0), whatever the CAMs hold, NaN included.
        add = cam if mask is None else torch.where(mask, cam.detach(), 0)
        ops.cam_flip_accumulate_(st.acc[s], add[0], add[1])
        return cam

    def _explosion(self, st: _State, cam: torch.Tensor) -> Optional[torch.Tensor]:
        """The explosion ratio of the step's scale-1.0 CAMs, on the device; None if not checked."""
        if st.queued < 1 or not self.cfg.stop_on_explosion:
            return None
        merged = ops.cam_flip_merge(cam[0].detach(), cam[1].detach())
        return explosion_ratio_tensor(merged, st.keys, self.cfg.explosion_threshold)

    def _target_pass(self, group: list[_State]):
        """Accumulate the group's maps for this step. Returns (per image its loss-scale CAMs, or
        None if the host knows its scale-1.0 map exploded; per image the device flag ``exploded``
        and the mask ``go`` of a step that updates, both None on early reads).

        Early reads (``read_lag`` 0): one host read of the explosion ratios, and an exploded image
        goes no further. Late reads: the decision stays on the device; an exploded image (or one
        already stopped) computes its step with its maps masked, and the update masks it out."""
        cfg = self.cfg
        late = self.read_lag > 0
        if self._graphs_on() and cfg.cuda_graph_targets:
            for st in group:
                graph = self._graphed_target(st)
                if graph is None:  # the capture failed: every image of the group eager
                    for other in group:
                        other.graph_cams = None
                    break
                st.graph_cams = graph(*st.x2, *st.params)
        first = [self._scale_cam(st, 0, st.alive if late else None) for st in group]
        ratios = [self._explosion(st, cam) for st, cam in zip(group, first)]
        if late:
            # float64: the host compares the float32 ratio, as a Python float, with the setting.
            exploded = [torch.zeros((), dtype=torch.bool, device=self.device) if r is None
                        else r.double() > cfg.explosion_ratio for r in ratios]
            go = [st.alive & ~e for st, e in zip(group, exploded)]
        else:
            checked = [r for r in ratios if r is not None]
            values = iter(torch.stack(checked).tolist() if checked else [])
            known = [r is not None and next(values) > cfg.explosion_ratio for r in ratios]
            exploded, go = [None] * len(group), [None] * len(group)
        out = []
        for i, (st, cam) in enumerate(zip(group, first)):
            if not late and known[i]:
                out.append(None)
                continue
            loss_cams = [cam] if cfg.scales[0] in cfg.loss_scales else []
            for s in range(1, len(cfg.scales)):
                cam_s = self._scale_cam(st, s, go[i])
                if cfg.scales[s] in cfg.loss_scales:
                    loss_cams.append(cam_s)
            out.append(loss_cams)
        for st in group:
            st.graph_cams = None  # the loss holds what it needs
        return out, exploded, go

    def _graphed_target(self, st: _State) -> Optional[Callable]:
        """The image's passes at every scale, forward and backward, captured on its first step
        (after one warm-up run, which makes the lazy initialisations) and replayed for the rest:
        CAMs per scale, differentiable at the loss scales. None if the capture failed."""
        if st.target_graph is None:
            n = len(st.x2)

            def passes(*args):
                return tuple(self._scale_forward(list(args[n:]), args[:n], s) for s in range(n))

            st.target_graph = self._capture(passes, (*st.x2, *st.params), warmup=1)
        return st.target_graph

    def _maps(self, st: _State, acc: Optional[list] = None) -> dict:
        return ops.finalize_maps(st.acc if acc is None else acc, st.target.image.shape[:2],
                                 st.keys.cpu().numpy())

    @torch.no_grad()
    def _add_final_map(self, st: _State) -> None:
        """The map of the weights after the last update, every scale (``cfg.final_map``)."""
        for s, x2 in enumerate(st.x2):
            cam = self._cam(st.params, x2)
            ops.cam_flip_accumulate_(st.acc[s], cam[0], cam[1])
        if self.snapshot_steps:
            st.snapshots.append(self._maps(st))

    def _finish(self, st: _State) -> Result:
        # The paper's sum runs to theta_K; an image that exploded made no update after its last map.
        if self.cfg.final_map and st.step > 0 and st.stop != STOP_EXPLOSION:
            self._add_final_map(st)
        # An exploded step added its scale-1.0 map only: the other scales hold one step fewer.
        maps = self._maps(st)
        record = {"name": st.target.name, "index": st.target.index, "steps": st.step,
                  "stop": st.stop, "target_logit_sums": [round(v, 4) for v in st.stats],
                  "final_target_logit_sum": round(st.stats[-1], 4) if st.stats else None,
                  "seconds": round(time.time() - st.t0, 3)}
        return Result(st.target.name, maps, record, st.snapshots)

    # -- a group step -------------------------------------------------------------------------
    def _draw(self, st: _State) -> list[dict]:
        return st.others.draw(self.cfg.num_others)

    @torch.no_grad()
    def _build(self, recipes: list[list[dict]]):
        return self.pool.stage(recipes)  # take() it on the stream of the step

    def _step(self, group: list[_State], executor: Optional[ThreadPoolExecutor] = None) -> _Readout:
        """Queue one step of ``group`` (images the host has not seen stop); returns the step's
        figures for :meth:`_read`, which the run reads ``read_lag`` steps later."""
        cfg = self.cfg
        late = self.read_lag > 0
        pending = None
        if self.slots is not None:
            # in slot order: the graph was captured on the slots' weights in that order
            group = sorted(group, key=lambda st: st.slot)
        if executor is not None:
            # Draw before the target pass, so the other images are built while the device works.
            # The same draws: the target pass uses no randomness, and an image that explodes now
            # is finished, so its one extra draw changes nothing.
            early = [self._draw(st) for st in group]
            pending = executor.submit(self._build, early)
        target_cams, exploded, go = self._target_pass(group)
        keep = [cams is not None for cams in target_cams]
        live = [st for st, k in zip(group, keep) if k]
        readout = _Readout(live, None, [st for st, k in zip(group, keep) if not k], [None] * len(live))
        if self.snapshot_steps:
            # Late reads: the maps as they are now, kept on the device until the step is read.
            readout.snapshots = [[a.clone() for a in st.acc] if late else self._maps(st)
                                 for st in live]
        if pending is not None:
            batches = [b for b, k in zip(pending.result().take(), keep) if k]
        else:
            batches = self._build([self._draw(st) for st in live]).take()
        target_cams = [cams for cams in target_cams if cams is not None]
        exploded = [e for e, k in zip(exploded, keep) if k]
        go = [g for g, k in zip(go, keep) if k]
        for st in group:
            st.queued += 1
        if not live:
            return readout
        images = torch.cat([b[0] for b in batches])
        other_terms = None
        if self._graphs_on() and len(live) == self.group_size:
            # The other images' terms of the loss come out of the graph (it holds their pass and
            # loss, forward and backward); each image's loss adds its own term last, as step_loss
            # does. None: the capture failed, and the step goes on eagerly.
            other_terms = self._graphed_other_losses(live, images, torch.cat([b[1] for b in batches]))
        if other_terms is not None:
            other_cams = None
            other_terms = other_terms.unbind(0)
        else:
            with self._fixed_shapes():
                x2_split = self._stem(images).split([len(b[0]) for b in batches])
                other_cams = self._other_cams([st.params for st in live], x2_split)
        total, stats, losses = 0, [], []
        for i, (st, cams, (_, other_labels)) in enumerate(zip(live, target_cams, batches)):
            if other_cams is None:
                loss, stat = step_loss(cams, st.label, None, None, cfg)
                loss = loss + other_terms[i]
            else:
                loss, stat = step_loss(cams, st.label, other_cams[i], other_labels, cfg)
            total = total + loss
            stats.append(stat)
            losses.append(loss.detach())
        all_params = [p for st in live for p in st.params]
        grads = self._grads(total, all_params, target_cams, other_cams)

        with torch.no_grad():
            # st.queued - 1: this step's index, the updates made so far if the image is alive
            factors = [max(0.0, 1.0 - (st.queued - 1) / cfg.steps) ** cfg.lr_power for st in live]
            if self.slots is not None:
                self.slots.step([st.slot for st in live], grads, go if late else [None] * len(live),
                                cfg.lr, factors, [st.queued == 1 for st in live], cfg.weight_decay,
                                self.momentum)
            else:
                self._update(live, all_params, grads, factors, go if late else None)
            readout.values = self._figures(live, exploded, stats, losses, go)
        if self.device.type == "cuda":
            # The figures to pinned memory behind this step's work; the host waits for this copy
            # only, when it reads them a step later.
            host = torch.empty(readout.values.shape, dtype=readout.values.dtype, pin_memory=True)
            host.copy_(readout.values, non_blocking=True)
            readout.values = host
            readout.event = torch.cuda.Event()
            readout.event.record()
        return readout

    def _update(self, live: list[_State], params: list, grads, factors: list[float],
                go: Optional[list]) -> None:
        """The eager SGD update of the images ``live`` (their weights ``params``, one list):
        masked by ``go`` on late reads, whole-group foreach passes (CUDA), or per parameter."""
        cfg = self.cfg
        lrs = [cfg.lr * m * factor for factor in factors for m in self.lr_mults]
        all_bufs = [b for st in live for b in st.bufs]
        if go is not None:
            masks = [g for g, st in zip(go, live) for _ in st.params]
            sgd_update_masked_(params, grads, all_bufs, lrs, cfg.weight_decay, self.momentum, masks)
        elif self.foreach:
            sgd_update_foreach_(params, grads, all_bufs, lrs, cfg.weight_decay, self.momentum)
        else:
            offset = 0
            for st in live:
                n = len(st.params)
                view = all_bufs[offset:offset + n]
                sgd_update_(st.params, grads[offset:offset + n], view,
                            lrs[offset:offset + n], cfg.weight_decay, self.momentum)
                all_bufs[offset:offset + n] = view
                offset += n
        offset = 0
        for st in live:
            st.bufs = all_bufs[offset:offset + len(st.params)]
            offset += len(st.params)

    def _graphed_other_losses(self, live: list[_State], images: torch.Tensor,
                              labels: torch.Tensor) -> Optional[torch.Tensor]:
        """Each image's other-images loss term [G], from the CUDA graph of this group size: the
        stem, the head, the loss, and their backward, captured on first use by
        :data:`capture_graphed` (``torch.cuda.make_graphed_callables``: warm-up on a side stream,
        then capture). The inputs (the crops, their labels and every image's weights) are copied
        into the graph's static buffers; the target's pass and the update run eagerly. None if
        the capture failed."""
        g, n = len(live), len(self.names)
        flat = [p for st in live for p in st.params]
        fn = self.graphs.get(g)
        if fn is None:
            cfg = self.cfg

            def others(images, labels, *flat):
                x2 = self._stem(images)
                params = [list(flat[i * n:(i + 1) * n]) for i in range(g)]
                cams = self._other_cams(params, x2.chunk(g))
                return torch.stack([group_loss(cam, lab, cfg)[0]
                                    for cam, lab in zip(cams, labels.chunk(g))])

            with self._fixed_shapes():
                fn = self._capture(others, (images, labels, *flat))
            if fn is None:
                return None
            self.graphs[g] = fn
        with self._fixed_shapes():
            return fn(images, labels, *flat)

    def _fixed_shapes(self):
        return cudnn_benchmark(True) if self.bench_others else contextlib.nullcontext()

    def _grads(self, total, params, target_cams, other_cams):
        """d total / d params: one backward, or with ``bench_others`` two, so that cuDNN times
        the other images' backward (fixed shapes) and not the target's (a new size per image):
        first to the CAMs, then from the target's CAMs and the other images' CAMs apart."""
        # The backward under the precision's TF32 flags, as the forward (float32: TF32 off for
        # cuDNN's convolution gradients too, which PyTorch otherwise allows).
        with tf32_flags(self.precision):
            return self._grads_in(total, params, target_cams, other_cams)

    def _grads_in(self, total, params, target_cams, other_cams):
        if not self.bench_others or other_cams is None:  # None: the graph replays its backward
            return torch.autograd.grad(total, params)
        t_cams = [c for cams in target_cams for c in cams]
        g = torch.autograd.grad(total, t_cams + list(other_cams))
        g_t = torch.autograd.grad(t_cams, params, g[:len(t_cams)])
        with cudnn_benchmark(True):
            g_o = torch.autograd.grad(list(other_cams), params, g[len(t_cams):])
        return torch._foreach_add(list(g_t), list(g_o))

    def _figures(self, live, exploded, stats, losses, go) -> torch.Tensor:
        """The step's [n, 3] float64 figures (exploded, stop statistic, loss); on late reads also
        each image's device stop decision: margin, explosion, non-finite (``alive`` goes False)."""
        cfg = self.cfg
        stat = torch.stack(stats).double()
        loss = torch.stack([x.double() for x in losses])
        if exploded[0] is None:
            flags = torch.zeros_like(stat)
        else:
            flags = torch.stack(exploded).double()
            stop = ~(torch.isfinite(stat) & torch.isfinite(loss))
            if cfg.stop_on_margin:
                stop |= stat > cfg.margin  # float64, as the host compares it
            for i, st in enumerate(live):
                st.alive = go[i] & ~stop[i]
        return torch.stack([flags, stat, loss], dim=1)

    def _read(self, readout: _Readout) -> None:
        """The host's read of one step: the records, stop reasons and snapshots of the images it
        finds still adapting (a row of an image seen stopped in an earlier step is left unread);
        raises :class:`NonFiniteLossError` as the step did, before any image is finished."""
        cfg = self.cfg
        for st in readout.exploded:
            st.stop = STOP_EXPLOSION
        rows = [(st, r, snap) for st, r, snap in zip(readout.states, readout.rows(), readout.snapshots)
                if st.stop is None]
        for st, (exploded, _, _), _ in rows:
            if exploded:
                st.stop = STOP_EXPLOSION
        updated = [(st, stat, loss, snap) for st, (exploded, stat, loss), snap in rows if not exploded]
        if not all(math.isfinite(stat) and math.isfinite(loss) for _, stat, loss, _ in updated):
            self._raise_non_finite(updated)
        for st, stat, _, snap in updated:
            if snap is not None:
                st.snapshots.append(snap if isinstance(snap, dict) else self._maps(st, snap))
            st.step += 1
            st.stats.append(stat)
            if cfg.stop_on_margin and stat > cfg.margin:
                st.stop = STOP_MARGIN
            elif st.step >= cfg.steps:
                st.stop = STOP_STEPS

    def _choose_group_size(self, largest: Optional[tuple]) -> int:
        """G for ``group_size=0``: on CUDA the largest G whose step fits the device's free memory
        (less a tenth for the allocator's slack; capped by ``group_memory_gb`` when positive),
        from one measured step at the size of the largest target, ``largest`` (H, W); on the CPU
        1 (the convolutions already use every core, and a group only adds memory).

        The measured step is eager. With ``cuda_graphs`` each image also costs (an estimate, on
        the safe side): its rows of the weight slots (weights, momentum and gradients, float32),
        and the graph's private memory pool, which keeps the captured pass's activations apart
        from the eager ones (counted as one more step of the image); with ``cuda_graph_targets``
        its own target graph's pool as well (one more step again)."""
        cfg = self.cfg
        if self.device.type != "cuda" or largest is None:
            self.group_choice = {"group_size": 1, "why": f"{self.device.type}: no gain from groups"}
            return 1
        step = self._probe_step_bytes(largest)
        graph_pools = slot_bytes = 0
        if self.graphs is not None:
            graph_pools = step * (2 if cfg.cuda_graph_targets else 1)
            slot_bytes = 3 * sum(p.numel() for p in self.base) * 4
        per_image = step + graph_pools + slot_bytes
        free = torch.cuda.mem_get_info(self.device)[0]
        budget = free * (1 - GROUP_MEMORY_SLACK)
        if cfg.group_memory_gb:
            budget = min(budget, cfg.group_memory_gb * 2**30)
        g = choose_group_size(per_image, budget)
        self.group_choice = {"group_size": g, "step_bytes_per_image": int(step),
                             "graph_pool_bytes_per_image": int(graph_pools),
                             "slot_bytes_per_image": int(slot_bytes),
                             "free_bytes": int(free), "budget_bytes": int(budget),
                             "largest_target": [int(largest[0]), int(largest[1])]}
        return g

    def _probe_step_bytes(self, size: tuple) -> int:
        """Device memory one image's step takes at target size ``size`` (its weights, maps and
        the step's activations): one step of a blank image of that size, measured, then freed."""
        k = len(self.pool.labels[0])
        label = np.zeros(k, np.float32)
        label[0] = 1.0
        probe = Target(0, "(group size probe)", np.zeros((*size, 3), np.uint8), label)
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        st = self._start(probe)
        self._read(self._step([st]))
        torch.cuda.synchronize(self.device)
        used = torch.cuda.max_memory_allocated(self.device) - base
        del st
        torch.cuda.empty_cache()
        return int(used)

    def _raise_non_finite(self, updated: list) -> None:
        bad = [f"{st.target.name} (loss {loss:.4g}, target logit sum {stat:.4g})"
               for st, stat, loss, _ in updated if not (math.isfinite(stat) and math.isfinite(loss))]
        step = updated[0][0].step + 1
        lr = self.cfg.lr * max(0.0, 1.0 - updated[0][0].step / self.cfg.steps) ** self.cfg.lr_power
        raise NonFiniteLossError(f"rib: step {step} of image {', '.join(bad)} is not finite with "
                                 f"learning rate {lr:g}: the adaptation diverged; lower the RIB "
                                 f"learning rate (no map is written for it)")

    def run(self, targets: Iterable[Target],
            on_result: Optional[Callable[[Result], None]] = None,
            largest: Optional[tuple] = None) -> list[Result]:
        """Adapt every target. Without ``on_result`` the results are returned, in finishing
        order; with it, each finished image goes to ``on_result`` as soon as it is done and is not
        kept (memory stays bounded at any dataset size): the list returned is then empty.
        ``largest``: (H, W) of the largest target, for the automatic group size (``group_size``
        0 on CUDA); found here when ``targets`` is a list, else the first target's size."""
        if largest is None and self.group_size == 0 and self.device.type == "cuda":
            if isinstance(targets, (list, tuple)):
                largest = max((t.image.shape[:2] for t in targets), key=lambda hw: hw[0] * hw[1],
                              default=None)
            else:
                targets = iter(targets)
                first = next(targets, None)
                if first is not None:
                    largest = first.image.shape[:2]
                    log.warning("RIB group size measured on the first target's size %s: pass "
                                "run(largest=) to size G for the largest", largest)
                    targets = itertools.chain([first], targets)
        queue = self.views.lookahead(targets, self.prefetch)  # the next target prepared meanwhile
        active: list[_State] = []
        results = []
        unread: deque[_Readout] = deque()
        exhausted = False
        executor = ThreadPoolExecutor(1, thread_name_prefix="rib-prefetch") if self.prefetch else None
        try:
            while True:
                if self.group_size == 0:  # automatic: measured at the largest target's size
                    self.group_size = self._choose_group_size(largest)
                    log.info("RIB group size %d (%s)", self.group_size, self.group_choice)
                if self.graphs is not None and self.slots is None:
                    self.slots = WeightSlots(self.base, self.lr_mults, self.group_size)
                stepping = [st for st in active if self._to_step(st)]
                # With weight slots an image whose stop is not read yet keeps its slot: the
                # group waits one step for that read rather than hold more than G slots.
                while (not exhausted and len(stepping) < max(1, self.group_size)
                       and (self.slots is None or self.slots.free)):
                    nxt = next(queue, None)
                    if nxt is None:
                        exhausted = True
                    else:
                        active.append(self._start(nxt))
                        stepping.append(active[-1])
                if stepping:
                    unread.append(self._step(stepping, executor))
                # Read the steps ``read_lag`` behind the one just queued (all, once nothing is left
                # to queue).
                while unread and (len(unread) > self.read_lag or not stepping):
                    self._read(unread.popleft())
                for st in [s for s in active if s.stop is not None]:
                    active.remove(st)
                    res = self._finish(st)
                    st.target_graph = None  # its graph's memory back to the allocator
                    if st.slot is not None:
                        self.slots.give_back(st.slot)
                    if on_result is not None:
                        on_result(res)
                    else:
                        results.append(res)
                if not active and exhausted:
                    return results
        finally:
            if executor is not None:
                executor.shutdown(wait=True)

    def _to_step(self, st: _State) -> bool:
        """Whether the host queues another step for ``st``: not seen stopped, fewer than K queued."""
        return st.stop is None and st.queued < self.cfg.steps
