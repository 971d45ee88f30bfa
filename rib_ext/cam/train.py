"""The multi-label classifier (IRN's recipe: ResNet, output stride 16, fixed BN, BCE on the
pooled logits), trained with checkpoints and an exact resume."""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rib_ext.config import TrainCamConfig, plain_dict
from rib_ext.data import ClassificationDataset, TrainTransform
from rib_ext.layout import CLASSIFIER_FILE
from rib_ext.models import build_cam_net, load_cam_net, save_cam_net
from rib_ext.models.checkpoint import weight_problem
from rib_ext.optim import PolyOptimizer
from rib_ext.runtime import progress, resolve_device
from rib_ext.training import (DataParallel, NonFiniteLossError, check_finite, epoch_batches, load_training_state,
                              save_training_state, trained_model_exists)

MODEL_FILE = CLASSIFIER_FILE  # the classifier's name in the run folder
STATE_FILE = "train_state.pth"
LOSS_LOG = "loss.csv"


def build_classifier(cfg: TrainCamConfig, num_classes: int):
    """The network train_cam starts from: the paper's CAMNet (``cfg.backbone``), or a torchvision
    or timm classifier (``cfg.model``) adapted to RIB's protocol, its head new for the classes."""
    if cfg.model == "camnet":
        return build_cam_net(cfg.backbone, num_classes, weights=cfg.weights,
                             random_init=cfg.random_init, strides=tuple(cfg.strides),
                             from_scratch=cfg.from_scratch)
    from rib_ext.models.zoo import build_classifier as build_adapted

    return build_adapted(cfg.model, num_classes, weights=cfg.weights, random_init=cfg.random_init,
                         split=cfg.split)


def train_cam(dataset, cfg: TrainCamConfig, out_dir: str | Path) -> Path:
    """Train the CAM network on ``dataset`` (image-level labels only); returns the model file.

    Resumes from ``out_dir/train_state.pth`` (written every ``cfg.checkpoint_every`` steps and at
    every epoch's end) to the same weights an uninterrupted run reaches: the data order and the
    augmentation are functions of (seed, epoch, position) (:func:`rib_ext.training.epoch_batches`).
    Logs every step to ``out_dir/loss.csv``. Returns at once when ``out_dir/cam_net.pth`` exists.

    Under torchrun every rank calls this: each trains on its share of every batch with DDP
    (:class:`rib_ext.training.DataParallel`: same global batch, same steps as one process); rank 0
    writes the states, the log and the model; every rank reads a state to resume.
    """
    out_dir = Path(out_dir)
    model_path = out_dir / MODEL_FILE
    if trained_model_exists(model_path, "train_cam"):
        return model_path
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)

    model = build_classifier(cfg, dataset.num_classes).to(device)
    trainset = ClassificationDataset(dataset, TrainTransform(tuple(cfg.resize_long), cfg.crop_size))
    drop_last = len(dataset) >= cfg.batch_size
    steps_per_epoch = len(epoch_batches(len(dataset), cfg.batch_size, cfg.seed, 0, drop_last))
    if steps_per_epoch == 0:
        raise ValueError(f"train_cam: the training list is empty ({len(dataset)} images)")
    par = DataParallel("train_cam", min(cfg.batch_size, len(dataset)))
    model.sync_batch_stats(par.active)

    backbone_params, classifier_params = model.trainable_parameters()
    optimizer = PolyOptimizer(
        [{"params": backbone_params, "lr": cfg.lr / cfg.classifier_lr_mult,
          "weight_decay": cfg.weight_decay},
         {"params": classifier_params, "lr": cfg.lr, "weight_decay": cfg.weight_decay}],
        lr=cfg.lr, weight_decay=cfg.weight_decay, max_step=cfg.epochs * steps_per_epoch,
        authors_momentum=cfg.authors_momentum)

    # Everything that changes the weights; device, workers and checkpoint spacing do not.
    resume_settings = {k: v for k, v in plain_dict(cfg).items() if k not in ("device", "num_workers", "checkpoint_every")}
    resume_settings["images"] = len(dataset)
    state_path = out_dir / STATE_FILE
    step, seconds = 0, 0.0
    if state_path.exists():
        state = load_training_state(state_path, format="rib_ext.cam_train_state", settings=resume_settings,
                                    model=model, optimizer=optimizer, what="train_cam training state",
                                    map_location=device)
        step, seconds = state.step, state.seconds

    ddp = par.wrap(model, device)

    def save_state(step: int, seconds: float) -> None:
        if not par.is_main:
            return
        save_training_state(state_path, format="rib_ext.cam_train_state", settings=resume_settings, step=step,
                            model=model, optimizer=optimizer, seconds=seconds)

    t0 = time.time() - seconds
    columns = ("epoch", "step", "loss", "lr", "seconds")
    with par.loss_log(out_dir / LOSS_LOG, columns, resume_step=step) as log:
        for epoch in range(step // steps_per_epoch, cfg.epochs):
            ddp.train()
            batches = epoch_batches(len(dataset), cfg.batch_size, cfg.seed, epoch, drop_last)
            batches = batches[step - epoch * steps_per_epoch:]
            loader = torch.utils.data.DataLoader(trainset, batch_sampler=par.batches(batches),
                                                 num_workers=cfg.num_workers)
            bar = progress(loader, f"train_cam epoch {epoch + 1}/{cfg.epochs}", total=len(batches))
            for batch, global_batch in zip(bar, batches):
                logits = ddp(batch["img"].to(device, non_blocking=True))
                # The mean over the global batch: this share's sum over images / the batch size.
                loss, loss_value = par.loss(F.multilabel_soft_margin_loss(
                    logits, batch["label"].to(device), reduction="sum"), len(global_batch))
                lr = optimizer.param_groups[1]["lr"]  # the classifier's, the rate the user sets
                check_finite(loss_value, "train_cam", step=step + 1, lr=lr, epoch=epoch, epochs=cfg.epochs,
                             hint=f" (the last good state is {state_path})" if state_path.exists() else "")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                log.write(epoch=epoch + 1, step=step, loss=loss_value, lr=lr,
                          seconds=round(time.time() - t0, 3))
                bar.set_postfix(loss=f"{loss_value:.4f}")
                if step % cfg.checkpoint_every == 0 or step % steps_per_epoch == 0:
                    save_state(step, time.time() - t0)
    model.sync_batch_stats(False)
    diverged = weight_problem(model)
    if diverged is not None:
        # The loss can stay finite while the weights run away: the maps would be all zero. The
        # state is of the diverged run; removed, so a rerun with a lower rate starts afresh.
        if par.is_main:
            state_path.unlink(missing_ok=True)
        raise NonFiniteLossError(f"train_cam: after {step} steps the classifier has {diverged}: "
                                 f"training diverged with learning rate {cfg.lr:g}; lower --lr "
                                 f"(nothing was saved as {model_path})")
    if par.is_main:
        save_cam_net(model_path, model.cpu(), meta={"config": plain_dict(cfg),
                                                     "class_names": list(dataset.class_names),
                                                     "seconds": round(time.time() - t0, 1)})
        state_path.unlink(missing_ok=True)
    par.finish(f"the classifier {model_path}")
    return model_path


def load_trained(out_dir: str | Path, device="cpu"):
    return load_cam_net(Path(out_dir) / MODEL_FILE, device)
