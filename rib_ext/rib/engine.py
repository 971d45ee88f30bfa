"""The RIB engine: many target images adapted at once, each with its own functional weight copy.

Per image the state is a copy of only the trainable weights (stage 3, stage 4 with their fixed-BN
affine parameters, classifier) and its SGD momentum buffers. The stem (stages 1-2) is shared and
runs without gradients: the target's stage-2 features are computed once per image, the other
images' once per step for the whole group in one batch. A group of up to ``cfg.group_size``
images steps together (one autograd call for the group's summed losses: the weights are disjoint,
so each image's gradient is its own); a finished image leaves and the next one takes its place.

Speed settings (:class:`RIBConfig`): bf16 autocast and channels_last for the convolutions, the stem
with its batch norms folded in, the SGD update as ``torch._foreach_*`` over the whole group, host
synchronisation only twice per group step (the explosion ratios, then the margin statistics), the
other images built in a background thread while the device runs the target pass, G chosen from a
memory budget (``group_size=0``).
"""
from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from rib_ext import ops
from rib_ext.config import RIBConfig
from rib_ext.precision import (apply_backend_settings, autocast, check_precision, fold_batch_norms,
                               memory_format)
from rib_ext.rib.losses import step_loss
from rib_ext.rib.sampling import OtherImages, OtherStream, image_generator
from rib_ext.rib.targets import TargetViews
from rib_ext.rib.stops import STOP_EXPLOSION, STOP_MARGIN, STOP_STEPS, explosion_ratio_tensor
from rib_ext.training import NonFiniteLossError

