"""Atomic file writes: a crash never leaves a half-written output under its final name.

Every stage writes through these helpers, so a rerun can trust that an existing output is complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_npy(path: str | os.PathLike, obj: Any) -> None:
    """``np.save`` atomically (objects such as IRN's map dicts are pickled, as IRN reads them)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, obj, allow_pickle=True)


def load_npy_dict(path: str | os.PathLike) -> dict:
    """Load a dict saved by :func:`save_npy` (IRN's ``.npy`` map format)."""
    return np.load(path, allow_pickle=True).item()


def save_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_png(path: str | os.PathLike, image) -> None:
    """Save a PIL image atomically (format inferred from the final name, not the temp name)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            image.save(f, format="PNG")
