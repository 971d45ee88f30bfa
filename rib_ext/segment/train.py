"""Training DeepLab-v2 on pseudo masks, with checkpoints that resume bit for bit.

Schedule (RIB's appendix, DeepLab-v2's recipe): ``iterations`` batches of ``batch_size`` crops,
SGD momentum 0.9, weight decay 5e-4, poly lr decay (power 0.9) from ``lr`` on the backbone, 10x on
the ASPP weights and 20x without decay on its biases, cross entropy ignoring label 255, bf16
autocast on CUDA.

Files in ``out_dir``: ``train_state.pth`` every ``checkpoint_every`` iterations (model, optimizer,
iteration, RNG states of torch / numpy / python, data-order state), ``log.csv`` (iteration, loss,
lr), ``tensorboard/`` when TensorBoard is installed, and at the end ``model.pth`` (the state file
is then removed). A rerun resumes from the state file, or returns at once when ``model.pth`` exists.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from rib_ext.data import IGNORE_INDEX
from rib_ext.checkpoints import CheckpointError
from rib_ext.outputs import present_names
from rib_ext.optim import PolyOptimizer
from rib_ext.runtime import progress, resolve_device
from rib_ext.training import (DataParallel, LossLog, NullLog, check_finite, load_training_state,
                              read_loss_log, save_training_state, settings_diff, trained_model_exists)

from rib_ext.config import SegmentConfig
from .data import IterationBatches, SegmentationTrainSet, names_digest
from .model import DeepLabV2, build_deeplab, calibrate_batch_norm, save_deeplab

MODEL_FILE = "model.pth"
STATE_FILE = "train_state.pth"
LOG_FILE = "log.csv"
STATE_FORMAT = "rib_ext.deeplab_train_state"
LOG_HEADER = ("iteration", "loss", "lr")
CALIBRATION_BATCHES = 4

# The settings a resumed run must share with the run that wrote the state.
RESUME_KEYS = ("backbone", "weights", "random_init", "aspp_dilations", "iterations", "batch_size", "lr",
               "head_lr_mult", "head_bias_lr_mult", "lr_power", "momentum", "weight_decay",
               "crop_size", "scale_range", "hflip", "amp", "seed")


def segmentation_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(summed cross entropy, number of pixels) over the pixels whose label is not 255; the mean is
    their ratio (on one rank's share of a batch, the count is summed over the ranks first)."""
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (labels != IGNORE_INDEX).sum()


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy over the pixels whose label is not 255.

    ``logits`` [N, C, H, W] (computed in float32 whatever their dtype), ``labels`` int64 [N, H, W].
    A batch with no labelled pixel gives 0 rather than NaN (0 / 0), and no host sync is needed.
    """
    total, count = segmentation_loss_sum(logits, labels)
    return total / count.clamp(min=1)


def make_optimizer(model: DeepLabV2, cfg: SegmentConfig) -> PolyOptimizer:
    backbone, head_weights, head_biases = model.parameter_groups()
    return PolyOptimizer(
        [{"params": backbone, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
         {"params": head_weights, "lr": cfg.lr * cfg.head_lr_mult, "weight_decay": cfg.weight_decay},
         {"params": head_biases, "lr": cfg.lr * cfg.head_bias_lr_mult, "weight_decay": 0.0}],
        lr=cfg.lr, weight_decay=cfg.weight_decay, max_step=cfg.iterations, power=cfg.lr_power,
        momentum=cfg.momentum, authors_momentum=False)


# ---------------------------------------------------------------------------------- train state

def training_settings(cfg: SegmentConfig) -> Dict:
    d = cfg.as_dict()
    return {k: d[k] for k in RESUME_KEYS}


def data_order(names: Sequence[str], cfg: SegmentConfig, iteration: int) -> Dict:
    """What decides the remaining batches: seed, image list and the next stream position."""
    return {"seed": cfg.seed, "num_images": len(names), "names_digest": names_digest(names),
            "batch_size": cfg.batch_size, "next_position": iteration * cfg.batch_size}


def save_state(path: Path, model: DeepLabV2, optimizer: PolyOptimizer, iteration: int,
               names: Sequence[str], cfg: SegmentConfig, seconds: float = 0.0) -> None:
    save_training_state(path, format=STATE_FORMAT, settings=training_settings(cfg), step=iteration,
                        model=model, optimizer=optimizer, seconds=seconds,
                        extra={"data_order": data_order(names, cfg, iteration)})


def load_state(path: Path, model: DeepLabV2, optimizer: PolyOptimizer, names: Sequence[str],
               cfg: SegmentConfig) -> Tuple[int, float]:
    """Restore model, optimizer and RNG states from ``path``; returns (iteration to go on from,
    training seconds so far)."""
    state = load_training_state(path, format=STATE_FORMAT, settings=training_settings(cfg), model=model,
                                optimizer=optimizer, what="segmentation training state")
    expected = data_order(names, cfg, state.step)
    if state.extra.get("data_order") != expected:
        raise CheckpointError(f"{path}: the training images changed since this state was written "
                              f"({settings_diff(state.extra.get('data_order') or {}, expected)}); resume "
                              f"with the same labels folder and image list, or delete it to start over")
    return state.step, state.seconds


# ------------------------------------------------------------------------------------------ logs

class TrainLog:
    """``log.csv`` (one row per iteration, see :class:`rib_ext.training.LossLog`) and, when
    installed, TensorBoard."""

    def __init__(self, out_dir: Path, start: int, tensorboard: bool, write: bool = True):
        # write: False on the ranks other than 0 of a data-parallel run (the logs are rank 0's).
        self.path = out_dir / LOG_FILE
        self._log = LossLog(self.path, LOG_HEADER, resume_step=start, step_column="iteration") \
            if write else NullLog()
        self._tb = _tensorboard_writer(out_dir / "tensorboard") if tensorboard and write else None

    def write(self, iteration: int, loss: float, lr: float) -> None:
        self._log.write(iteration=iteration, loss=float(loss), lr=float(lr))
        if self._tb is not None:
            self._tb.add_scalar("loss", loss, iteration)
            self._tb.add_scalar("lr", lr, iteration)

    def close(self) -> None:
        self._log.close()
        if self._tb is not None:
            self._tb.close()


def _tensorboard_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional
        return None
    return SummaryWriter(str(log_dir))


def read_log(path: str | Path) -> List[Dict[str, float]]:
    """The rows of a ``log.csv`` as dicts (iteration int, loss and lr float)."""
    return [{"iteration": int(r["iteration"]), "loss": float(r["loss"]), "lr": float(r["lr"])}
            for r in read_loss_log(path)]


# -------------------------------------------------------------------------------------- training

def _calibrate_if_random(model: DeepLabV2, trainset: SegmentationTrainSet, cfg: SegmentConfig,
                         device: torch.device) -> None:
    if not cfg.random_init:
        return
    b = cfg.batch_size
    batches = (torch.stack([trainset[p][0] for p in range(i * b, (i + 1) * b)]).to(device)
               for i in range(CALIBRATION_BATCHES))
    calibrate_batch_norm(model, batches)


def train_segmenter(dataset, label_dir: str | Path, out_dir: str | Path, cfg: Optional[SegmentConfig] = None,
                    names: Optional[Sequence[str]] = None, stop_after: Optional[int] = None) -> dict:
    """Train DeepLab-v2 on ``label_dir/<id>.png`` (palette PNGs, 255 = ignore); see the module doc.

    ``names``: the training ids (default: every dataset id with a label PNG, missing ones following
    ``cfg.allow_missing``). ``stop_after``: train at most that many iterations in this call, then
    checkpoint and return (time-boxed jobs). Under torchrun every rank calls this and trains its
    share of each batch with DDP (:class:`rib_ext.training.DataParallel`: the labelled-pixel count
    is summed over the ranks, so a step is one process's on the whole batch); rank 0 writes the
    state, the log and the model. Returns ``{'iterations', 'max_iterations', 'finished',
    'skipped_existing', 'seconds', 'loss', 'model', 'log'}``.
    """
    cfg = cfg if cfg is not None else SegmentConfig()
    out_dir = Path(out_dir)
    model_path, state_path = out_dir / MODEL_FILE, out_dir / STATE_FILE
    summary = {"max_iterations": cfg.iterations, "model": str(model_path), "log": str(out_dir / LOG_FILE)}
    if trained_model_exists(model_path, "segment"):
        return {**summary, "iterations": None, "finished": True, "skipped_existing": True,
                "seconds": 0.0, "loss": None}
    if names is None:
        names = present_names(label_dir, dataset.ids, ".png", "training labels", "segment",
                              cfg.allow_missing)[0]
    names = list(names)
    trainset = SegmentationTrainSet(dataset, label_dir, names, cfg.crop_size, cfg.scale_range,
                                    cfg.hflip, cfg.seed)
    device = resolve_device(cfg.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the head's initialisation, without touching global state
        model = build_deeplab(cfg.backbone, dataset.num_classes + 1, cfg.weights, cfg.random_init,
                              cfg.aspp_dilations)
    model = model.to(device)
    par = DataParallel("segment", cfg.batch_size)
    optimizer = make_optimizer(model, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    if state_path.exists():
        iteration, seconds = load_state(state_path, model, optimizer, names, cfg)
    else:
        iteration, seconds = 0, 0.0
        _calibrate_if_random(model, trainset, cfg, device)

    stop = cfg.iterations if stop_after is None else min(cfg.iterations, iteration + int(stop_after))
    batches = par.batches(IterationBatches(iteration, stop, cfg.batch_size))
    loader = torch.utils.data.DataLoader(trainset, batch_sampler=batches,
                                         num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.amp)
    log = TrainLog(out_dir, iteration, cfg.tensorboard, write=par.is_main)
    loss_value, t0, t_start = None, time.time() - seconds, time.time()
    ddp = par.wrap(model, device)
    ddp.train()
    try:
        bar = progress(loader, f"segment: train ({out_dir.name})", total=stop - iteration)
        for img, labels in bar:
            with autocast:
                logits = ddp(img.to(device, non_blocking=True))
            total, count = segmentation_loss_sum(logits, labels.to(device, non_blocking=True))
            loss, loss_value = par.loss(total, par.count(count).clamp(min=1))
            check_finite(loss_value, "segment", step=iteration + 1, lr=optimizer.param_groups[0]["lr"],
                         hint=f" (training in {out_dir})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            iteration += 1
            log.write(iteration, loss_value, optimizer.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{loss_value:.4f}", it=iteration)
            if par.is_main and (iteration % cfg.checkpoint_every == 0 or iteration == stop):
                save_state(state_path, model, optimizer, iteration, names, cfg, time.time() - t0)
    finally:
        log.close()

    finished = iteration >= cfg.iterations
    if finished and par.is_main:
        save_deeplab(model_path, model, meta={"config": cfg.as_dict(), "iterations": iteration,
                                              "class_names": ["background", *dataset.class_names],
                                              "images": len(names), "label_dir": str(label_dir)})
        state_path.unlink(missing_ok=True)
    par.finish(f"the segmentation network {model_path}" if finished else f"the state {state_path}")
    return {**summary, "iterations": iteration, "finished": finished, "skipped_existing": False,
            "seconds": round(time.time() - t_start, 2), "loss": loss_value,
            "model": str(model_path) if finished else None}
