"""Reading and writing images and label PNGs (Pillow only, no OpenCV).

Label PNGs hold class indices (0 = background, 1..K = classes, 255 = ignore). Two writers:
:func:`save_label_png`, PASCAL VOC's palette ("P") PNG (ground truth, test-server submissions),
and :func:`save_index_png`, a grayscale ("L") PNG for the intermediate labels that IRN-derived code
reads with ``imageio.imread`` (ir_label, CRF masks, pseudo masks): imageio expands a palette PNG
to H x W x 3 colours, but returns a grayscale one as the H x W indices, as IRN's own outputs are.
:func:`load_label_png` reads both.

EXIF orientation is ignored everywhere: images are read as their pixels are stored, as IRN's
loaders and ``PIL.Image.open`` read them, so a mask is the size of its image's stored pixels (a
mask drawn on the rotated view of an EXIF-rotated photo is refused when the dataset is opened,
naming both files, rather than mis-aligned).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from rib_ext.io import save_png

from .errors import DatasetError

IGNORE_INDEX = 255

# What Pillow raises for unreadable files: OSError (truncated, unidentified), SyntaxError and
# ValueError (broken headers of some formats), DecompressionBombError (absurd sizes).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _open_decoded(path: Path) -> Image.Image:
    """Open and fully decode ``path``; lazy decoding would hide a truncated file until later."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except _DECODE_ERRORS as e:
        raise DatasetError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image as ``uint8 [H, W, 3]`` RGB.

    Grayscale, CMYK, palette and RGBA files are converted (alpha dropped, not composited), because
    real datasets (COCO in particular) contain a few such JPEGs. A missing, corrupt or truncated file
    raises :class:`DatasetError` naming the path.
    """
    path = Path(path)
    img = _open_decoded(path)
    if img.mode != "RGB":
        try:
            img = img.convert("RGB")
        except _DECODE_ERRORS as e:
            raise DatasetError(f"{path}: cannot convert mode {img.mode!r} to RGB ({e})") from e
    return np.asarray(img, dtype=np.uint8)


@lru_cache(maxsize=1)
def _palette_array() -> np.ndarray:
    # The VOC devkit's colour map: the bits of the index are spread over the high bits of R, G, B.
    idx = np.arange(256)
    cmap = np.zeros((256, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (idx >> (3 * shift + channel)) & 1
            cmap[:, channel] |= bit << (7 - shift)
    cmap.setflags(write=False)
    return cmap.astype(np.uint8)


def voc_palette() -> np.ndarray:
    """The standard 256-entry PASCAL VOC colour map, ``uint8 [256, 3]`` (index 255 = (224, 224, 192))."""
    return _palette_array().copy()


def _rgb_to_index(rgb: np.ndarray, path: Path) -> np.ndarray:
    """Map a colour-coded label image back to palette indices (for PNGs saved as RGB by other tools)."""
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pal = _palette_array().astype(np.int64)
    pal_codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lut = {int(c): i for i, c in enumerate(pal_codes)}
    uniq, inverse = np.unique(codes, return_inverse=True)
    unknown = [int(c) for c in uniq if int(c) not in lut]
    if unknown:
        c = unknown[0]
        raise DatasetError(
            f"{path}: RGB label image has colour {(c >> 16, (c >> 8) & 255, c & 255)} "
            f"that is not in the VOC palette ({len(unknown)} unknown colours)"
        )
    return np.array([lut[int(c)] for c in uniq], dtype=np.uint8)[inverse].reshape(codes.shape)


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as ``uint8 [H, W]`` class indices (255 = ignore).

    Palette and 8-bit grayscale PNGs are read as stored; an RGB PNG is mapped back through the VOC
    palette (an unknown colour is an error rather than a silent wrong class).
    """
    path = Path(path)
    img = _open_decoded(path)
    if img.mode in ("P", "L"):
        return np.array(img, dtype=np.uint8)
    if img.mode in ("RGB", "RGBA"):
        return _rgb_to_index(np.asarray(img.convert("RGB")), path)
    raise DatasetError(f"{path}: label PNG has mode {img.mode!r}; expected palette (P) or grayscale (L)")


def label_image(arr: np.ndarray) -> Image.Image:
    """A ``uint8 [H, W]`` label array as a VOC-palette PIL image."""
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"label array must be 2-D [H, W], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"label values must lie in 0..255, got {arr.min()}..{arr.max()}")
        arr = arr.astype(np.uint8)
    h, w = arr.shape
    img = Image.frombytes("P", (w, h), np.ascontiguousarray(arr).tobytes())
    img.putpalette(_palette_array().tobytes())
    return img


def save_label_png(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write ``arr`` (``[H, W]`` class indices) as a VOC-palette PNG, atomically."""
    save_png(path, label_image(arr))


def save_index_png(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write ``arr`` (``[H, W]`` class indices) as a grayscale PNG, atomically: what IRN's steps
    write and read back with ``imageio.imread`` as ``H x W`` indices."""
    img = label_image(arr)
    save_png(path, Image.frombytes("L", img.size, img.tobytes()))


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(H, W)`` of an image from its header only (no decode)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            w, h = img.size
    except _DECODE_ERRORS as e:
        raise DatasetError(f"{path}: cannot read image header ({type(e).__name__}: {e})") from e
    return h, w


# Modes a label PNG may have: indices (P, L) or VOC colours (RGB, RGBA; see load_label_png).
LABEL_MODES = ("P", "L", "RGB", "RGBA")


def image_header(path: str | os.PathLike) -> tuple[int, int, str, int]:
    """``(H, W, mode, EXIF orientation)`` of an image from its header only (no decode); the
    orientation is 1 (none) when the file has no EXIF."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            w, h = img.size
            mode = img.mode
            orientation = 1
            # JPEG keeps EXIF in its header; other formats' getexif() may decode the whole image
            # (PNG), and a label PNG has no orientation to speak of.
            if img.format in ("JPEG", "MPO"):
                try:
                    orientation = int(img.getexif().get(0x0112, 1) or 1)
                except Exception:  # a broken EXIF block: the pixels are still readable
                    orientation = 1
    except _DECODE_ERRORS as e:
        raise DatasetError(f"{path}: cannot read image header ({type(e).__name__}: {e})") from e
    return h, w, mode, orientation


def check_label_header(path: str | os.PathLike, image_path: str | os.PathLike,
                       image_hw: tuple[int, int], image_orientation: int = 1) -> None:
    """A ground-truth mask's mode and size from its header, against its image's: what would
    otherwise stop an evaluation hours into a run stops when the dataset is opened."""
    h, w, mode, _ = image_header(path)
    if mode not in LABEL_MODES:
        depth = " (16-bit)" if mode.startswith("I;16") else ""
        raise DatasetError(f"{path}: mask has mode {mode!r}{depth}; expected an 8-bit palette (P) or "
                           f"grayscale (L) PNG of class indices")
    if (h, w) != tuple(image_hw):
        rotated = ""
        if (w, h) == tuple(image_hw) and image_orientation in (5, 6, 7, 8):
            rotated = (f"; {image_path} carries an EXIF rotation, which is ignored (images are read "
                       f"as stored): the mask must match the stored pixels")
        raise DatasetError(f"{path}: mask is {h}x{w} (HxW) but its image {image_path} is "
                           f"{image_hw[0]}x{image_hw[1]}{rotated}")
