"""What the three trainers (train_cam, train_irn, segment) share: resumable training states, random
states, a finite-loss guard, a CSV loss log, and data-parallel training over the ranks of a
``torchrun`` launch.

A resumed run computes the same weights as an uninterrupted one when the trainer (1) takes its data
order and augmentation from (seed, epoch, position) alone (:func:`epoch_batches`), (2) saves a state
with :func:`save_training_state` every few steps, and (3) on start restores it with
:func:`load_training_state`, which also restores the torch / numpy / python random states.

Data-parallel training (:class:`DataParallel`): every rank holds the whole model in a
:class:`~torch.nn.parallel.DistributedDataParallel`; each global batch (the same list on every rank,
from (seed, epoch, position) as above) is cut into contiguous shares, ``len // world`` items each
and one more for the first ``len % world`` ranks (:func:`rank_share`). Each rank backpropagates its
share's loss *sum* times ``world / global count`` (:meth:`DataParallel.loss`); DDP averages the
gradients over the ranks, so the step is that of the whole batch's mean loss in one process, and
the recipe (batch size, learning rate, schedule) is unchanged. Rank 0 writes the states, the logs
and the model; every rank reads a state to resume.
"""
from __future__ import annotations

import csv
import inspect
import logging
import math
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from rib_ext import distributed
from rib_ext.checkpoints import CheckpointError, read_checkpoint, write_checkpoint
from rib_ext.config import ConfigError
from rib_ext.io import file_is_complete, save_text

STATE_VERSION = 1

log = logging.getLogger("rib_ext.training")


# ----------------------------------------------------------------------------------- random states

def trained_model_exists(path: str | os.PathLike, stage: str) -> bool:
    """True when a trainer's final model file exists and is whole: the trainer then returns at
    once (a rerun resumes past it). A truncated one is named in a warning and trained again."""
    path = Path(path)
    if not path.exists():
        return False
    if file_is_complete(path):
        return True
    warnings.warn(f"{stage}: {path} is truncated; training again", stacklevel=3)
    return False


def rng_state() -> Dict[str, Any]:
    """Global RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(internal), gauss_next]}


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ------------------------------------------------------------------------------------ data order

def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, drop_last: bool = True
                  ) -> List[List[Tuple[int, int]]]:
    """The batches of one epoch: a shuffle of ``range(n)`` seeded by (seed, epoch), each item paired
    with its own augmentation seed; the incomplete last batch is dropped when ``drop_last``.

    Used as a DataLoader's ``batch_sampler`` (the dataset takes ``(index, seed)`` keys), it makes
    the data a function of (seed, epoch, position) alone: worker count and restarts cannot change it.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    seeds = rng.integers(0, 2 ** 63 - 1, size=n)
    steps = n // batch_size if drop_last else -(-n // batch_size)
    return [[(int(order[j]), int(seeds[j])) for j in range(s * batch_size, min(n, (s + 1) * batch_size))]
            for s in range(steps)]


# ------------------------------------------------------------------------------- training states

@dataclass
class TrainingState:
    """What :func:`load_training_state` hands back besides the restored model and optimizer."""

    step: int  # optimizer steps taken so far (global, over epochs)
    seconds: float = 0.0  # training time spent before this start
    extra: Dict[str, Any] = field(default_factory=dict)


def settings_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """``"lr: 0.1 -> 0.2; epochs: 5 -> 6"`` for the fields that differ."""
    keys = sorted(set(old) | set(new))
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


def _plain(value: Any) -> Any:
    # Tuples come back from a weights_only load as lists: compare settings in one form.
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def save_training_state(path: str | os.PathLike, *, format: str, settings: Mapping[str, Any],
                        step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        seconds: float = 0.0, extra: Optional[Mapping[str, Any]] = None) -> None:
    """Write a resumable state atomically: model, optimizer, global step, random states, the
    settings it was made with (plain values) and ``extra`` (plain values or tensors)."""
    write_checkpoint(path, {"format": format, "version": STATE_VERSION, "settings": _plain(dict(settings)),
                            "step": int(step), "seconds": float(seconds), "rng": rng_state(),
                            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "extra": dict(extra or {})})


