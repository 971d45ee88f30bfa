"""Small helpers the stages share: their settings records and the maps they read. Device choice,
progress bars and the skip check live one layer down, in :mod:`rib_ext.runtime`."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

from rib_ext.io import file_is_complete  # noqa: F401  (the stages' skip check)
from rib_ext.outputs import split_complete  # noqa: F401
from rib_ext.runtime import progress, resolve_device  # noqa: F401  (the stages' helpers)


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
