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
device), the other images built in a background thread while the device runs the target pass, G
chosen from a memory budget (``group_size=0``), and on CUDA ``cuda_graphs``: the other images'
pass replayed from a graph per G, the group's weights in :class:`~rib_ext.rib.slots.WeightSlots`
stepped by one kernel, and with ``cuda_graph_targets`` each target's passes replayed from its own
graph (:mod:`rib_ext.rib.graphs`).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Optional, Sequence

import torch

from rib_ext import ops
from rib_ext.config import RIBConfig
from rib_ext.precision import (autocast, check_precision, cudnn_benchmark, fold_stem,
                               memory_format)
from rib_ext.rib.group_size import automatic_group_size, largest_target_size, measure_step_bytes
from rib_ext.rib.graphs import capture_or_error, other_losses_pass, target_passes
from rib_ext.rib.head import CAMHead, FunctionalHead
from rib_ext.rib.losses import group_grads, step_loss
from rib_ext.rib.readout import Readout, read_step, step_figures
from rib_ext.rib.sampling import OtherImages, image_generator
from rib_ext.rib.slots import WeightSlots
from rib_ext.rib.state import ImageState, Result, result_of
from rib_ext.rib.stops import STOP_EXPLOSION, explosion_ratio_tensor
from rib_ext.rib.targets import Target, TargetViews, check_target
from rib_ext.sgd import poly_factor, sgd_momentum, sgd_update_, sgd_update_foreach_

