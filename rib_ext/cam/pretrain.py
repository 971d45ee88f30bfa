"""Pretraining the demo's backbone on the demo world (the demo's own "ImageNet").

    nice -n 10 python -m rib_ext.cam.pretrain            # writes the shipped file, prints its sha256

A narrow ResNet (``resnet_tiny``) learns the 40 classes of :mod:`rib_ext.data.demo_world` from
random weights with image-level labels (multi-label soft-margin loss, every stage trained, batch
statistics in the batch norms), then its backbone (torchvision names, the learnt running statistics
included, no classifier) is written as the demo's starting weights:
:data:`rib_ext.models.pretrained.SHIPPED`. The demo's classifier is then fine-tuned from it the way
IRN fine-tunes from ImageNet weights (frozen stem, fixed batch norm, the backbone at a tenth of the
classifier's learning rate), and IRN's backbone starts from it too.

The run is a function of its settings alone: the world's images are fixed by (seed, index); the
data order and the augmentation by (seed, epoch, batch); torch's deterministic algorithms on a fixed
number of threads. The same command on the CPU with the same torch version writes the same file,
byte for byte.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from rib_ext.data.demo_world import WORLD_SPECIES, WORLD_VERSION, world_arrays
from rib_ext.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from rib_ext.io import atomic_path, file_sha256
from rib_ext.models import CAMNet
from rib_ext.models.pretrained import SHIPPED, shipped_path
from rib_ext.sgd import poly_factor

PRETRAIN_FORMAT = "rib_ext.pretrained_backbone"


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    images: int = 6000  # world training images
    held_out: int = 400  # world images after them, for the accuracy printed at the end
    epochs: int = 12
    batch_size: int = 32
    lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 0.9
    image_size: int = 128
    resize_long: tuple = (88, 136)  # each batch rescaled to one random size in this range
    crop: int = 112
    seed: int = 0
    # Fixed: the sums' order, hence the bits, may depend on it. One thread is also the fastest per
    # image for this narrow network (two threads spend more time than they save on 2 cores).
    threads: int = 1


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def _batch(images: np.ndarray, idx: np.ndarray, rng: np.random.Generator, cfg: PretrainConfig) -> torch.Tensor:
    x = torch.from_numpy(images[idx]).permute(0, 3, 1, 2)
    flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    x = _normalise(x)
    side = int(rng.integers(cfg.resize_long[0], cfg.resize_long[1] + 1))
    x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    if side > cfg.crop:
        y0, x0 = (int(v) for v in rng.integers(0, side - cfg.crop + 1, 2))
        x = x[:, :, y0:y0 + cfg.crop, x0:x0 + cfg.crop]
    return x.contiguous()


def _poly(step: int, total: int, lr: float) -> float:
    return lr * poly_factor(step, total, 0.9)


@torch.no_grad()
def _accuracy(model: CAMNet, images: np.ndarray, labels: np.ndarray) -> dict:
    """Exact-set accuracy (every class right at logit 0) and mean per-class AP-free recall/precision."""
    model.eval()
    preds = []
    for i in range(0, len(images), 64):
        preds.append(model(_normalise(torch.from_numpy(images[i:i + 64]).permute(0, 3, 1, 2))) > 0)
    model.train()
    p = torch.cat(preds).numpy()
    t = labels > 0.5
    tp = (p & t).sum()
    return {"exact": round(float((p == t).all(1).mean()), 4),
            "precision": round(float(tp / max(1, p.sum())), 4), "recall": round(float(tp / max(1, t.sum())), 4)}


def write_reproducibly(path: Path, record: dict) -> None:
    """``torch.save(record)`` to ``path`` atomically, the same bytes for the same record: torch
    names the archive inside the file after the file it writes to (here a temporary name), so the
    record is serialised in memory first, where the archive's name is always ``archive``."""
    buf = io.BytesIO()
    torch.save(record, buf)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())


def pretrain(cfg: PretrainConfig, out: Optional[Path] = None, log=print) -> Path:
    """Train on the world and write the backbone to ``out`` (default: the shipped file)."""
    out = Path(out) if out is not None else shipped_path("demo_world", check=False)
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    images, labels = world_arrays(cfg.images + cfg.held_out, cfg.seed, cfg.image_size)
    log(f"pretrain: {cfg.images} + {cfg.held_out} world images drawn in {time.time() - t0:.1f} s")
    train_x, train_y = images[:cfg.images], labels[:cfg.images]
    model = CAMNet("resnet_tiny", len(WORLD_SPECIES), strides=(2, 2, 1, 1), from_scratch=True)
    params = [p for group in model.trainable_parameters() for p in group]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = cfg.images // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    step = 0
    model.train()
    for epoch in range(cfg.epochs):
        order = np.random.default_rng([cfg.seed, epoch, 0]).permutation(cfg.images)
        running = 0.0
        for b in range(steps_per_epoch):
            rng = np.random.default_rng([cfg.seed, epoch, b + 1])
            idx = np.sort(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
            x = _batch(train_x, idx, rng, cfg)
            loss = F.multilabel_soft_margin_loss(model(x), torch.from_numpy(train_y[idx]))
            for group in opt.param_groups:
                group["lr"] = _poly(step, total, cfg.lr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            running += loss.item()
        log(f"pretrain: epoch {epoch + 1}/{cfg.epochs} loss {running / steps_per_epoch:.4f} "
            f"({time.time() - t0:.0f} s)")
    seconds = time.time() - t0
    acc = _accuracy(model, images[cfg.images:], labels[cfg.images:]) if cfg.held_out else {}
    log(f"pretrain: held-out world images {acc}; {seconds:.0f} s")
    state = {k: v.detach().clone().contiguous() for k, v in model.torchvision_view().state_dict().items()}
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    record = {"format": PRETRAIN_FORMAT, "backbone": "resnet_tiny", "state_dict": state,
              "meta": {"world_version": WORLD_VERSION, "classes": len(WORLD_SPECIES), "settings": settings,
                       "torch": str(torch.__version__), "held_out": acc}}
    write_reproducibly(out, record)
    log(f"pretrain: wrote {out} ({out.stat().st_size / 1e6:.2f} MB) sha256 {file_sha256(out)}; "
        f"time excluded from the file, {seconds:.0f} s on {cfg.threads} threads")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rib_ext.cam.pretrain", description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(PretrainConfig):
        if isinstance(f.default, tuple):
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=int, nargs=2, default=f.default)
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"the file to write (default: the shipped {SHIPPED['demo_world'].file})")
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    cfg = PretrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    if cfg.images < cfg.batch_size or min(cfg.epochs, cfg.threads, cfg.batch_size) < 1:
        print(f"error: pretraining needs --images >= --batch-size ({cfg.batch_size}) and positive "
              f"epochs, threads and batch size; got {json.dumps(dataclasses.asdict(cfg))}", file=sys.stderr)
        return 2
    pretrain(cfg, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