log = logging.getLogger("rib_ext.rib")


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """bf16 autocast output back to float32; float32 and float64 (the exactness tests) unchanged."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class CAMHead(nn.Module):
    """Stages 3-4 and the 1x1 classifier of a CAMNet (shared modules): what RIB adapts."""

    def __init__(self, model):
        super().__init__()
        self.stage3, self.stage4, self.classifier = model.stage3, model.stage4, model.classifier

    def forward(self, x2: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.stage4(self.stage3(x2)), self.classifier.weight)


@dataclass
class Target:
    """One image to adapt: what it is, and (for the engine) its adaptation state."""

    index: int  # position in the full image list: seeds its random draws
    name: str
    image: np.ndarray  # uint8 [H, W, 3]
    label: np.ndarray  # float32 [K]
    pool_index: Optional[int] = None  # its own index in the other-image pool, never drawn for it


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
    others: Optional[OtherStream] = None  # this image's other images, one permutation of its pool
    step: int = 0
    stop: Optional[str] = None
    stats: list = field(default_factory=list)
    snapshots: list = field(default_factory=list)  # maps after each step (snapshot_steps only)
    t0: float = field(default_factory=time.time)


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


def sgd_update_foreach_(params, grads, bufs, lrs, weight_decay: float, momentum: float) -> None:
    """:func:`sgd_update_` over any number of parameters (a whole group's) in a few
    ``torch._foreach_*`` calls: the same operations per element, so the same result bit for bit."""
    if not params:
        return
    d = torch._foreach_add(list(grads), params, alpha=weight_decay) if weight_decay else list(grads)
    if momentum:
        old = [i for i, b in enumerate(bufs) if b is not None]
        for i, b in enumerate(bufs):
            if b is None:
                bufs[i] = torch.clone(d[i]).detach()
        if old:
            kept = [bufs[i] for i in old]
            torch._foreach_mul_(kept, momentum)
            torch._foreach_add_(kept, [d[i] for i in old])
        d = list(bufs)
    by_lr: dict[float, list[int]] = {}
    for i, lr in enumerate(lrs):  # one call per learning rate: alpha is one scalar per call
        by_lr.setdefault(float(lr), []).append(i)
    for lr, idx in by_lr.items():
        torch._foreach_add_([params[i] for i in idx], [d[i] for i in idx], alpha=-lr)


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
                 snapshot_steps: bool = False):
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
        apply_backend_settings(self.device, cfg.cudnn_benchmark)
        self.model = model.to(self.device).eval()
        self.pool = pool
        self.head = CAMHead(self.model)
        # The stem never trains: a copy with its batch norms folded into the convolutions (the
        # model itself stays as it was).
        stem = nn.Sequential(self.model.stage1, self.model.stage2)
        self.stem = (fold_batch_norms(stem) if cfg.fold_stem else stem).to(memory_format=self.fmt)
        names, base = zip(*[(n, p) for n, p in self.head.named_parameters() if p.requires_grad])
        self.names = list(names)
        # clone() keeps the memory format, so every image's weight copy is channels_last too.
        self.base = [p.detach().contiguous(memory_format=self.fmt) if p.dim() == 4 else p.detach()
                     for p in base]
        self.lr_mults = [cfg.classifier_lr_mult if n.startswith("classifier.") else 1.0
                         for n in self.names]
        self.buffers = {n: b for n, b in self.head.named_buffers()}
        self.momentum = cfg.weight_decay if cfg.authors_momentum else 0.9
        self.snapshot_steps = snapshot_steps  # keep the map after every step (the per-step curve)
        # Prefetch pays where the device works asynchronously; on the CPU the thread would only
        # take cores from the convolutions.
        self.prefetch = cfg.prefetch == "on" or (cfg.prefetch == "auto" and self.device.type == "cuda")
        self.views = TargetViews(self.device, cfg.scales)  # each target's views, one target ahead
        self.group_size = cfg.group_size  # 0 until chosen (run)
        self.group_choice: Optional[dict] = None  # how G was chosen, when automatic

    def _autocast(self):
        return autocast(self.device, self.precision)

    @torch.no_grad()
    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.stem(x.to(self.device, non_blocking=True).contiguous(memory_format=self.fmt))

    # -- per image ----------------------------------------------------------------------------
    @torch.no_grad()
    def _start(self, target: Target) -> _State:
        views, label, keys = self.views.take(target)
        x2 = [self._stem(v) for v in views]
        params = [p.clone().requires_grad_() for p in self.base]
        rng = image_generator(self.cfg.seed, target.index)
        others = self.pool.stream(rng, target.label, target.pool_index, self.cfg.disjoint_prob)
        return _State(target, keys, label, x2, params, [None] * len(params), [None] * len(x2),
                      rng, others)

    def _cam(self, st: _State, x2: torch.Tensor) -> torch.Tensor:
        """Raw CAMs [N, K, h, w] under the image's weights, float32 whatever the precision (the
        maps accumulate and the loss pools in float32)."""
        params = dict(zip(self.names, st.params))
        with self._autocast():
            cam = functional_call(self.head, (params, self.buffers), (x2,))
        return _at_least_float32(cam)

    def _other_cams(self, live: list[_State], x2_split) -> list[torch.Tensor]:
        """The other images' CAMs under each image's own weights: one call per image, or one
        ``vmap`` over the group's stacked weights (the crops share a size, the targets do not)."""
        if self.cfg.head_batching == "loop" or len(live) == 1:
            return [self._cam(st, x2o) for st, x2o in zip(live, x2_split)]
        stacked = [torch.stack(ps) for ps in zip(*(st.params for st in live))]

        def head(params, x2):
            return functional_call(self.head, (dict(zip(self.names, params)), self.buffers), (x2,))

        with self._autocast():
            cams = torch.func.vmap(head)(stacked, torch.stack(list(x2_split)))
        return list(_at_least_float32(cams))

    def _scale_cam(self, st: _State, s: int) -> torch.Tensor:
        """Scale ``s``'s CAMs [2, K, h, w] (differentiable when the scale feeds the loss), added
        to the image's accumulated map."""
        with torch.set_grad_enabled(self.cfg.scales[s] in self.cfg.loss_scales):
            cam = self._cam(st, st.x2[s])
        if st.acc[s] is None:
            # cam_flip_accumulate_ wants cam's accumulation dtype (float64 for float64 cams).
            st.acc[s] = cam.new_zeros(cam.shape[1:], dtype=cam.dtype)
        ops.cam_flip_accumulate_(st.acc[s], cam[0], cam[1])
        return cam

    def _explosion(self, st: _State, cam: torch.Tensor) -> Optional[torch.Tensor]:
        """The explosion ratio of the step's scale-1.0 CAMs, on the device; None if not checked."""
        if st.step < 1 or not self.cfg.stop_on_explosion:
            return None
        merged = ops.cam_flip_merge(cam[0].detach(), cam[1].detach())
        return explosion_ratio_tensor(merged, st.keys, self.cfg.explosion_threshold)

    def _target_pass(self, group: list[_State]) -> list:
        """Accumulate the group's maps for this step: per image its loss-scale CAMs, or None if
        its scale-1.0 map exploded (then only that map was added). One host read for the group."""
        cfg = self.cfg
        first = [self._scale_cam(st, 0) for st in group]
        ratios = [self._explosion(st, cam) for st, cam in zip(group, first)]
        checked = [r for r in ratios if r is not None]
        values = iter(torch.stack(checked).tolist() if checked else [])
        out = []
        for st, cam, ratio in zip(group, first, ratios):
            if ratio is not None and next(values) > cfg.explosion_ratio:
                out.append(None)
                continue
            loss_cams = [cam] if cfg.scales[0] in cfg.loss_scales else []
            for s in range(1, len(cfg.scales)):
                cam_s = self._scale_cam(st, s)
                if cfg.scales[s] in cfg.loss_scales:
                    loss_cams.append(cam_s)
            if self.snapshot_steps:
                st.snapshots.append(self._maps(st))
            out.append(loss_cams)
        return out

    def _maps(self, st: _State) -> dict:
        return ops.finalize_maps(st.acc, st.target.image.shape[:2], st.keys.cpu().numpy())

    def _finish(self, st: _State) -> Result:
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

    def _step(self, group: list[_State], executor: Optional[ThreadPoolExecutor] = None) -> None:
        cfg = self.cfg
        pending = None
        if executor is not None:
            # Draw before the target pass, so the other images are built while the device works.
            # The same draws: the target pass uses no randomness, and an image that explodes now
            # is finished, so its one extra draw changes nothing.
            early = [self._draw(st) for st in group]
            pending = executor.submit(self._build, early)
        target_cams = self._target_pass(group)
        live = [st for st, cams in zip(group, target_cams) if cams is not None]
        for st, cams in zip(group, target_cams):
            if cams is None:
                st.stop = STOP_EXPLOSION
        if pending is not None:
            batches = [b for b, cams in zip(pending.result().take(), target_cams) if cams is not None]
        else:
            batches = self._build([self._draw(st) for st in live]).take()
        target_cams = [cams for cams in target_cams if cams is not None]
        if not live:
            return
        x2_others = self._stem(torch.cat([b[0] for b in batches]))
        x2_split = x2_others.split([len(b[0]) for b in batches])

        other_cams = self._other_cams(live, x2_split)
        total, stats, losses = 0, [], []
        for st, cams, cam_o, (_, other_labels) in zip(live, target_cams, other_cams, batches):
            loss, stat = step_loss(cams, st.label, cam_o, other_labels, cfg)
            total = total + loss
            stats.append(stat)
            losses.append(loss)
        all_params = [p for st in live for p in st.params]
        grads = torch.autograd.grad(total, all_params)

        with torch.no_grad():
            lrs = []
            for st in live:
                factor = max(0.0, 1.0 - st.step / cfg.steps) ** cfg.lr_power
                lrs += [cfg.lr * m * factor for m in self.lr_mults]
            if cfg.foreach_update:
                all_bufs = [b for st in live for b in st.bufs]
                sgd_update_foreach_(all_params, grads, all_bufs, lrs, cfg.weight_decay,
                                    self.momentum)
                offset = 0
                for st in live:
                    st.bufs = all_bufs[offset:offset + len(st.params)]
                    offset += len(st.params)
            else:
                offset = 0
                for st in live:
                    n = len(st.params)
                    sgd_update_(st.params, grads[offset:offset + n], st.bufs,
                                lrs[offset:offset + n], cfg.weight_decay, self.momentum)
                    offset += n
        # The step's one read of the statistics, after the update is queued. A diverged image
        # would otherwise end as a NaN-born map; the run stops here, so the update does not matter.
        values = torch.stack([*stats, total.detach().float()]).tolist()
        stats = values[:-1]
        if not all(math.isfinite(v) for v in values):
            self._raise_non_finite(live, losses, stats)
        for st, stat in zip(live, stats):
            st.step += 1
            st.stats.append(stat)
            if cfg.stop_on_margin and stat > cfg.margin:
                st.stop = STOP_MARGIN
            elif st.step >= cfg.steps:
                st.stop = STOP_STEPS

    def _choose_group_size(self, first: Optional[_State]) -> int:
        """G for ``group_size=0``: on CUDA the largest G whose step fits ``group_memory_gb``,
        from one measured step of the first image; on the CPU 1 (the convolutions already use
        every core, and a group only adds memory)."""
        cfg = self.cfg
        if self.device.type != "cuda" or first is None:
            self.group_choice = {"group_size": 1, "why": f"{self.device.type}: no gain from groups"}
            return 1
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._step([first])
        torch.cuda.synchronize(self.device)
        per_image = torch.cuda.max_memory_allocated(self.device) - base
        g = choose_group_size(per_image, cfg.group_memory_gb * 2**30)
        self.group_choice = {"group_size": g, "step_bytes_per_image": int(per_image),
                             "budget_bytes": int(cfg.group_memory_gb * 2**30)}
        return g

    def _raise_non_finite(self, live: list[_State], losses: list, stats: list[float]) -> None:
        bad = [f"{st.target.name} (loss {float(loss.detach()):.4g}, target logit sum {stat:.4g})"
               for st, loss, stat in zip(live, losses, stats)
               if not (math.isfinite(stat) and math.isfinite(float(loss)))]
        step = live[0].step + 1
        lr = self.cfg.lr * max(0.0, 1.0 - live[0].step / self.cfg.steps) ** self.cfg.lr_power
        raise NonFiniteLossError(f"rib: step {step} of image {', '.join(bad)} is not finite with "
                                 f"learning rate {lr:g}: the adaptation diverged; lower the RIB "
                                 f"learning rate (no map is written for it)")

    def run(self, targets: Iterable[Target],
            on_result: Optional[Callable[[Result], None]] = None) -> list[Result]:
        """Adapt every target. Without ``on_result`` the results are returned, in finishing
        order; with it, each finished image goes to ``on_result`` as soon as it is done and is not
        kept (memory stays bounded at any dataset size): the list returned is then empty."""
        queue = self.views.lookahead(targets, self.prefetch)  # the next target prepared meanwhile
        active: list[_State] = []
        results = []
        exhausted = False
        executor = ThreadPoolExecutor(1, thread_name_prefix="rib-prefetch") if self.prefetch else None
        try:
            while True:
                if self.group_size == 0:  # automatic: measure a step of the first image alone
                    nxt = next(queue, None)
                    active = [self._start(nxt)] if nxt is not None else []
                    exhausted = nxt is None
                    self.group_size = self._choose_group_size(active[0] if active else None)
                    log.info("RIB group size %d (%s)", self.group_size, self.group_choice)
                while not exhausted and len(active) < max(1, self.group_size):
                    nxt = next(queue, None)
                    if nxt is None:
                        exhausted = True
                    else:
                        active.append(self._start(nxt))
                if not active:
                    return results
                if not all(st.stop is not None for st in active):
                    self._step([st for st in active if st.stop is None], executor)
                for st in [s for s in active if s.stop is not None]:
                    active.remove(st)
                    res = self._finish(st)
                    if on_result is not None:
                        on_result(res)
                    else:
                        results.append(res)
        finally:
            if executor is not None:
                executor.shutdown(wait=True)
