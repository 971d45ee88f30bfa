"""Small helpers the stages share: device choice, output listing, progress bars."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but no CUDA device is available")
    return dev


def progress(iterable: Iterable, desc: str, total: int | None = None, **kw):
    return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True, leave=False, **kw)


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
