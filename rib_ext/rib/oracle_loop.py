"""A slow, readable RIB loop written straight from the authors' released per-image loop (fixed
batch norm, the stem frozen, GNDRP, the margin and explosion stops): one model, one optimizer, one
image at a time, eager PyTorch. It is the tests' oracle for the engine, not something to run.
"""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F

from rib_ext.config import RIBConfig
from rib_ext.data.transforms import multiscale_flip_views
from rib_ext.ops import finalize_maps, oracle
from rib_ext.optim import PolyOptimizer
from rib_ext.rib.losses import SQUASH
from rib_ext.rib.sampling import OtherImages, image_generator
from rib_ext.rib.state import Result
from rib_ext.rib.stops import STOP_EXPLOSION, STOP_MARGIN, STOP_STEPS
from rib_ext.rib.targets import Target


def _rows_loss(cam, labels, cfg: RIBConfig, per_row_loop: bool):
    """Loss and logits of rows ``cam`` [N, K, h, w] with ``labels`` [N, K], plain PyTorch."""
    tau = math.inf if cfg.pooling == "gap" else cfg.tau
    present = labels > 0
    if cfg.pooling == "gap":  # a plain mean: no class normalised
        present = torch.zeros_like(present)
    if cfg.coco_first20_bug:
        present[:, 20:] = False
    if per_row_loop:  # the authors' per-row, per-class Python loop
        logits = oracle.gndrp_pool_loop(cam, present, tau)
    else:
        logits = oracle.gndrp_pool(cam, present, tau, cfg.gndrp_behaviour)
    if cfg.loss == "rib":
        clip = "paper" if cfg.clip_loss else "authors"
        loss = oracle.margin_loss(logits, labels, cfg.margin, clip).sum()
    else:
        p = SQUASH[cfg.loss](logits).clamp(1e-7, 1 - 1e-7)
        loss = F.binary_cross_entropy(p, labels, reduction="sum")
    return loss, logits


def adapt_one(model0, target: Target, pool: OtherImages, cfg: RIBConfig,
              per_row_loop: bool = False) -> Result:
    """Adapt one image from θ0 = ``model0`` (a CAMNet, left unchanged)."""
    t0 = time.time()
    device = next(model0.parameters()).device
    model = copy.deepcopy(model0)
    model.train()
    backbone, classifier = model.trainable_parameters()
    optimizer = PolyOptimizer(
        [{"params": backbone, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
         {"params": classifier, "lr": cfg.lr * cfg.classifier_lr_mult,
          "weight_decay": cfg.weight_decay}],
        lr=cfg.lr, weight_decay=cfg.weight_decay, max_step=cfg.steps, power=cfg.lr_power,
        authors_momentum=cfg.authors_momentum)
    views = [v.to(device) for v in multiscale_flip_views(target.image, cfg.scales)]
    label = torch.as_tensor(target.label, device=device).float()
    keys = torch.nonzero(label)[:, 0]
    sums = [0.0] * len(views)
    rng = image_generator(cfg.seed, target.index)
    others_draws = pool.draws(rng, target.label, target.pool_index, cfg.disjoint_prob)
    stats, stop, steps = [], STOP_STEPS, 0

    for k in range(cfg.steps):
        loss_rows = []
        exploded = False
        for s, (scale, view) in enumerate(zip(cfg.scales, views)):
            with torch.set_grad_enabled(scale in cfg.loss_scales):
                cam = model.cam(view)  # [2, K, h, w]: the image and its flip
            # ReLU both, flip the second back, add: this step's map at this scale.
            sums[s] = sums[s] + (F.relu(cam[0]) + F.relu(cam[1]).flip(-1)).detach()
            if scale == 1.0 and k >= 1 and cfg.stop_on_explosion:
                step_map = (F.relu(cam[0]) + F.relu(cam[1]).flip(-1)).detach()[keys]
                step_map = step_map / (step_map.amax(dim=(1, 2), keepdim=True) + 1e-5)
                covered = (step_map > cfg.explosion_threshold).any(dim=0).float().mean().item()
                if covered > cfg.explosion_ratio:
                    exploded = True
                    break
            if scale in cfg.loss_scales:
                loss_rows.append((cam, label.expand(2, -1)))
        if exploded:
            stop = STOP_EXPLOSION
            break
        recipes = others_draws.draw(cfg.num_others)
        others, other_labels = pool.batch(recipes)
        loss_rows.append((model.cam(others), other_labels))

        loss, stat = 0.0, 0.0
        for i, (cam, labels) in enumerate(loss_rows):
            rows_loss, logits = _rows_loss(cam, labels, cfg, per_row_loop)
            loss = loss + rows_loss
            if i < len(loss_rows) - 1:  # the target's rows
                stat = stat + (labels * logits.detach()).sum()
        stat = abs(float(stat))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
        stats.append(stat)
        if cfg.stop_on_margin and stat > cfg.margin:
            stop = STOP_MARGIN
            break

    if cfg.final_map and steps > 0 and stop != STOP_EXPLOSION:  # the paper's map of theta_K
        with torch.no_grad():
            for s, view in enumerate(views):
                cam = model.cam(view)
                sums[s] = sums[s] + F.relu(cam[0]) + F.relu(cam[1]).flip(-1)
    maps = finalize_maps(sums, target.image.shape[:2], keys.cpu().numpy())
    record = {"name": target.name, "index": target.index, "steps": steps, "stop": stop,
              "target_logit_sums": [round(v, 4) for v in stats],
              "final_target_logit_sum": round(stats[-1], 4) if stats else None,
              "seconds": round(time.time() - t0, 3)}
    return Result(target.name, maps, record)
