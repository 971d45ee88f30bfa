"""Small helpers the stages share: device choice, output listing and checking, progress bars."""
from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from rib_ext.io import file_is_complete  # noqa: F401  (the stages' skip check)

log = logging.getLogger("rib_ext.progress")


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but no CUDA device is available")
    return dev


def progress(iterable: Iterable, desc: str, total: int | None = None, **kw):
    """A tqdm bar on a terminal; elsewhere (a log file, CI) a line every 10 % at most every few
    seconds, and one at the end, instead of hundreds of redraws."""
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True, leave=False, **kw)
    return LineProgress(iterable, desc, total)


class LineProgress:
    """The part of tqdm's interface the stages use (iterate, update, set_postfix, close)."""

    min_seconds = 5.0

    def __init__(self, iterable: Iterable | None, desc: str, total: int | None = None):
        self.iterable, self.desc = iterable, desc
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.postfix = total, 0, ""
        self.t0 = self.t_last = time.time()
        self.next_fraction = 0.1
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self):
        return self.total or 0

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.total:
            return
        now = time.time()
        if self.n / self.total >= self.next_fraction and now - self.t_last >= self.min_seconds \
                and self.n < self.total:
            self._line(now)
        while self.next_fraction <= self.n / self.total:
            self.next_fraction += 0.1

    def _line(self, now: float) -> None:
        self.t_last = now
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        extra = f" ({self.postfix})" if self.postfix else ""
        log.info("%s: %s in %.0f s%s", self.desc, done, now - self.t0, extra)

    def close(self) -> None:
        if not self.closed and self.n:
            self._line(time.time())
        self.closed = True


# ------------------------------------------------------------------ existing outputs that load

def split_complete(paths: dict, what: str) -> tuple[list, list]:
    """(keys whose file exists and is whole, keys to (re)make); broken files are named in one
    warning, then made again."""
    done, todo, broken = [], [], []
    for key, path in paths.items():
        if not Path(path).exists():
            todo.append(key)
        elif file_is_complete(path):
            done.append(key)
        else:
            broken.append(str(path))
            todo.append(key)
    if broken:
        shown = ", ".join(broken[:5]) + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
        warnings.warn(f"{what}: {len(broken)} existing file(s) are empty or truncated and are made "
                      f"again: {shown}", stacklevel=3)
    return done, todo


def result_settings(section, drop: Sequence[str] = ()) -> dict:
    """A stage config's fields that shape its outputs, as plain values (for provenance): the
    device, worker count, checkpoint cadence and missing-file policy do not."""
    from rib_ext.config import plain_dict

    skip = {"device", "num_workers", "checkpoint_every", "tensorboard", "on_missing", *drop}
    return {k: v for k, v in plain_dict(section).items() if k not in skip}


def map_path(maps_dir: Path, name: str) -> Path:
    return Path(maps_dir) / f"{name}.npy"


def missing_maps(maps_dir: Path, names: Sequence[str]) -> list[str]:
    return [n for n in names if not map_path(maps_dir, n).exists()]


def require_maps(maps_dir: Path, names: Sequence[str], stage: str, allow_missing: bool = False) -> list[str]:
    """The names whose maps exist; missing ones raise (naming a few) or warn when allowed."""
    missing = missing_maps(maps_dir, names)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        msg = f"{stage}: {len(missing)} of {len(names)} images have no maps in {maps_dir}: {shown}"
        if not allow_missing:
            raise FileNotFoundError(msg + " (run the stage that makes them, or pass --allow-missing)")
        warnings.warn(msg + "; they are skipped", stacklevel=2)
    missing_set = set(missing)
    return [n for n in names if n not in missing_set]
