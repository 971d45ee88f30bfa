"""What VOC and COCO datasets share: an id list, image-level labels, images and optional masks.

Subclasses fill ``_ids``, ``_labels`` (id -> float32 [K]) and ``_class_names`` and implement
``image_path`` and ``_mask_path_or_array``; everything the stages call lives here, so both
datasets expose exactly the same interface.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from .errors import DatasetError
from .images import check_label_header, image_header, image_size, load_rgb
from ..io import preview  # noqa: F401  (the datasets name a few ids in their messages)


# Images above this many pixels are refused when a dataset is opened (raise it with the datasets'
# ``max_pixels`` or the pipeline's --max-pixels): VOC's and COCO's are at most 640x640 (0.4 MP);
# the classifier's multi-scale maps of a 4000x4000 photo (scale 2: 8000x8000) need tens of GB and
# used to fail minutes into make_cam with an allocation error naming no image.
MAX_PIXELS = 2_000_000


def check_max_pixels(max_pixels: Optional[int]) -> Optional[int]:
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int)
                                   or max_pixels < 1):
        raise DatasetError(f"max_pixels must be a positive integer (or None: no limit), got "
                           f"{max_pixels!r}")
    return max_pixels


def drop_unlabelled(ids: Sequence[str], labels: Mapping[str, np.ndarray], where: str) -> list[str]:
    """Ids that have at least one class; the others are dropped with a warning naming them.

    The authors' loaders skip such images too: with no class there is nothing to localise, and for
    RIB they cannot be the target of an adaptation.
    """
    kept = [i for i in ids if labels[i].any()]
    if len(kept) < len(ids):
        empty = [i for i in ids if not labels[i].any()]
        warnings.warn(f"{where}: skipping {len(empty)} image(s) with no class: {preview(empty)}", stacklevel=3)
    if not kept:
        raise DatasetError(f"{where}: no image with at least one class remains")
    return kept


class SegmentationDataset:
    """Common read-only interface (see the module docstring)."""

    _ids: list[str]
    _labels: dict[str, np.ndarray]
    _class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {self.num_classes} classes)"

    @property
    def ids(self) -> list[str]:
        """Image ids in list order (file stems)."""
        return list(self._ids)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Foreground class names; class ``c`` is label index ``c`` and mask value ``c + 1``."""
        return self._class_names

    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    def name(self, i: int) -> str:
        return self._ids[i]

    def labels(self, i: int) -> np.ndarray:
        """Image-level labels of image ``i``: float32 [K] of 0/1."""
        return self._labels[self._ids[i]].copy()

    def label_matrix(self) -> np.ndarray:
        """All labels as float32 [N, K] (built once; RIB samples its "other images" from it)."""
        if getattr(self, "_label_matrix", None) is None:
            mat = np.stack([self._labels[i] for i in self._ids]).astype(np.float32)
            mat.setflags(write=False)
            self._label_matrix = mat
        return self._label_matrix

    def image_path(self, i: int) -> Path:
        raise NotImplementedError

    def image(self, i: int) -> np.ndarray:
        """uint8 [H, W, 3] RGB."""
        return load_rgb(self.image_path(i))

    def image_size(self, i: int) -> tuple[int, int]:
        """``(H, W)`` without decoding the image."""
        return image_size(self.image_path(i))

    def check_headers(self, max_pixels: Optional[int] = MAX_PIXELS) -> None:
        """Every image's and ground-truth mask's header (no decode, about 0.1 ms a file): an
        image above ``max_pixels`` (None: no limit), a mask that is not 8-bit palette/grayscale or
        not its image's size stop here, naming the file, rather than a stage hours later."""
        max_pixels = check_max_pixels(max_pixels)
        for i in range(len(self._ids)):
            h, w, _, orientation = image_header(self.image_path(i))
            self.check_image_header(i, (h, w), orientation, max_pixels)

    def check_image_header(self, i: int, hw: tuple[int, int], orientation: int,
                           max_pixels: Optional[int]) -> None:
        """:meth:`check_headers` for image ``i`` whose header gave ``hw`` and its EXIF orientation."""
        path, (h, w) = self.image_path(i), hw
        if max_pixels is not None and h * w > max_pixels:
            raise DatasetError(f"{path}: image {self._ids[i]} is {h}x{w} (HxW, {h * w} pixels), above "
                               f"the limit of {max_pixels} pixels that the stages are sized for; "
                               f"resize it, or raise the limit (--max-pixels, or the dataset's "
                               f"max_pixels) if the machine has the memory")
        mask = self.mask_file(i)
        if mask is not None and mask.is_file():
            check_label_header(mask, path, (h, w), orientation)

    def _mask_path_or_array(self, i: int) -> tuple[Optional[np.ndarray], str]:
        """The mask of image ``i`` (or None) and where it came from, for error messages."""
        raise NotImplementedError

    def annotation_files(self) -> list[Path]:
        """Every file the labels and ground-truth masks of the listed images are read from."""
        return []

    def annotation_fingerprint(self) -> str:
        """sha256 over the contents of :meth:`annotation_files` (cached by size and modification
        time): provenance compares it, so an edited label or mask stops the reuse of outputs
        made from the old ones."""
        import hashlib

        from rib_ext.io import file_digest

        root = Path(getattr(self, "root", "/"))
        h = hashlib.sha256()
        for path in self.annotation_files():
            try:
                name = path.relative_to(root).as_posix()
            except ValueError:
                name = path.name
            h.update(f"{name}\0{file_digest(path)}\n".encode())
        return h.hexdigest()

    def mask_file(self, i: int) -> Optional[Path]:
        """The file image ``i``'s ground-truth mask is read from (where it is expected, whether it
        exists or not), or None when masks are made from the annotations (COCO's instances)."""
        return None

    def has_mask(self, i: int) -> bool:
        path = self.mask_file(i)
        return path is None or path.is_file()

    def mask(self, i: int) -> Optional[np.ndarray]:
        """Ground-truth class-index mask uint8 [H, W] (0 bg, c+1 class c, 255 ignore), or None."""
        mask, source = self._mask_path_or_array(i)
        if mask is None:
            return None
        size = self.image_size(i)
        if mask.shape != size:
            raise DatasetError(
                f"{source}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image "
                f"{self.image_path(i)} is {size[0]}x{size[1]}"
            )
        check_mask_values(mask, self.num_classes, source)
        return mask


def check_mask_values(mask: np.ndarray, num_classes: int, source: str) -> None:
    """A ground-truth value above the class count (and not 255, ignore) would be counted as no
    class at all or stop the confusion matrix deep in an evaluation: name the file instead."""
    top = int(mask.max()) if mask.size else 0
    if top <= num_classes:
        return
    values = np.unique(mask)
    bad = [int(v) for v in values if num_classes < v < 255]
    if bad:
        raise DatasetError(f"{source}: mask holds value(s) {preview(bad)}, above the {num_classes} "
                           f"classes of the dataset (0 background, 1..{num_classes} the classes, "
                           f"255 ignored)")
