"""Training the toy classifier with the sigmoid BCE loss (the bottlenecked baseline, theta_0)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rib_ext.toy.config import ToyConfig
from rib_ext.toy.data import ToyData
from rib_ext.toy.model import ToyNet


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels.long(), num_classes).float()


def train_classifier(cfg: ToyConfig, data: ToyData, seed: int) -> tuple[ToyNet, dict]:
    """A ToyNet trained on all toy images (the paper's classifier sees the shapes too: that is how
    they become class-relevant); returns it in eval mode with its training statistics."""
    torch.manual_seed(seed)
    model = ToyNet.from_config(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    targets = one_hot(data.labels, len(cfg.classes))
    gen = torch.Generator().manual_seed(seed)
    steps = cfg.epochs * -(-len(data) // cfg.batch_size)
    # Decaying to zero makes the last epochs settle: at a constant rate the final weights can land
    # on a loss spike and misclassify a tenth of the set.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    model.train()
    for _ in range(cfg.epochs):
        total = 0.0
        for batch in torch.randperm(len(data), generator=gen).split(cfg.batch_size):
            loss = F.binary_cross_entropy_with_logits(model(data.images[batch]), targets[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(batch)
    model.eval()
    return model, {"final_epoch_bce": total / len(data), **accuracy(model, data)}


@torch.no_grad()
def accuracy(model: ToyNet, data: ToyData) -> dict:
    correct = model(data.images).argmax(1) == data.labels
    return {"train_accuracy": float(correct.float().mean()),
            "shape_image_accuracy": float(correct[data.has_shape].float().mean())}