log = logging.getLogger("rib_ext.rib")


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
        # model itself stays as it was); a refusal names the model's family.
        stem, family = self.model.stem_module(), getattr(self.model, "family", type(model).__name__)
        self.stem = (fold_stem(stem, family) if cfg.fold_stem else stem).to(memory_format=self.fmt)
        names, base = zip(*[(n, p) for n, p in self.head.named_parameters() if p.requires_grad])
        self.names = list(names)
        # clone() keeps the memory format, so every image's weight copy is channels_last too.
        self.base = [p.detach().contiguous(memory_format=self.fmt) if p.dim() == 4 else p.detach()
                     for p in base]
        self.lr_mults = [cfg.classifier_lr_mult if n.startswith("classifier.") else 1.0
                         for n in self.names]
        self.heads = FunctionalHead(self.head, self.names, self.precision, cfg.head_batching,
                                    self._autocast)
        # The group's update in whole-group foreach passes on CUDA (few launches); on the CPU
        # parameter by parameter: each stays in cache through its update, 3x faster there than
        # whole-group passes, the same bits (benchmarks/bench_sgd.py).
        self.foreach = cfg.foreach_update and self.device.type != "cpu"
        self.momentum = sgd_momentum(cfg.weight_decay, 0.9, cfg.authors_momentum)
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
        """``fn`` captured (:func:`~rib_ext.rib.graphs.capture_or_error`). A capture that fails
        turns graphs off for the rest of the run with a warning naming the cause, and returns
        None: the run goes on eagerly (the same maps)."""
        if self.graph_error is not None:
            return None
        graphed, self.graph_error = capture_or_error(fn, args, warmup, self.precision, self.device)
        if self.graph_error is not None:
            self.graphs.clear()
            warnings.warn(f"rib: CUDA graph capture failed ({self.graph_error}); graphs are off for "
                          f"the rest of this run, which goes on eagerly", RuntimeWarning, stacklevel=2)
        return graphed

    def _autocast(self):
        # autocast's cast cache must stay off where a CUDA graph may be captured
        return autocast(self.device, self.precision, cache_enabled=self.graphs is None)

    @torch.no_grad()
    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.stem(x.to(self.device, non_blocking=True).contiguous(memory_format=self.fmt))

    # -- per image ----------------------------------------------------------------------------
    @torch.no_grad()
    def _start(self, target: Target) -> ImageState:
        check_target(target, self.pool.labels.shape[1])
        views, label, keys = self.views.take(target)
        x2 = [self._stem(v) for v in views]
        slot = self.slots.take() if self.slots is not None else None
        params = (self.slots.leaves[slot] if slot is not None
                  else [p.clone().requires_grad_() for p in self.base])
        rng = image_generator(self.cfg.seed, target.index)
        others = self.pool.draws(rng, target.label, target.pool_index, self.cfg.disjoint_prob)
        adapting = torch.ones((), dtype=torch.bool, device=self.device) if self.read_lag else None
        return ImageState(target, keys, label, x2, params, [None] * len(params),
                          [None] * len(x2), rng, others, adapting=adapting, slot=slot)

    def _scale_forward(self, params: list, x2: Sequence[torch.Tensor], s: int) -> torch.Tensor:
        """Scale ``s``'s CAMs under ``params``, differentiable when the scale feeds the loss."""
        with torch.set_grad_enabled(self.cfg.scales[s] in self.cfg.loss_scales):
            return self.heads.cam(params, x2[s])

    def _scale_cam(self, st: ImageState, s: int, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
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

    def _explosion(self, st: ImageState, cam: torch.Tensor) -> Optional[torch.Tensor]:
        """The explosion ratio of the step's scale-1.0 CAMs, on the device; None if not checked."""
        if st.queued < 1 or not self.cfg.stop_on_explosion:
            return None
        merged = ops.cam_flip_merge(cam[0].detach(), cam[1].detach())
        return explosion_ratio_tensor(merged, st.keys, self.cfg.explosion_threshold)

    def _target_pass(self, group: list[ImageState]):
        """Accumulate the group's maps for this step. Returns (per image its loss-scale CAMs, or
        None if the host knows its scale-1.0 map exploded; per image the device flag ``exploded``
        and ``updates``, a 0-d bool on the device: the step updates its weights and maps (still
        adapting, not exploded now); both None on early reads).

        Early reads (``read_lag`` 0): one host read of the explosion ratios, and an exploded image
        goes no further. Late reads: the decision stays on the device; an exploded image (or one
        already stopped) computes its step with its maps masked, and the update masks it out."""
        cfg = self.cfg
        late = self.read_lag > 0
        if self._graphs_on() and cfg.cuda_graph_targets:
            for st in group:
                if st.target_graph is None:  # captured on its first step, replayed for the rest
                    st.target_graph = self._capture(target_passes(self._scale_forward, len(st.x2)),
                                                    (*st.x2, *st.params), warmup=1)
                graph = st.target_graph
                if graph is None:  # the capture failed: every image of the group eager
                    for other in group:
                        other.graph_cams = None
                    break
                st.graph_cams = graph(*st.x2, *st.params)
        first = [self._scale_cam(st, 0, st.adapting if late else None) for st in group]
        ratios = [self._explosion(st, cam) for st, cam in zip(group, first)]
        if late:
            # float64: the host compares the float32 ratio, as a Python float, with the setting.
            exploded = [torch.zeros((), dtype=torch.bool, device=self.device) if r is None
                        else r.double() > cfg.explosion_ratio for r in ratios]
            updates = [st.adapting & ~e for st, e in zip(group, exploded)]
        else:
            checked = [r for r in ratios if r is not None]
            values = iter(torch.stack(checked).tolist() if checked else [])
            seen_exploded = [r is not None and next(values) > cfg.explosion_ratio for r in ratios]
            exploded, updates = [None] * len(group), [None] * len(group)
        out = []
        for i, (st, cam) in enumerate(zip(group, first)):
            if not late and seen_exploded[i]:
                out.append(None)
                continue
            loss_cams = [cam] if cfg.scales[0] in cfg.loss_scales else []
            for s in range(1, len(cfg.scales)):
                cam_s = self._scale_cam(st, s, updates[i])
                if cfg.scales[s] in cfg.loss_scales:
                    loss_cams.append(cam_s)
            out.append(loss_cams)
        for st in group:
            st.graph_cams = None  # the loss holds what it needs
        return out, exploded, updates

    @torch.no_grad()
    def _add_final_map(self, st: ImageState) -> None:
        """The map of the weights after the last update, every scale (``cfg.final_map``)."""
        for s, x2 in enumerate(st.x2):
            cam = self.heads.cam(st.params, x2)
            ops.cam_flip_accumulate_(st.acc[s], cam[0], cam[1])
        if self.snapshot_steps:
            st.snapshots.append(st.maps())

    def _finish(self, st: ImageState) -> Result:
        # The paper's sum runs to theta_K; an image that exploded made no update after its last map.
        if self.cfg.final_map and st.step > 0 and st.stop != STOP_EXPLOSION:
            self._add_final_map(st)
        # An exploded step added its scale-1.0 map only: the other scales hold one step fewer.
        result = result_of(st)
        st.target_graph = None  # its graph's memory back to the allocator
        if st.slot is not None:
            self.slots.give_back(st.slot)
        return result

    # -- a group step -------------------------------------------------------------------------
    @torch.no_grad()
    def _build(self, recipes: list[list[dict]]):
        return self.pool.stage(recipes)  # take() it on the stream of the step

    def _step(self, group: list[ImageState], executor: Optional[ThreadPoolExecutor] = None) -> Readout:
        """Queue one step of ``group`` (images the host has not seen stop); returns the step's
        figures for :func:`~rib_ext.rib.readout.read_step`, ``read_lag`` steps later."""
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
            early = [st.others.draw(cfg.num_others) for st in group]
            pending = executor.submit(self._build, early)
        target_cams, exploded, updates = self._target_pass(group)
        # per image of the group: not seen exploded by an early read (all on late reads), and the
        # images that go on to the loss and the update
        unexploded = [cams is not None for cams in target_cams]
        continuing = [st for st, k in zip(group, unexploded) if k]
        readout = Readout(continuing, None, [st for st, k in zip(group, unexploded) if not k],
                          [None] * len(continuing))
        if self.snapshot_steps:
            # Late reads: the maps as they are now, kept on the device until the step is read.
            readout.snapshots = [[a.clone() for a in st.acc] if late else st.maps()
                                 for st in continuing]
        if pending is not None:
            batches = [b for b, k in zip(pending.result().take(), unexploded) if k]
        else:
            batches = self._build([st.others.draw(cfg.num_others) for st in continuing]).take()
        target_cams = [cams for cams in target_cams if cams is not None]
        exploded = [e for e, k in zip(exploded, unexploded) if k]
        updates = [u for u, k in zip(updates, unexploded) if k]
        for st in group:
            st.queued += 1
        if not continuing:
            return readout
        images = torch.cat([b[0] for b in batches])
        other_terms = None
        if self._graphs_on() and len(continuing) == self.group_size:
            # The other images' terms of the loss come out of the graph (it holds their pass and
            # loss, forward and backward); each image's loss adds its own term last, as step_loss
            # does. None: the capture failed, and the step goes on eagerly.
            other_terms = self._graphed_other_losses(continuing, images,
                                                     torch.cat([b[1] for b in batches]))
        if other_terms is not None:
            other_cams = None
            other_terms = other_terms.unbind(0)
        else:
            with self._fixed_shapes():
                x2_split = self._stem(images).split([len(b[0]) for b in batches])
                other_cams = self.heads.other_cams([st.params for st in continuing], x2_split)
        total, stats, losses = 0, [], []
        for i, (st, cams, (_, other_labels)) in enumerate(zip(continuing, target_cams, batches)):
            if other_cams is None:
                loss, stat = step_loss(cams, st.label, None, None, cfg)
                loss = loss + other_terms[i]
            else:
                loss, stat = step_loss(cams, st.label, other_cams[i], other_labels, cfg)
            total = total + loss
            stats.append(stat)
            losses.append(loss.detach())
        all_params = [p for st in continuing for p in st.params]
        grads = group_grads(total, all_params, target_cams, other_cams, self.precision,
                            self.bench_others)

        with torch.no_grad():
            # st.queued - 1: this step's index, the updates made so far if the image is alive
            factors = [poly_factor(st.queued - 1, cfg.steps, cfg.lr_power) for st in continuing]
            if self.slots is not None:
                self.slots.step([st.slot for st in continuing], grads,
                                updates if late else [None] * len(continuing), cfg.lr, factors,
                                [st.queued == 1 for st in continuing], cfg.weight_decay,
                                self.momentum)
            else:
                self._update(continuing, all_params, grads, factors, updates if late else None)
            readout.values = step_figures(continuing, exploded, stats, losses, updates, cfg)
        if self.device.type == "cuda":
            readout.to_pinned()
        return readout

    def _update(self, states: list[ImageState], params: list, grads, factors: list[float],
                updates: Optional[list]) -> None:
        """The eager SGD update of the images ``states`` (their weights ``params``, one list):
        masked by ``updates`` on late reads, whole-group foreach passes (CUDA), or per parameter."""
        cfg = self.cfg
        lrs = [cfg.lr * m * factor for factor in factors for m in self.lr_mults]
        all_bufs = [b for st in states for b in st.bufs]
        if updates is None and not self.foreach:
            # parameter by parameter: the same operations on each as the per-image updates were
            sgd_update_(params, grads, all_bufs, lrs, cfg.weight_decay, self.momentum)
        else:
            masks = None if updates is None else [u for u, st in zip(updates, states) for _ in st.params]
            sgd_update_foreach_(params, grads, all_bufs, lrs, cfg.weight_decay, self.momentum, masks)
        n = len(self.names)
        for i, st in enumerate(states):
            st.bufs = all_bufs[i * n:(i + 1) * n]

    def _graphed_other_losses(self, group: list[ImageState], images: torch.Tensor,
                              labels: torch.Tensor) -> Optional[torch.Tensor]:
        """Each image's other-images loss term [G], from the CUDA graph of this group size: the
        stem, the head, the loss, and their backward, captured on first use by
        :func:`~rib_ext.rib.graphs.capture_graphed` (``torch.cuda.make_graphed_callables``:
        warm-up on a side stream, then capture). The inputs (the crops, their labels and every
        image's weights) are copied into the graph's static buffers; the target's pass and the
        update run eagerly. None if the capture failed."""
        g, n = len(group), len(self.names)
        flat = [p for st in group for p in st.params]
        fn = self.graphs.get(g)
        if fn is None:
            others = other_losses_pass(self._stem, self.heads.other_cams, n, g, self.cfg)
            with self._fixed_shapes():
                fn = self._capture(others, (images, labels, *flat))
            if fn is None:
                return None
            self.graphs[g] = fn
        with self._fixed_shapes():
            return fn(images, labels, *flat)

    def _fixed_shapes(self):
        return cudnn_benchmark(True) if self.bench_others else contextlib.nullcontext()

    def _choose_group_size(self, largest: Optional[tuple]) -> int:
        """G for ``group_size=0`` (:func:`~rib_ext.rib.group_size.automatic_group_size`)."""
        g, self.group_choice = automatic_group_size(
            self.device, largest, self._probe_step_bytes, self.base, self.graphs is not None,
            self.cfg.cuda_graph_targets, self.cfg.group_memory_gb)
        return g

    def _probe_step_bytes(self, size: tuple) -> int:
        """Device memory one image's step takes at target size ``size``, measured."""
        return measure_step_bytes(self.device, size, len(self.pool.labels[0]),
                                  lambda probe: read_step(self._step([self._start(probe)]), self.cfg))

    def run(self, targets: Iterable[Target],
            on_result: Optional[Callable[[Result], None]] = None,
            largest: Optional[tuple] = None) -> list[Result]:
        """Adapt every target. Without ``on_result`` the results are returned, in finishing
        order; with it, each finished image goes to ``on_result`` as soon as it is done and is not
        kept (memory stays bounded at any dataset size): the list returned is then empty.
        ``largest``: (H, W) of the largest target, for the automatic group size (``group_size``
        0 on CUDA); found here when ``targets`` is a list, else the first target's size."""
        if largest is None and self.group_size == 0 and self.device.type == "cuda":
            largest, targets = largest_target_size(targets)
        queue = self.views.lookahead(targets, self.prefetch)  # the next target prepared meanwhile
        active: list[ImageState] = []
        results = []
        unread: deque[Readout] = deque()
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
                    read_step(unread.popleft(), self.cfg)
                for st in [s for s in active if s.stop is not None]:
                    active.remove(st)
                    (results.append if on_result is None else on_result)(self._finish(st))
                if not active and exhausted:
                    return results
        finally:
            if executor is not None:
                executor.shutdown(wait=True)

    def _to_step(self, st: ImageState) -> bool:
        """Whether the host queues another step for ``st``: not seen stopped, fewer than K queued."""
        return st.stop is None and st.queued < self.cfg.steps
