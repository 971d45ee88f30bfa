"""MS COCO 2014 through pycocotools, exposed with the same interface as :class:`VOCDataset`.

    root/train2014/COCO_train2014_<12 digits>.jpg   (and val2014/)
    root/annotations/instances_{train,val}2014.json

Ids are file stems (``COCO_train2014_000000000009``); labels are float32 [80] in the standard
category-id order (:data:`COCO_CLASSES`); mask value ``c + 1`` is class ``c``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from rib_ext.io import remember_digest, save_json

from .base import MAX_PIXELS, SegmentationDataset, check_max_pixels, drop_unlabelled, preview
from .errors import DatasetError
from .images import IGNORE_INDEX, image_header, load_label_png, save_label_png
from .voc import given_ids, read_id_list

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
# COCO's category ids run 1..90 with ten unused; these are the 80 used ones, in COCO_CLASSES order.
_UNUSED_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in _UNUSED_IDS)
# category id -> mask value 1..80 (label index + 1)
CATEGORY_TO_INDEX = {cid: k + 1 for k, cid in enumerate(COCO_CATEGORY_IDS)}

SPLITS = ("train", "val")


def _normalise_split(split: str) -> str:
    s = split[:-4] if split.endswith("2014") else split
    if s not in SPLITS:
        raise DatasetError(f"unknown COCO split {split!r}; expected one of train, val, train2014, val2014")
    return s


def _infer_split(ids: Sequence[str], where: str) -> str:
    splits = {s for s in SPLITS for i in ids if i.startswith(f"COCO_{s}2014_")}
    if len(splits) != 1:
        raise DatasetError(
            f"{where}: cannot tell the split from the ids (expected all COCO_train2014_* or all "
            f"COCO_val2014_*, e.g. {preview(ids, 2)}); pass split='train' or 'val'"
        )
    return splits.pop()


# ---------------------------------------------------------------------------------------------
# Instances -> semantic mask


def decode_segmentation(segm, height: int, width: int) -> np.ndarray:
    """One annotation's ``segmentation`` (polygons, RLE or uncompressed RLE) as a bool [H, W] mask."""
    from pycocotools import mask as mask_utils

    if isinstance(segm, list):
        # Degenerate polygons (< 3 points) exist in COCO and make pycocotools fail.
        polys = [p for p in segm if len(p) >= 6]
        if not polys:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        rle = segm
    with warnings.catch_warnings():
        # pycocotools' Cython decoder predates numpy 2's __array__(copy=...) protocol; harmless.
        warnings.filterwarnings("ignore", message=r"__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def semantic_mask(anns: Sequence[dict], height: int, width: int) -> np.ndarray:
    """The usual instance-to-semantic conversion, uint8 [H, W]:

    1. start from 0 (background);
    2. paint every crowd region (``iscrowd=1``) 255 (ignore);
    3. paint the non-crowd instances with their class value (1..80), in order of decreasing pixel
       area (ties in annotation order), so a smaller object lying on a larger one stays visible and
       an individual annotated inside a crowd region keeps its class.
    """
    mask = np.zeros((height, width), dtype=np.uint8)
    drawn = []
    for order, ann in enumerate(anns):
        region = decode_segmentation(ann["segmentation"], height, width)
        if ann.get("iscrowd", 0):
            mask[region] = IGNORE_INDEX
        else:
            drawn.append((-int(region.sum()), order, CATEGORY_TO_INDEX[ann["category_id"]], region))
    for _, _, value, region in sorted(drawn, key=lambda t: (t[0], t[1])):
        mask[region] = value
    return mask


# ---------------------------------------------------------------------------------------------
# The dataset


# Bump when semantic_mask changes what it draws: cached masks of an older version are rebuilt.
MASK_VERSION = 1
CACHE_RECORD = "SOURCE.json"
CACHE_FORMAT = "rib_ext.coco_mask_cache"


def _load_coco(ann_file: Path):
    """(pycocotools COCO object, fingerprint of the file's bytes) from one read of the file."""
    from pycocotools.coco import COCO

    if not ann_file.is_file():
        raise DatasetError(f"{ann_file}: annotation file not found")
    raw = ann_file.read_bytes()
    st = ann_file.stat()
    fingerprint = {"path": str(ann_file.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                   "sha256": hashlib.sha256(raw).hexdigest()}
    # Provenance hashes the file again otherwise (a second read of COCO's 450 MB train json).
    remember_digest(ann_file, fingerprint["sha256"], (os.path.abspath(ann_file), st.st_size, st.st_mtime_ns))
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise TypeError("expected an object with an 'images' list")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO()
            coco.dataset = data
            coco.createIndex()
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AssertionError) as e:
        raise DatasetError(f"{ann_file}: not a valid COCO instances file ({type(e).__name__}: {e})") from e
    return coco, fingerprint


def _annotation_problems(coco, ann_file: Path) -> list[str]:
    """Every annotation that would fail (or silently vanish) later: a dangling image_id, a category
    that ``categories`` does not declare, an RLE whose ``size`` is not its image's height x width."""
    problems = []
    for ann in coco.dataset.get("annotations", []):
        aid, image_id = ann.get("id"), ann.get("image_id")
        img = coco.imgs.get(image_id)
        if img is None:
            problems.append(f"annotation {aid} refers to image_id {image_id!r}, which is not among the images")
            continue
        where = f"annotation {aid} of image {img.get('file_name', image_id)}"
        if ann.get("category_id") not in coco.cats:
            problems.append(f"{where} uses category id {ann.get('category_id')!r}, which 'categories' "
                            f"does not declare (declared: {preview(sorted(coco.cats), 8)})")
        segm = ann.get("segmentation")
        if isinstance(segm, dict) and "size" in segm:
            size, hw = list(segm["size"]), [img.get("height"), img.get("width")]
            if size != hw:
                problems.append(f"{where}: segmentation size {size[0]}x{size[1]} (HxW) differs from the "
                                f"image's {hw[0]}x{hw[1]} in 'images'")
    return problems


def _raise_problems(problems: list[str], where: str) -> None:
    if problems:
        more = f" (and {len(problems) - 3} more problem(s))" if len(problems) > 3 else ""
        raise DatasetError(f"{where}: " + f"; {where}: ".join(problems[:3]) + more)


def _check_categories(coco, ann_file: Path) -> None:
    for cid, cat in coco.cats.items():
        if cid not in CATEGORY_TO_INDEX or cat.get("name") != COCO_CLASSES[CATEGORY_TO_INDEX[cid] - 1]:
            raise DatasetError(
                f"{ann_file}: category id {cid} named {cat.get('name')!r} is not a COCO 2014 category "
                "(the 80 standard categories with their standard ids are expected)"
            )


class COCODataset(SegmentationDataset):
    """COCO 2014 train or val (or a list of its ids).

    Labels: the classes of all the image's annotations, crowd ones included (the class is visible in
    the image). Images with no annotation are dropped with a warning, as the authors' COCO code drops
    them. Masks come from ``mask_dir/<id>.png`` when ``mask_dir`` is given (ready semantic PNGs), else
    from the instances (:func:`semantic_mask`), cached as palette PNGs in ``cache_dir`` (default
    ``root/SegmentationClassCOCO/<split>/``; ``cache_dir=False`` disables the cache).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split_or_list: Union[str, os.PathLike, Sequence[str]] = "train",
        *,
        split: Optional[str] = None,
        ann_file: Optional[str | os.PathLike] = None,
        image_dir: Optional[str | os.PathLike] = None,
        mask_dir: Optional[str | os.PathLike] = None,
        cache_dir: Union[None, bool, str, os.PathLike] = None,
        keep_unlabelled: bool = False,
        max_pixels: Optional[int] = MAX_PIXELS,
    ):
        # keep_unlabelled: for RIB's pool of other images, where the authors keep the images with
        # no annotation (all-zero label rows share no class with any target).
        self.keep_unlabelled = bool(keep_unlabelled)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset root not found")
        wanted, where = self._wanted_ids(split_or_list)
        self.split = _normalise_split(split) if split else (self._split_of(split_or_list) or _infer_split(wanted, where))
        self.image_dir = Path(image_dir) if image_dir else self.root / f"{self.split}2014"
        if not self.image_dir.is_dir():
            raise DatasetError(f"{self.image_dir}: image folder not found")
        self.ann_file = Path(ann_file) if ann_file else self.root / "annotations" / f"instances_{self.split}2014.json"
        self.mask_dir = Path(mask_dir) if mask_dir else None
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise DatasetError(f"{self.mask_dir}: mask folder not found")
        self.cache_dir = self._cache_dir(cache_dir)
        self._coco, self.ann_fingerprint = _load_coco(self.ann_file)
        _check_categories(self._coco, self.ann_file)
        _raise_problems(_annotation_problems(self._coco, self.ann_file), str(self.ann_file))
        self._class_names = COCO_CLASSES
        self._index_images(wanted, where)
        self._check_image_sizes(check_max_pixels(max_pixels))
        self._cache_record = {"format": CACHE_FORMAT, "mask_version": MASK_VERSION,
                              "annotations": self.ann_fingerprint}
        self._cache_recorded = False
        if self.cache_dir is not None:
            self._invalidate_stale_cache()

    # -- construction helpers

    @staticmethod
    def _split_of(split_or_list) -> Optional[str]:
        if isinstance(split_or_list, str) and split_or_list in SPLITS + tuple(f"{s}2014" for s in SPLITS):
            return _normalise_split(split_or_list)
        return None

    def _wanted_ids(self, split_or_list) -> tuple[Optional[list[str]], str]:
        """The ids asked for (None = the whole split) and where they came from."""
        if self._split_of(split_or_list):
            return None, str(split_or_list)
        if isinstance(split_or_list, (str, os.PathLike)):
            return read_id_list(split_or_list), str(split_or_list)
        return given_ids(self.root, split_or_list)

    def _cache_dir(self, cache_dir) -> Optional[Path]:
        if cache_dir is False:
            return None
        if cache_dir is None or cache_dir is True:
            return self.root / "SegmentationClassCOCO" / self.split
        return Path(cache_dir)

    def _index_images(self, wanted: Optional[list[str]], where: str) -> None:
        by_stem = {Path(img["file_name"]).stem: img for img in self._coco.imgs.values()}
        if wanted is None:
            ids = sorted(by_stem, key=lambda s: by_stem[s]["id"])
        else:
            unknown = [i for i in wanted if i not in by_stem]
            if unknown:
                raise DatasetError(f"{where}: {len(unknown)} id(s) not in {self.ann_file}: {preview(unknown)}")
            ids = wanted
        present = set(os.listdir(self.image_dir))
        missing = [i for i in ids if by_stem[i]["file_name"] not in present]
        if missing:
            raise DatasetError(f"{where}: {len(missing)} image(s) missing from {self.image_dir}: {preview(missing)}")
        self._records = {i: by_stem[i] for i in ids}
        self._labels = {i: self._image_labels(by_stem[i]["id"]) for i in ids}
        self._ids = (list(ids) if self.keep_unlabelled
                     else drop_unlabelled(ids, self._labels, f"{self.ann_file} [{where}]"))

    def _check_image_sizes(self, max_pixels: Optional[int]) -> None:
        """The json's height/width against each JPEG's header, and the checks of
        :meth:`check_image_header` (size limit, ready masks' headers). Reading only the header
        costs about 50 us per image (4 s for train2014's 82k, against ~15 s to parse its json), so
        it is done here, before any stage, rather than surfacing as a bare IndexError at eval_seed."""
        problems = []
        for i, stem in enumerate(self._ids):
            rec = self._records[stem]
            h, w, _, orientation = image_header(self.image_dir / rec["file_name"])
            if (h, w) != (rec.get("height"), rec.get("width")):
                problems.append(f"image {rec['file_name']} (id {rec['id']}) is {rec.get('height')}x"
                                f"{rec.get('width')} (HxW) in 'images' but its JPEG is {h}x{w}")
            else:
                self.check_image_header(i, (h, w), orientation, max_pixels)
        _raise_problems(problems, str(self.ann_file))

    def _invalidate_stale_cache(self) -> None:
        """Cached masks made from another annotation file (or by another semantic_mask version, or
        before fingerprints existed) are deleted, so they are rebuilt from this file."""
        record_path = self.cache_dir / CACHE_RECORD
        if not self.cache_dir.is_dir():
            return
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict) and record.get("mask_version") == MASK_VERSION and \
                record.get("annotations", {}).get("sha256") == self.ann_fingerprint["sha256"]:
            self._cache_recorded = True
            return
        stale = sorted(self.cache_dir.glob("*.png"))
        try:
            for path in stale:
                path.unlink(missing_ok=True)
            record_path.unlink(missing_ok=True)
        except OSError as e:
            warnings.warn(f"{self.cache_dir}: cached COCO masks are not from {self.ann_file} and cannot "
                          f"be removed ({e}); masks will be decoded on every call")
            self.cache_dir = None
            return
        if stale:
            warnings.warn(f"{self.cache_dir}: {len(stale)} cached mask(s) were not made from "
                          f"{self.ann_file} (sha256 {self.ann_fingerprint['sha256'][:12]}); removed, "
                          "they are rebuilt on use")

    def _image_labels(self, image_id: int) -> np.ndarray:
        labels = np.zeros(len(COCO_CLASSES), dtype=np.float32)
        for ann in self._coco.imgToAnns.get(image_id, []):
            labels[CATEGORY_TO_INDEX[ann["category_id"]] - 1] = 1.0
        return labels

    # -- access

    def image_path(self, i: int) -> Path:
        return self.image_dir / self._records[self._ids[i]]["file_name"]

    def image_size(self, i: int) -> tuple[int, int]:
        rec = self._records[self._ids[i]]
        return int(rec["height"]), int(rec["width"])

    def annotations(self, i: int) -> list[dict]:
        """The raw COCO annotations of image ``i``."""
        return list(self._coco.imgToAnns.get(self._records[self._ids[i]]["id"], []))

    def annotation_files(self) -> list[Path]:
        files = [self.ann_file]
        if self.mask_dir is not None:
            files += [p for p in (self.mask_dir / f"{i}.png" for i in self._ids) if p.is_file()]
        return files

    def mask_file(self, i: int) -> Optional[Path]:
        return self.mask_dir / f"{self._ids[i]}.png" if self.mask_dir is not None else None

    def _mask_path_or_array(self, i: int):
        stem = self._ids[i]
        if self.mask_dir is not None:
            path = self.mask_dir / f"{stem}.png"
            return (load_label_png(path), str(path)) if path.is_file() else (None, "")
        cached = self.cache_dir / f"{stem}.png" if self.cache_dir is not None else None
        if cached is not None and cached.is_file():
            return load_label_png(cached), str(cached)
        h, w = self.image_size(i)
        mask = semantic_mask(self.annotations(i), h, w)
        if cached is not None:
            self._write_cache(cached, mask)
        return mask, f"{self.ann_file} [{stem}]"

    def _write_cache(self, path: Path, mask: np.ndarray) -> None:
        try:
            if not self._cache_recorded:
                save_json(self.cache_dir / CACHE_RECORD, self._cache_record)
                self._cache_recorded = True
            save_label_png(path, mask)
        except OSError as e:
            # A read-only dataset copy is common on clusters: run uncached rather than fail.
            warnings.warn(f"{path}: cannot cache COCO mask ({e}); masks will be decoded on every call")
            self.cache_dir = None
