"""The RIB engine: many target images adapted at once, each with its own functional weight copy.

Per image the state is a copy of only the trainable weights (stage 3, stage 4 with their fixed-BN
affine parameters, classifier) and its SGD momentum buffers. The stem (stages 1-2) is shared and
runs without gradients: the target's stage-2 features are computed once per image, the other
images' once per step for the whole group in one batch. A group of up to ``cfg.group_size``
images steps together (one autograd call for the group's summed losses: the weights are disjoint,
so each image's gradient is its own); a finished image leaves and the next one takes its place.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from rib_ext import ops
from rib_ext.config import RIBConfig
from rib_ext.data.transforms import multiscale_flip_views
from rib_ext.rib.losses import step_loss
from rib_ext.rib.sampling import OtherImages, OtherStream, image_generator
from rib_ext.rib.stops import STOP_EXPLOSION, STOP_MARGIN, STOP_STEPS, explosion_ratio
from rib_ext.training import NonFiniteLossError


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
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.pool = pool
        self.head = CAMHead(self.model)
        names, base = zip(*[(n, p) for n, p in self.head.named_parameters() if p.requires_grad])
        self.names = list(names)
        self.base = [p.detach() for p in base]
        self.lr_mults = [cfg.classifier_lr_mult if n.startswith("classifier.") else 1.0
                         for n in self.names]
        self.buffers = {n: b for n, b in self.head.named_buffers()}
        self.momentum = cfg.weight_decay if cfg.authors_momentum else 0.9
        self.snapshot_steps = snapshot_steps  # keep the map after every step (the per-step curve)

    # -- per image ----------------------------------------------------------------------------
    @torch.no_grad()
    def _start(self, target: Target) -> _State:
        views = multiscale_flip_views(target.image, self.cfg.scales)
        x2 = [self.model.stem(v.to(self.device)) for v in views]
        keys = torch.as_tensor(np.nonzero(target.label)[0], device=self.device)
        label = torch.as_tensor(target.label, device=self.device, dtype=torch.float32)
        params = [p.clone().requires_grad_() for p in self.base]
        rng = image_generator(self.cfg.seed, target.index)
        others = self.pool.stream(rng, target.label, target.pool_index, self.cfg.disjoint_prob)
        return _State(target, keys, label, x2, params, [None] * len(params), [None] * len(x2),
                      rng, others)

    def _cam(self, st: _State, x2: torch.Tensor) -> torch.Tensor:
        params = dict(zip(self.names, st.params))
        return functional_call(self.head, (params, self.buffers), (x2,))

    def _other_cams(self, live: list[_State], x2_split) -> list[torch.Tensor]:
        """The other images' CAMs under each image's own weights: one call per image, or one
        ``vmap`` over the group's stacked weights (the crops share a size, the targets do not)."""
        if self.cfg.head_batching == "loop" or len(live) == 1:
            return [self._cam(st, x2o) for st, x2o in zip(live, x2_split)]
        stacked = [torch.stack(ps) for ps in zip(*(st.params for st in live))]

        def head(params, x2):
            return functional_call(self.head, (dict(zip(self.names, params)), self.buffers), (x2,))

        return list(torch.func.vmap(head)(stacked, torch.stack(list(x2_split))))

    def _target_pass(self, st: _State):
        """Accumulate this step's maps; return the loss-scale CAMs, or None if the map exploded."""
        cfg = self.cfg
        loss_cams = []
        for s, (scale, x2) in enumerate(zip(cfg.scales, st.x2)):
            with torch.set_grad_enabled(scale in cfg.loss_scales):
                cam = self._cam(st, x2)
            if st.acc[s] is None:
                # cam_flip_accumulate_ wants cam's accumulation dtype (float64 for float64 cams).
                acc_dtype = torch.promote_types(cam.dtype, torch.float32)
                st.acc[s] = cam.new_zeros(cam.shape[1:], dtype=acc_dtype)
            ops.cam_flip_accumulate_(st.acc[s], cam[0], cam[1])
            if s == 0 and st.step >= 1 and cfg.stop_on_explosion:
                merged = ops.cam_flip_merge(cam[0].detach(), cam[1].detach())
                if explosion_ratio(merged, st.keys, cfg.explosion_threshold) > cfg.explosion_ratio:
                    return None
            if scale in cfg.loss_scales:
                loss_cams.append(cam)
        if self.snapshot_steps:
            st.snapshots.append(self._maps(st))
        return loss_cams

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
    def _step(self, group: list[_State]) -> None:
        cfg = self.cfg
        live, target_cams, recipes = [], [], []
        for st in group:
            cams = self._target_pass(st)
            if cams is None:
                st.stop = STOP_EXPLOSION
                continue
            live.append(st)
            target_cams.append(cams)
            recipes.append(st.others.draw(cfg.num_others))
        if not live:
            return
        with torch.no_grad():
            batches = [self.pool.batch(r) for r in recipes]
            x2_others = self.model.stem(torch.cat([b[0] for b in batches]))
        x2_split = x2_others.split([len(r) for r in recipes])

        other_cams = self._other_cams(live, x2_split)
        total, stats, losses = 0, [], []
        for st, cams, cam_o, (_, other_labels) in zip(live, target_cams, other_cams, batches):
            loss, stat = step_loss(cams, st.label, cam_o, other_labels, cfg)
            total = total + loss
            stats.append(stat)
            losses.append(loss)
        # One host sync per group step; a diverged image would otherwise end as a NaN-born map.
        if not all(math.isfinite(s) for s in stats) or not bool(torch.isfinite(total)):
            self._raise_non_finite(live, losses, stats)
        all_params = [p for st in live for p in st.params]
        grads = torch.autograd.grad(total, all_params)

        offset = 0
        with torch.no_grad():
            for st, stat in zip(live, stats):
                n = len(st.params)
                factor = max(0.0, 1.0 - st.step / cfg.steps) ** cfg.lr_power
                lrs = [cfg.lr * m * factor for m in self.lr_mults]
                sgd_update_(st.params, grads[offset:offset + n], st.bufs, lrs, cfg.weight_decay,
                            self.momentum)
                offset += n
                st.step += 1
                st.stats.append(stat)
                if cfg.stop_on_margin and stat > cfg.margin:
                    st.stop = STOP_MARGIN
                elif st.step >= cfg.steps:
                    st.stop = STOP_STEPS

    def _raise_non_finite(self, live: list[_State], losses: list, stats: list[float]) -> None:
        bad = [f"{st.target.name} (loss {float(loss):.4g}, target logit sum {stat:.4g})"
               for st, loss, stat in zip(live, losses, stats)
               if not (math.isfinite(stat) and math.isfinite(float(loss)))]
        step = live[0].step + 1
        lr = self.cfg.lr * max(0.0, 1.0 - live[0].step / self.cfg.steps) ** self.cfg.lr_power
        raise NonFiniteLossError(f"rib: step {step} of image {', '.join(bad)} is not finite with "
                                 f"learning rate {lr:g}: the adaptation diverged; lower the RIB "
                                 f"learning rate (no map is written for it)")

    def run(self, targets: Iterable[Target],
            on_result: Optional[Callable[[Result], None]] = None) -> list[Result]:
        """Adapt every target; ``on_result`` gets each finished image as soon as it is done
        (results are also returned, in finishing order)."""
        queue = iter(targets)
        active: list[_State] = []
        results = []
        exhausted = False
        while True:
            while not exhausted and len(active) < max(1, self.cfg.group_size):
                nxt = next(queue, None)
                if nxt is None:
                    exhausted = True
                else:
                    active.append(self._start(nxt))
            if not active:
                return results
            self._step(active)
            for st in [s for s in active if s.stop is not None]:
                active.remove(st)
                res = self._finish(st)
                results.append(res)
                if on_result is not None:
                    on_result(res)
