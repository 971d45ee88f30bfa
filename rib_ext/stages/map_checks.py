"""Checks of the maps make_cam and rib write. Non-finite maps, or maps that are zero for every
image, come from a diverged network, never a result to evaluate: an all-zero map set scores a
plausible-looking mIoU (14 on the demo: every pixel background) with an undefined precision.
One image whose maps are zero is possible for a weak classifier: it is named in a warning."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import List, Optional

import numpy as np

from rib_ext.stages.context import PipelineError


class BadMapsError(PipelineError):
    """Maps that are not finite, or all zero for every image (the message names images)."""


def _keys(maps: dict) -> list:
    return np.asarray(maps["keys"]).tolist()


def is_empty(maps: dict) -> bool:
    """Whether an image with classes got maps that are zero everywhere for all of them (an image
    with no class, keys empty on COCO, has nothing to show and is not empty in this sense)."""
    return len(maps["keys"]) > 0 and not (np.asarray(maps["high_res"]) > 0).any()


class MapChecker:
    """Used by a stage while it writes maps: :meth:`check` before each write (non-finite maps
    raise at once, naming the image), :meth:`written` after it, :meth:`finish` at the end."""

    def __init__(self, stage: str, cause: str):
        self.stage, self.cause = stage, cause
        self.count = 0
        self.empty: List[tuple] = []  # (name, path) of images whose maps are zero everywhere

    def check(self, maps: dict, name: str) -> None:
        if len(maps["keys"]) and not np.isfinite(np.asarray(maps["high_res"])).all():
            raise BadMapsError(f"{self.stage}: image {name} (classes {_keys(maps)}) got maps with "
                               f"non-finite values: {self.cause}; nothing was written for it")

    def written(self, maps: dict, name: str, path: Optional[Path] = None) -> None:
        if len(maps["keys"]):
            self.count += 1
            if is_empty(maps):
                self.empty.append((name, path))

    def finish(self) -> None:
        """Raise when every image's maps are empty (their files are removed first, so a rerun
        does not take them for done); warn naming the images when only some are."""
        if not self.empty:
            return
        names = [n for n, _ in self.empty]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        if len(self.empty) == self.count:
            for _, path in self.empty:
                if path is not None:
                    Path(path).unlink(missing_ok=True)
            raise BadMapsError(f"{self.stage}: the maps of all {self.count} images are zero "
                               f"everywhere for every class of the image ({shown}): {self.cause}; "
                               f"they were not kept")
        warnings.warn(f"{self.stage}: {len(names)} of {self.count} images got maps that are zero "
                      f"everywhere for all their classes (a weak classifier?): {shown}", stacklevel=2)
