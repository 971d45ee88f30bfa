"""A line-by-line transcription of the RIB authors' per-image loop (``obtain_RIB_CAM.py`` and its
COCO twin: ``_work``, ``RIB_learn``, ``save_npy``, with ``misc/torchutils``'s PolyOptimizer and
``gndp2d``), for the tests' comparison with the engine. Kept in the authors' structure on purpose:
one model reloaded per image, their optimizer, a loader of other-image batches iterated with
``enumerate`` and cut at K steps, the explosion check inside the scale loop, the margin stop after
the update. Only the data plumbing is ours: the target's views come from ``multiscale_flip_views``
(their MSF dataset) and each batch of other images from the package's draws (their shuffled
``DataLoader``), so that both sides see the same pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rib_ext.data.transforms import multiscale_flip_views
from rib_ext.ops import oracle
from rib_ext.ops.cam import strided_size, strided_up_size
from rib_ext.rib.sampling import image_generator


class AuthorsPolyOptimizer(torch.optim.SGD):
    """Their PolyOptimizer: SGD's third positional parameter is momentum, so weight decay lands
    there; the poly power is stored in an attribute they named ``momentum`` (0.9)."""

    def __init__(self, params, lr, weight_decay, max_step, momentum=0.9):
        super().__init__(params, lr, weight_decay)
        self.global_step = 0
        self.max_step = max_step
        self.momentum = momentum
        self._initial_lr = [group["lr"] for group in self.param_groups]

    def step(self, closure=None):
        if self.global_step < self.max_step:
            lr_mult = (1 - self.global_step / self.max_step) ** self.momentum
            for i in range(len(self.param_groups)):
                self.param_groups[i]["lr"] = self._initial_lr[i] * lr_mult
        super().step(closure)
        self.global_step += 1


def gndp2d(x, valid_cat, score_th, is_rib=False):
    """Their GNDRP (a loop over the first 20 classes), through the package's literal copy."""
    present = torch.zeros(x.shape[:2], dtype=torch.bool)
    for b in range(x.shape[0]):
        cats = torch.nonzero(valid_cat[b])[:, 0] if is_rib else valid_cat
        present[b, cats] = True
    return oracle.gndrp_pool_loop(x, present, score_th, visited=20)


def raw_logit_loss(logits, labels):
    target_class = logits * labels
    target_loss = target_class[:6].sum()  # the target's rows: scales 1.0, 1.5, 2.0 x (image, flip)
    return -target_class.sum(), target_loss


def rib_learn(cam_fn, views, label, pack_rib, optimizer, outputs_cam, step, args):
    logits_total, labels_total = [], []
    valid_cat = torch.nonzero(label[0])[:, 0]
    for img_idx, img in enumerate(views):  # img_idx 1 is scale 0.5: map only, not the loss
        cam = cam_fn(img)
        merged = F.relu(cam)
        merged = merged[0] + merged[1].flip(-1)
        if step == 0:
            outputs_cam.append(merged.data.clone())
        else:
            outputs_cam[img_idx] += merged.data
        if step > 0 and img_idx == 0:
            interest = merged.data[valid_cat]
            norm = (interest / (F.adaptive_max_pool2d(interest, (1, 1)) + 1e-5)) > args["explode_th"]
            norm = torch.clip(norm.sum(axis=0), 0, 1)
            if norm.sum() / norm.shape[0] / norm.shape[1] > args["explode_ratio"]:
                return outputs_cam, True, None
        if img_idx != 1:
            if args["pooling"] == "gap":
                logits_total.append(cam.mean(dim=(2, 3)))
            else:
                logits_total.append(gndp2d(cam, valid_cat=valid_cat, score_th=args["score_th"]))
            labels_total.append(label)
            labels_total.append(label)
    img_rib, label_rib = pack_rib
    cam_rib = cam_fn(img_rib)
    if args["pooling"] == "gap":
        logits_total.append(cam_rib.mean(dim=(2, 3)))
    else:
        logits_total.append(gndp2d(cam_rib, valid_cat=label_rib, score_th=args["score_th"],
                                   is_rib=True))
    labels_total.append(label_rib)
    logits_total = torch.cat(logits_total, dim=0)
    labels_total = torch.cat(labels_total, dim=0).to(logits_total.dtype)
    loss, target_loss = raw_logit_loss(logits_total, labels_total)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    target_loss = torch.abs(target_loss.detach())
    return outputs_cam, bool(target_loss > args["stop_th"]), float(target_loss)


