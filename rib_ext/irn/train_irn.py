"""Stage ``train_irn``: train IRN's boundary and displacement branches on the confident labels.

IRN's schedule: random scale in ``scale_range`` (image bicubic, labels nearest), normalise,
horizontal flip, random crop ``crop_size`` (image padded with 0, labels with 255), labels taken to
stride 4 by nearest sampling; batches of ``batch_size`` (incomplete last batch dropped) for
``epochs`` epochs; :class:`~rib_ext.optim.PolyOptimizer` (the authors' momentum quirk included)
with the boundary branch at ``lr`` and the displacement branch at ``lr * displacement_lr_mult``.
Under torchrun every rank trains its share of each batch with DistributedDataParallel
(:class:`rib_ext.training.DataParallel`); the loss's pair counts and the mean shift's batch mean
are summed over the ranks, so the steps are those of one process on the whole batch (users of
IRN's code report that torch's older DataParallel, which split the loss's denominators by device,
broke the results).

Data order and augmentation come from (seed, epoch, position) alone, so a run interrupted at any
checkpoint and resumed computes the same network as an uninterrupted one.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from rib_ext.data import load_label_png
from rib_ext.data.transforms import (NEAREST, hwc_to_chw, normalize, random_crop_pad, random_hflip,
                                     rescale)
from rib_ext.irn.affinity_labels import IGNORE, downsample_labels, irn_loss
from rib_ext.config import IRNConfig
from rib_ext.irn.network import IRNet, build_irnet, save_irnet
from rib_ext.irn.path_index import PathIndex
from rib_ext.outputs import dataset_index, per_image_path, present_names
from rib_ext.runtime import progress, resolve_device
from rib_ext.optim import PolyOptimizer
from rib_ext import distributed
from rib_ext.training import (DataParallel, check_finite, epoch_batches, load_training_state,
                              save_training_state, trained_model_exists)

MODEL_FILE = "irn.pth"
STATE_FILE = "irn_train_state.pth"
STATE_FORMAT = "rib_ext.irn_train_state"
LOSS_LOG = "loss.csv"
BICUBIC = Image.Resampling.BICUBIC

# The settings a resumed run must share with the run that wrote the state.
_RESUME_KEYS = ("backbone", "weights", "random_init", "crop_size", "batch_size", "epochs", "lr",
                "displacement_lr_mult", "weight_decay", "scale_range", "path_radius",
                "mean_shift_momentum", "seed")


def augment(img: np.ndarray, labels: np.ndarray, crop_size: int, scale_range: Sequence[float],
            rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """One training pair: (float32 [3, crop, crop] normalised image, int64 [crop/4, crop/4] labels)."""
    scale = rng.uniform(*scale_range)
    img = rescale(img, scale, BICUBIC)
    labels = rescale(labels, scale, NEAREST)
    img, labels = random_hflip(normalize(img), rng, mask=labels)
    img, labels = random_crop_pad(img, crop_size, rng, pad_value=0, mask=labels)
    small = downsample_labels(labels).astype(np.int64)
    return torch.from_numpy(hwc_to_chw(img)), torch.from_numpy(np.ascontiguousarray(small))


class AffinityTrainSet(torch.utils.data.Dataset):
    """Training pairs of the images ``names`` and their confident-label PNGs in ``label_dir``.

    Keys are ``(position in names, augmentation seed)`` (see :func:`epoch_batches`).
    """

    def __init__(self, dataset, label_dir: str | Path, names: Sequence[str], crop_size: int,
                 scale_range: Sequence[float]):
        self.dataset = dataset
        self.label_dir = Path(label_dir)
        self.names = list(names)
        self.crop_size = crop_size
        self.scale_range = tuple(scale_range)
        self.index = dataset_index(dataset)

    def __len__(self) -> int:
        return len(self.names)

    def labels(self, name: str, size: Tuple[int, int]) -> np.ndarray:
        path = per_image_path(self.label_dir, name, ".png")
        labels = load_label_png(path)
        if labels.shape != size:
            raise ValueError(f"{path}: labels are {labels.shape[0]}x{labels.shape[1]} but the image "
                             f"is {size[0]}x{size[1]}")
        k = self.dataset.num_classes
        bad = np.unique(labels[(labels > k) & (labels != IGNORE)])
        if bad.size:
            raise ValueError(f"{path}: label values {bad[:5].tolist()} outside 0..{k} and {IGNORE}: "
                             f"labels from another dataset?")
        return labels

    def __getitem__(self, key: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        pos, seed = key
        name = self.names[pos]
        img = self.dataset.image(self.index[name])
        labels = self.labels(name, img.shape[:2])
        return augment(img, labels, self.crop_size, self.scale_range, np.random.default_rng(seed))


def _training_settings(cfg: IRNConfig) -> Dict:
    d = cfg.as_dict()
    return {k: d[k] for k in _RESUME_KEYS}


def _make_optimizer(net: IRNet, cfg: IRNConfig, max_step: int) -> PolyOptimizer:
    edge, disp = net.parameter_groups()
    return PolyOptimizer(
        [{"params": edge, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
         {"params": disp, "lr": cfg.lr * cfg.displacement_lr_mult, "weight_decay": cfg.weight_decay}],
        lr=cfg.lr, weight_decay=cfg.weight_decay, max_step=max_step)


def _batches_from(step: int, steps_per_epoch: int, n: int, cfg: IRNConfig, batch_size: int
                  ) -> Iterator[Tuple[int, List[List[Tuple[int, int]]]]]:
    """(epoch, its remaining batches) from global step ``step`` on."""
    epoch, within = divmod(step, steps_per_epoch)
    for e in range(epoch, cfg.epochs):
        yield e, epoch_batches(n, batch_size, cfg.seed, e)[within if e == epoch else 0:]


def train_irn_stage(dataset, label_dir: str | Path, out_dir: str | Path,
                    cfg: Optional[IRNConfig] = None, stop_after: Optional[int] = None) -> dict:
    """Train IRN on the confident labels of ``label_dir``; writes ``out_dir/irn.pth``.

    Resumable: ``out_dir/irn_train_state.pth`` is written every ``cfg.checkpoint_every`` steps and at
    each epoch's end, and a rerun continues from it; when ``irn.pth`` exists the stage returns at
    once. ``stop_after`` trains at most that many steps in this call (then checkpoints and returns;
    for time-boxed jobs). Returns ``{'steps', 'max_step', 'finished', 'seconds', 'loss', 'model'}``.
    """
    cfg = cfg if cfg is not None else IRNConfig()
    out_dir = Path(out_dir)
    model_path, state_path = out_dir / MODEL_FILE, out_dir / STATE_FILE
    if trained_model_exists(model_path, "train_irn"):
        return {"steps": None, "max_step": None, "finished": True, "skipped_existing": True,
                "seconds": 0.0, "loss": None, "model": str(model_path)}
    names, missing = present_names(label_dir, dataset.ids, ".png", "confident labels",
                                   "train_irn", cfg.allow_missing)
    if not names:
        raise ValueError(f"train_irn: no image has confident labels in {label_dir}")
    index = PathIndex(cfg.path_radius)
    index.source_shape(cfg.crop_size // 4, cfg.crop_size // 4)  # fail early on a too-small crop
    device = resolve_device(cfg.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the heads' initialisation, without touching global state
        net = build_irnet(cfg.backbone, cfg.weights, cfg.random_init, cfg.mean_shift_momentum)
    net = net.to(device)

    batch_size = min(cfg.batch_size, len(names))
    par = DataParallel("train_irn", batch_size)
    net.mean_shift.sync_across_ranks = par.active
    steps_per_epoch = len(names) // batch_size
    max_step = steps_per_epoch * cfg.epochs
    optimizer = _make_optimizer(net, cfg, max_step)
    step, seconds = 0, 0.0
    if state_path.exists():
        state = load_training_state(state_path, format=STATE_FORMAT, settings=_training_settings(cfg),
                                    model=net, optimizer=optimizer, what="IRN training state",
                                    map_location=device)
        step, seconds = state.step, state.seconds
    out_dir.mkdir(parents=True, exist_ok=True)

    trainset = AffinityTrainSet(dataset, label_dir, names, cfg.crop_size, cfg.scale_range)
    budget = max_step - step if stop_after is None else min(max_step - step, int(stop_after))
    taken, terms, t0, t_start = 0, {}, time.time() - seconds, time.time()
    log = par.loss_log(out_dir / LOSS_LOG, ("epoch", "step", "loss", "lr", "seconds"), resume_step=step)
    ddp = par.wrap(net, device)
    ddp.train()
    # Each rank's terms are its part of the batch's (denominators summed over the ranks).
    reduce_counts = par.count if par.active else None
    try:
        for epoch, batches in _batches_from(step, steps_per_epoch, len(names), cfg, batch_size):
            if taken >= budget:
                break
            batches = batches[:budget - taken]
            loader = torch.utils.data.DataLoader(trainset, batch_sampler=par.batches(batches),
                                                 num_workers=cfg.num_workers)
            bar = progress(loader, f"train_irn epoch {epoch + 1}/{cfg.epochs}", total=len(batches))
            for img, labels in bar:
                terms = irn_loss(*ddp(img.to(device, non_blocking=True)), labels.to(device), index,
                                 reduce_counts)
                lr = optimizer.param_groups[0]["lr"]
                loss, loss_value = par.loss(terms["total"], 1)
                check_finite(loss_value, "train_irn", step=step + 1, lr=lr, epoch=epoch, epochs=cfg.epochs)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step, taken = step + 1, taken + 1
                log.write(epoch=epoch + 1, step=step, loss=loss_value, lr=lr,
                          seconds=round(time.time() - t0, 3))
                bar.set_postfix(loss=f"{loss_value:.4f}")
                if par.is_main and (step % cfg.checkpoint_every == 0 or step % steps_per_epoch == 0
                                    or taken == budget):
                    save_training_state(state_path, format=STATE_FORMAT, settings=_training_settings(cfg),
                                        step=step, model=net, optimizer=optimizer,
                                        seconds=time.time() - t0)
    finally:
        log.close()

    finished = step >= max_step
    net.mean_shift.sync_across_ranks = False
    if finished and par.is_main:
        save_irnet(model_path, net, meta={"config": cfg.as_dict(), "steps": step,
                                          "class_names": list(dataset.class_names),
                                          "images": len(names)})
        state_path.unlink(missing_ok=True)
    par.finish(f"the IRN model {model_path}" if finished else f"the IRN state {state_path}")
    # The last step's terms of the whole batch (each rank holds its part).
    terms = {k: distributed.all_reduce_tensor(v.detach()) for k, v in terms.items()} if par.active else terms
    return {"steps": step, "max_step": max_step, "finished": finished, "skipped_existing": False,
            "missing": len(missing), "seconds": round(time.time() - t_start, 2),
            "loss": {k: round(v.item(), 5) for k, v in terms.items()} or None,
            "model": str(model_path) if finished else None}
