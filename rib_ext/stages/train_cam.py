"""Stage ``train_cam``: the multi-label classifier (IRN's recipe), with checkpoints and resume."""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from rib_ext.config import TrainCamConfig, plain_dict
from rib_ext.data import ClassificationDataset, TrainTransform
from rib_ext.io import atomic_path
from rib_ext.models import build_cam_net, load_cam_net, save_cam_net
from rib_ext.optim import PolyOptimizer
from rib_ext.stages.common import file_is_complete, progress, resolve_device, result_settings

MODEL_FILE = "cam_net.pth"
STATE_FILE = "train_state.pth"
UPSTREAM = ("data:train",)


def settings(cfg) -> dict:
    return result_settings(cfg.train_cam)


def run(ctx, cfg) -> dict:
    path = ctx.classifier_path()
    if ctx.is_main:  # one classifier; the other ranks wait for it
        path = train_cam(ctx.train_set, cfg.train_cam, ctx.stage_dir("train_cam"))
        ctx.info(f"[train_cam] {path}")
    ctx.barrier()
    return {"model": str(path)}


def train_cam(dataset, cfg: TrainCamConfig, out_dir: str | Path) -> Path:
    """Train the CAM network on ``dataset`` (image-level labels only); returns the model file.

    Resumes from ``out_dir/train_state.pth`` (written at the end of every epoch) and returns at once
    when ``out_dir/cam_net.pth`` exists.
    """
    out_dir = Path(out_dir)
    model_path = out_dir / MODEL_FILE
    if model_path.exists():
        if file_is_complete(model_path):
            return model_path
        warnings.warn(f"train_cam: {model_path} is truncated; training again", stacklevel=2)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)

    model = build_cam_net(cfg.backbone, dataset.num_classes, weights=cfg.weights,
                          random_init=cfg.random_init, strides=tuple(cfg.strides),
                          from_scratch=cfg.from_scratch).to(device)
    transform = TrainTransform(tuple(cfg.resize_long), cfg.crop_size)
    loader = torch.utils.data.DataLoader(
        ClassificationDataset(dataset, transform), batch_size=cfg.batch_size, shuffle=True,
        num_workers=cfg.num_workers, drop_last=len(dataset) >= cfg.batch_size,
        generator=torch.Generator().manual_seed(cfg.seed))
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"train_cam: the training list is empty ({len(dataset)} images)")

    backbone_params, classifier_params = model.trainable_parameters()
    optimizer = PolyOptimizer(
        [{"params": backbone_params, "lr": cfg.lr / cfg.classifier_lr_mult,
          "weight_decay": cfg.weight_decay},
         {"params": classifier_params, "lr": cfg.lr, "weight_decay": cfg.weight_decay}],
        lr=cfg.lr, weight_decay=cfg.weight_decay, max_step=cfg.epochs * steps_per_epoch,
        authors_momentum=cfg.authors_momentum)

    state_path = out_dir / STATE_FILE
    start_epoch = 0
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start_epoch = state["epoch"]

    t0 = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        bar = progress(loader, f"train_cam epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch)
        for batch in bar:
            logits = model(batch["img"].to(device, non_blocking=True))
            loss = F.multilabel_soft_margin_loss(logits, batch["label"].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        with atomic_path(state_path) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "rng": torch.get_rng_state(), "epoch": epoch + 1}, tmp)
    save_cam_net(model_path, model.cpu(), meta={"config": plain_dict(cfg),
                                                 "class_names": list(dataset.class_names),
                                                 "seconds": round(time.time() - t0, 1)})
    state_path.unlink(missing_ok=True)
    return model_path


def load_trained(out_dir: str | Path, device="cpu"):
    return load_cam_net(Path(out_dir) / MODEL_FILE, device)