def load_training_state(path: str | os.PathLike, *, format: str, settings: Mapping[str, Any],
                        model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        what: str = "training state", restore_rng: bool = True,
                        map_location: str | torch.device = "cpu") -> TrainingState:
    """Restore a state written by :func:`save_training_state` into ``model`` and ``optimizer``.

    A state made with other ``settings`` is refused with a :class:`CheckpointError` naming the fields
    that differ (resuming it would silently mix two runs).
    """
    hint = "; delete it to start over"
    record = read_checkpoint(path, format, STATE_VERSION, what, hint, map_location)
    ours = _plain(dict(settings))
    if record.get("settings") != ours:
        raise CheckpointError(f"{path}: written with other training settings ({settings_diff(record.get('settings') or {}, ours)}); "
                              f"use the same settings to resume, or delete it to start over")
    try:
        model.load_state_dict(record["model"])
        optimizer.load_state_dict(record["optimizer"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: the saved model or optimizer does not fit this network "
                              f"({type(err).__name__}: {err}){hint}") from err
    if restore_rng:
        set_rng_state(record["rng"])
    # Said aloud: a run that starts mid-way must not pass for a fresh one.
    log.info(f"resuming {what.replace(' training state', '')} from step {int(record['step'])} ({path})")
    return TrainingState(int(record["step"]), float(record.get("seconds", 0.0)), dict(record.get("extra") or {}))


# -------------------------------------------------------------------------------- loss guard, log

class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: training diverged (the message names where)."""


def check_finite(loss: float, stage: str, *, step: int, lr: float, epoch: Optional[int] = None,
                 epochs: Optional[int] = None, hint: str = "") -> None:
    """Raise :class:`NonFiniteLossError` naming the epoch, step and learning rate when ``loss`` is
    not finite; a diverged run would otherwise save NaN weights and all-zero maps."""
    if math.isfinite(loss):
        return
    where = f"epoch {epoch + 1}/{epochs}, " if epoch is not None else ""
    raise NonFiniteLossError(f"{stage}: the loss is {loss} at {where}step {step} with learning rate "
                             f"{lr:g}: training diverged; lower the learning rate or check the "
                             f"labels{hint}")


class LossLog:
    """A CSV loss log that survives resume: rows of steps after ``resume_step`` (run again after a
    restart) are dropped when it opens, by an atomic rewrite, so the log of a resumed run has no
    duplicate rows and reads like that of an uninterrupted one. Each row is flushed as written.

    ``columns``: the header; ``step_column`` is the one compared with ``resume_step``.
    """

    def __init__(self, path: str | os.PathLike, columns: Sequence[str], resume_step: int = 0,
                 step_column: str = "step"):
        self.path = Path(path)
        self.columns = tuple(columns)
        key = self.columns.index(step_column)
        rows = []
        if resume_step > 0 and self.path.is_file():
            with open(self.path, newline="") as f:
                for row in csv.reader(f):
                    # A row cut by a kill has too few fields: it is dropped with the others.
                    if len(row) == len(self.columns) and row[key].isdigit() and int(row[key]) <= resume_step:
                        rows.append(row)
        save_text(self.path, "".join(",".join(r) + "\n" for r in [list(self.columns), *rows]))
        self._file = open(self.path, "a", newline="")
        self._csv = csv.writer(self._file)

    def write(self, **row: Any) -> None:
        # repr keeps every digit of a float, so the logs of a straight and a resumed run compare exactly.
        self._csv.writerow([repr(row[c]) if isinstance(row[c], float) else row[c] for c in self.columns])
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "LossLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullLog:
    """The :class:`LossLog` of ranks other than 0: the log is rank 0's."""

    def write(self, **row: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "NullLog":
        return self

    def __exit__(self, *exc) -> None:
        pass


def read_loss_log(path: str | os.PathLike) -> List[Dict[str, float]]:
    """The rows of a :class:`LossLog` as dicts (integral columns as int, the others as float)."""
    with open(path, newline="") as f:
        return [{k: int(v) if v.lstrip("-").isdigit() else float(v) for k, v in r.items()}
                for r in csv.DictReader(f)]


# ------------------------------------------------------------------------ data-parallel training

def rank_share(batch: Sequence, rank: int, world: int) -> list:
    """Rank ``rank``'s contiguous share of a global batch: ``len // world`` items, one more for the
    first ``len % world`` ranks (a batch of 10 on 4 ranks: 3, 3, 2, 2)."""
    q, extra = divmod(len(batch), world)
    start = rank * q + min(rank, extra)
    return list(batch[start:start + q + (1 if rank < extra else 0)])


class ShardedBatches:
    """A DataLoader ``batch_sampler``: this rank's :func:`rank_share` of each batch of ``batches``
    (a list of batches or a batch sampler with ``len``)."""

    def __init__(self, batches, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            yield rank_share(batch, self.rank, self.world)


class DataParallel:
    """One trainer's view of the ranks: wraps the model in DDP when the run is distributed, shards
    each global batch, and turns a share's loss sum into the loss to backpropagate.

    ``stage`` names the trainer in messages; ``batch_size`` is the global batch, checked to give
    every rank at least one item (DDP needs every rank in every step, and an empty share has no
    loss to backpropagate).
    """

    def __init__(self, stage: str, batch_size: int):
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        if batch_size < self.world:
            raise ConfigError(f"{stage}: a batch of {batch_size} image(s) cannot be shared by "
                              f"{self.world} ranks (each needs at least one); use at most "
                              f"{batch_size} ranks or a larger batch")

    @property
    def active(self) -> bool:
        return self.world > 1

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` in DDP when distributed (else itself). Rank 0's weights are copied to every
        rank here. Buffers are not broadcast at each step: the frozen batch norms' never change,
        and the ones that do (IRN's mean shift, the demo's batch statistics) are reduced over the
        ranks inside the model."""
        if not self.active:
            return model
        ids = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel
        # Newer torch names the per-step buffer sync forward_sync_buffers (older: broadcast_buffers).
        sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters \
            else "broadcast_buffers"
        return ddp(model, device_ids=ids, **{sync: False})

    def batches(self, batches):
        """This rank's share of each global batch (the batches themselves when not distributed)."""
        return ShardedBatches(batches, self.rank, self.world) if self.active else batches

    def loss_log(self, path: str | os.PathLike, columns: Sequence[str], resume_step: int = 0,
                 step_column: str = "step"):
        """Rank 0's :class:`LossLog`; on the other ranks a log that writes nothing."""
        if self.is_main:
            return LossLog(path, columns, resume_step, step_column)
        return NullLog()

    def finish(self, what: str) -> None:
        """Wait until rank 0 has written ``what`` (the model, read by the next stage)."""
        distributed.barrier(f"rank 0 is writing {what}" if not self.is_main
                            else f"the other ranks, after writing {what}")

    def count(self, local: torch.Tensor) -> torch.Tensor:
        """A count (of images, pixels, pairs) summed over the ranks."""
        return distributed.all_reduce_tensor(local)

    def loss(self, local_sum: torch.Tensor, global_count) -> Tuple[torch.Tensor, float]:
        """(loss to backpropagate on this rank, the global batch's loss) for a loss that is a sum
        over items divided by ``global_count`` (the count over all ranks). DDP averages gradients
        over the ranks, hence the factor ``world``; the global value is reduced for the log and
        the finite check, which every rank then makes alike."""
        backward = local_sum * (self.world / global_count)
        value = distributed.all_reduce_tensor(local_sum.detach()) / global_count
        return backward, float(value)
