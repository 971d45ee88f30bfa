"""What the three trainers (train_cam, train_irn, segment) share: resumable training states, random
states, a finite-loss guard and a CSV loss log.

A resumed run computes the same weights as an uninterrupted one when the trainer (1) takes its data
order and augmentation from (seed, epoch, position) alone (:func:`epoch_batches`), (2) saves a state
with :func:`save_training_state` every few steps, and (3) on start restores it with
:func:`load_training_state`, which also restores the torch / numpy / python random states.
"""
from __future__ import annotations

import csv
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

from rib_ext.checkpoints import CheckpointError, read_checkpoint, write_checkpoint
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


def read_loss_log(path: str | os.PathLike) -> List[Dict[str, float]]:
    """The rows of a :class:`LossLog` as dicts (integral columns as int, the others as float)."""
    with open(path, newline="") as f:
        return [{k: int(v) if v.lstrip("-").isdigit() else float(v) for k, v in r.items()}
                for r in csv.DictReader(f)]
