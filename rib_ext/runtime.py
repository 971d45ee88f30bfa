"""Run-time helpers every layer above may use: device choice and progress bars. Nothing here knows
about stages or the method."""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from typing import Iterable

import torch
from tqdm.auto import tqdm

log = logging.getLogger("rib_ext.progress")


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """The package's own warnings as one line, ``warning: message`` (no source path or line:
    they speak to the user, not to a developer); others as Python formats them."""
    if os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep) and issubclass(category, UserWarning):
        return f"warning: {message}\n"
    return _default_format(message, category, filename, lineno, line)


_default_format = warnings.formatwarning


def install_warning_format() -> None:
    """Format printed warnings with :func:`_format_warning` (the command lines call this once).
    Only the formatting changes: a caller recording warnings (``catch_warnings(record=True)``,
    ``pytest.warns``) still receives them."""
    global _default_format
    if warnings.formatwarning is not _format_warning:
        _default_format = warnings.formatwarning
        warnings.formatwarning = _format_warning


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but no CUDA device is available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {device!r} asked for, but no Apple MPS device is available")
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