def save_npy(outputs, size, label):
    strided = strided_size(size, 4)
    strided_up = strided_up_size(size, 16)
    strided_cam = torch.sum(torch.stack(
        [F.interpolate(torch.unsqueeze(o, 0), strided, mode="bilinear", align_corners=False)[0]
         for o in outputs]), 0)
    highres_cam = [F.interpolate(torch.unsqueeze(o, 1), strided_up, mode="bilinear",
                                 align_corners=False) for o in outputs]
    highres_cam = torch.sum(torch.stack(highres_cam, 0), 0)[:, 0, :size[0], :size[1]]
    valid_cat = torch.nonzero(label[0])[:, 0]
    strided_cam = strided_cam[valid_cat]
    strided_cam /= F.adaptive_max_pool2d(strided_cam, (1, 1)) + 1e-5
    highres_cam = highres_cam[valid_cat]
    highres_cam /= F.adaptive_max_pool2d(highres_cam, (1, 1)) + 1e-5
    return {"keys": valid_cat, "cam": strided_cam, "high_res": highres_cam}


def adapt_like_the_authors(model, state_dict, target, pool, args, dtype=torch.float64):
    """One image through their ``_work`` body. ``model``: a CAMNet (the authors' CAM layout);
    ``args``: their flags (RIB_iter, RIB_lr, RIB_batch, score_th, stop_th, explode_th,
    explode_ratio, cam_weight_decay, pooling, seed). Returns (accumulated per-scale maps,
    saved maps, steps taken, stop, target logit sums)."""
    model.load_state_dict(state_dict, strict=True)
    model.train()

    def cam_fn(x):
        return model.cam(x.to(dtype))

    views = multiscale_flip_views(target.image, (1.0, 0.5, 1.5, 2.0))
    label = torch.as_tensor(target.label)[None]
    param_groups = (list(model.stage1.parameters()) + list(model.stage2.parameters())
                    + list(model.stage3.parameters()) + list(model.stage4.parameters()),
                    list(model.classifier.parameters()))
    optimizer = AuthorsPolyOptimizer([
        {"params": param_groups[0], "lr": args["RIB_lr"], "weight_decay": args["cam_weight_decay"]},
        {"params": param_groups[1], "lr": 10 * args["RIB_lr"],
         "weight_decay": args["cam_weight_decay"]},
    ], lr=args["RIB_lr"], weight_decay=args["cam_weight_decay"], max_step=args["RIB_iter"])

    draws = pool.draws(image_generator(args["seed"], target.index), target.label,
                         target.pool_index)
    # drop_last: as many batches as the disjoint pool fills (the tests use pools of >= K batches).
    n_batches = len(draws._pools[True]) // args["RIB_batch"]
    loader = (pool.batch(draws.draw(args["RIB_batch"])) for _ in range(n_batches))
    outputs_cam, sums, stop, steps = [], [], "steps", 0
    for rib_step, pack_rib in enumerate(loader):
        if rib_step == args["RIB_iter"]:
            break
        outputs_cam, stop_sign, target_loss = rib_learn(cam_fn, views, label, pack_rib, optimizer,
                                                        outputs_cam, rib_step, args)
        if target_loss is None:
            stop = "explosion"
            break
        steps += 1
        sums.append(target_loss)
        if stop_sign:
            stop = "margin"
            break
    maps = save_npy(outputs_cam, target.image.shape[:2], label)
    return outputs_cam, maps, steps, stop, sums
